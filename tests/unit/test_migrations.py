"""Migrations of a SQLite file catalog are all or nothing, and keep the rows they move."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tusserver.catalog import migrate
from tusserver.catalog.db import create_database
from tusserver.catalog.migrate import (
    MigrationError,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)


def _insert(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> None:
    """A row with ``values``, and a plain value in every other NOT NULL column without a
    default (the columns differ from one revision to the next)."""
    row: dict[str, Any] = {}
    for _cid, name, kind, notnull, default, _pk in conn.execute(f"PRAGMA table_info({table})"):
        if notnull and default is None:
            kind = kind.upper()
            if "INT" in kind or "BOOL" in kind:
                row[name] = 1
            elif "DATE" in kind or "TIME" in kind:
                row[name] = "2026-01-01 00:00:00.000000"
            else:
                row[name] = "x"
    row.update(values)
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(row.values()))


async def _catalog_at(path: Path, revision: str, *rows: tuple[str, dict[str, Any]]) -> None:
    """A catalog migrated to ``revision`` holding ``rows`` (table, values), written on a
    plain connection (foreign keys off)."""
    db = create_database(f"sqlite:///{path}")
    try:
        await upgrade(db, revision)
    finally:
        await db.dispose()
    conn = sqlite3.connect(path)
    try:
        for table, values in rows:
            _insert(conn, table, values)
        conn.commit()
    finally:
        conn.close()


def _counts(path: Path, *tables: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


async def test_an_upgrade_that_rebuilds_a_table_keeps_the_rows_referring_to_it(
    tmp_path: Path,
) -> None:
    """0008 rebuilds ``files`` (alembic's batch mode: a new table, the old one dropped).
    With foreign keys on, dropping it deleted every upload link and tag of every file
    (ON DELETE CASCADE): an upgrade from 0007 emptied them."""
    path = tmp_path / "c.db"
    await _catalog_at(
        path,
        "0007",
        ("uploads", {"id": "u1"}),
        ("files", {"id": "f1"}),
        ("file_uploads", {"file_id": "f1", "upload_id": "u1"}),
        ("file_tags", {"file_id": "f1", "tag": "holiday"}),
    )

    db = create_database(f"sqlite:///{path}")
    try:
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        # ... and back, which rebuilds the table again.
        await downgrade(db, "0007")
        assert await current_revision(db) == "0007"
    finally:
        await db.dispose()
    assert _counts(path, "files", "file_uploads", "file_tags") == {
        "files": 1,
        "file_uploads": 1,
        "file_tags": 1,
    }


@pytest.fixture
def fail_after_first_table() -> Iterator[list[str]]:
    """The first CREATE TABLE of a migration succeeds, then the migration fails."""
    created: list[str] = []

    def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        if words[:2] == ["CREATE", "TABLE"] and "alembic_version" not in statement:
            created.append(words[2])
            if len(created) == 1:
                raise RuntimeError("injected: the migration fails halfway")

    event.listen(Engine, "after_cursor_execute", after)
    try:
        yield created
    finally:
        event.remove(Engine, "after_cursor_execute", after)


async def test_a_migration_that_fails_halfway_leaves_nothing_behind(
    tmp_path: Path, fail_after_first_table: list[str]
) -> None:
    """pysqlite starts no transaction before DDL: each CREATE TABLE committed alone, so a
    migration that failed after its first table left that table, and every later start
    failed on it ("table ... already exists")."""
    path = tmp_path / "c.db"
    db = create_database(f"sqlite:///{path}")
    try:
        with pytest.raises(RuntimeError, match="injected"):
            await upgrade(db)
        assert fail_after_first_table  # the failure was injected after a table was made
        assert await current_revision(db) is None
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        finally:
            conn.close()
        assert fail_after_first_table[0] not in tables
        await upgrade(db)  # the next start migrates from the beginning
        assert await current_revision(db) == head_revision()
    finally:
        await db.dispose()


async def test_only_dangling_rows_a_migration_adds_stop_it(tmp_path: Path) -> None:
    """The foreign keys are checked after a migration; rows that already referred to
    nothing before it (a catalog edited by hand) do not keep the server from starting."""
    path = tmp_path / "c.db"
    await _catalog_at(path, "0007", ("file_tags", {"file_id": "gone", "tag": "orphan"}))

    db = create_database(f"sqlite:///{path}")
    try:
        await upgrade(db)
        assert await current_revision(db) == head_revision()

        def dangle(conn: Any) -> None:
            raw = conn.connection.driver_connection
            _insert(raw, "file_uploads", {"file_id": "nofile", "upload_id": "noupload"})

        with pytest.raises(MigrationError, match="file_uploads"):
            await migrate._migrate(db, dangle)
    finally:
        await db.dispose()
    assert _counts(path, "file_tags", "file_uploads") == {"file_tags": 1, "file_uploads": 0}
