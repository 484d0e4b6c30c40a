"""Database units of work: the embedded default and an in-memory catalog for embedders' tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from tusserver.catalog.db import create_database
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.uploads import UploadRecord, UploadRepository, UploadState


def _record(upload_id: str) -> UploadRecord:
    now = dt.datetime.now(dt.UTC)
    return UploadRecord(
        id=upload_id,
        owner="alice",
        length=10,
        offset=0,
        metadata={"filename": b"a.txt", "flag": None},
        is_partial=False,
        is_final=False,
        state=UploadState.RECEIVING,
        created_at=now,
        updated_at=now,
        expires_at=None,
    )


@pytest.mark.parametrize("where", ["file", "memory"])
async def test_units_of_work_see_what_migrations_and_writes_did(where: str, tmp_path: Path) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
        if where == "file"
        else "sqlite+aiosqlite:///:memory:"
    )
    db = create_database(url)
    try:
        await upgrade(db)  # on the async engine
        repo = UploadRepository(db)  # units of work (the SQLite thread, or the async engine)
        await repo.insert(_record("u1"))
        await repo.update("u1", offset=7, state=UploadState.FINISHED)
        got = await repo.get("u1")
        assert got is not None
        assert (got.offset, got.state, got.metadata) == (
            7,
            UploadState.FINISHED,
            {"filename": b"a.txt", "flag": None},
        )
        assert await repo.get("missing") is None
        with pytest.raises(IntegrityError, match="UNIQUE"):
            await repo.insert(_record("u1"))  # the failed unit is rolled back...
        assert (await repo.get_many(["u1"]))["u1"].offset == 7  # ...and the row intact
    finally:
        await db.dispose()
