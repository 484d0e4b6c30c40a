"""Migration 0012 folds the names of rows written before it as new rows are folded."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any

from sqlalchemy import column, func, insert, select, table

from tusserver.catalog.db import Database
from tusserver.catalog.files import fold_name
from tusserver.catalog.migrate import downgrade, upgrade
from tusserver.catalog.schema import files

NAMES = [
    "Äpfel.txt",  # SQLite's lower() leaves Ä
    "STRASSE and Straße.txt",  # casefold: ss
    unicodedata.normalize("NFD", "Café.txt"),  # decomposed, as macOS sends it
    "plain.txt",
]


async def test_rows_from_before_are_folded_as_new_ones(fresh_catalog: Database) -> None:
    db = fresh_catalog
    await upgrade(db, "0011")
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    row: dict[str, Any] = {
        "owner": "alice", "folder": "/", "size": 1, "status": "committed",
        "type_mismatch": False, "meta": {}, "tags": [], "attempts": 0,
        "created_at": now, "updated_at": now,
    }  # fmt: skip
    names = {"id", "name", "name_folded", *row}
    at_0011 = table("files", *(column(c.name, c.type) for c in files.c if c.name in names))

    def seed(conn: Any) -> None:
        for i, name in enumerate(NAMES):
            # As migration 0004 left them: the database's lower().
            folded = conn.execute(select(func.lower(name))).scalar_one()
            conn.execute(
                insert(at_0011).values(id=f"{i:032x}", name=name, name_folded=folded, **row)
            )

    await db.write(seed)

    def read(conn: Any) -> dict[str, str]:
        return dict(conn.execute(select(files.c.name, files.c.name_folded)).all())

    before = await db.read(read)
    assert any(before[n] != fold_name(n) for n in NAMES)  # the seed is really folded otherwise
    await upgrade(db)
    assert await db.read(read) == {n: fold_name(n) for n in NAMES}
    await downgrade(db, "0011")
    await upgrade(db)
    assert await db.read(read) == {n: fold_name(n) for n in NAMES}
