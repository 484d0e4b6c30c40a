"""fastsql: the hot statements on the DBAPI cursor give what Connection.execute gives, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tusserver.catalog import fastsql
from tusserver.catalog import files as files_module
from tusserver.catalog import uploads as uploads_module
from tusserver.catalog.db import Database, create_database
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.schema import by_id_params, file_uploads, files, update_by_id, uploads


@pytest.fixture
async def db(fresh_database_url: str) -> Any:
    database = create_database(fresh_database_url)
    await upgrade(database)
    yield database
    await database.dispose()


def _upload(upload_id: str, now: dt.datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": upload_id,
        "owner": "bob",
        "length": None,
        "offset": 0,
        "meta": uploads_module._encode_meta({"name": "é.txt".encode(), "flag": None}),
        "is_partial": False,
        "is_final": True,
        "state": "receiving",
        "created_at": now,
        "updated_at": now,
        "expires_at": None,
        **extra,
    }


async def test_writes_and_reads_match_sqlalchemy(db: Database) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)

    def work(conn: Connection) -> None:
        # One row by the fast path, one by SQLAlchemy: the rows read back are the same.
        assert fastsql.execute(conn, uploads_module._INSERT, _upload("fast", now)) == 1
        conn.execute(uploads_module._INSERT, _upload("slow", now))
        later = now + dt.timedelta(hours=1)
        values = {"offset": 7, "state": "finished", "expires_at": later}
        stmt = update_by_id(uploads, tuple(values))
        assert fastsql.execute(conn, stmt, by_id_params("fast", values)) == 1
        conn.execute(stmt, by_id_params("slow", values))
        assert fastsql.execute(conn, stmt, by_id_params("nobody", values)) == 0  # rowcount
        fast = fastsql.first(conn, uploads_module._BY_ID, {"id": "fast"})
        slow = conn.execute(uploads_module._BY_ID, {"id": "slow"}).mappings().first()
        assert slow is not None
        assert fast == {**slow, "id": "fast"}
        assert fast["expires_at"] == later and fast["is_final"] is True
        assert fast["length"] is None
        assert uploads_module._record(fast).metadata == {"name": "é.txt".encode(), "flag": None}
        assert fastsql.first(conn, uploads_module._BY_ID, {"id": "missing"}) is None

    await db.write(work)


async def test_file_rows_match_sqlalchemy(db: Database) -> None:
    """The file statements of the pipeline (JSON columns, a join, a constant Python-side
    default filled in as SQLAlchemy would)."""
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    def row(file_id: str) -> dict[str, Any]:
        return {
            "id": file_id,
            "owner": None,
            "name": "a b.txt",
            "name_folded": "a b.txt",
            "folder": "/",
            "size": 3,
            "declared_type": "text/plain",
            "type_mismatch": False,
            "status": "received",
            "meta": {"k": "v", "n": None},
            "tags": ["x"],
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }

    def work(conn: Connection) -> None:
        for file_id in ("f1", "f2"):
            fastsql.execute(conn, files_module._INSERT_FILE, row(file_id))
        conn.execute(uploads_module._INSERT, _upload("u1", now))
        link = {
            "file_id": "f1",
            "upload_id": "u1",
            "protocol": "tus",
            "client": None,
            "started_at": now,
            "finished_at": now,
            "bytes": 3,
        }
        assert fastsql.execute(conn, files_module._INSERT_LINK, link) == 1
        values = {"sha256": "ab" * 32, "type_mismatch": True, "updated_at": now}
        fastsql.execute(conn, update_by_id(files, tuple(values)), by_id_params("f1", values))
        fast = fastsql.first(conn, files_module._BY_ID, {"id": "f1"})
        slow = conn.execute(files_module._BY_ID, {"id": "f1"}).mappings().first()
        assert fast == dict(slow or {})
        assert fast["upload_id"] == "u1" and fast["meta"] == {"k": "v", "n": None}
        assert fast["type_mismatch"] is True and fast["tags"] == ["x"]
        unlinked = fastsql.first(conn, files_module._BY_ID, {"id": "f2"})
        assert unlinked is not None and unlinked["upload_id"] is None
        assert unlinked["location_stripped"] is False  # the column's default
        plan = fastsql._plan(conn, files_module._INSERT_FILE, tuple(row("f3")))
        assert plan is not None and plan.fixed["location_stripped"] is False

    await db.write(work)


async def test_statements_it_cannot_run_take_the_plain_path(db: Database) -> None:
    """An expanding IN, and a value fixed in the statement: the same results either way."""
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    many = select(uploads.c.id).where(uploads.c.id.in_(["a", "b"])).order_by(uploads.c.id)
    fixed = update(uploads).where(uploads.c.id == bindparam("row_id")).values(state="finished")

    def work(conn: Connection) -> None:
        for upload_id in ("a", "b"):
            conn.execute(uploads_module._INSERT, _upload(upload_id, now))
        assert fastsql.first(conn, many) == {"id": "a"}
        assert fastsql.execute(conn, fixed, {"row_id": "b"}) == 1
        got = fastsql.first(conn, uploads_module._BY_ID, {"id": "b"})
        assert got is not None and got["state"] == "finished"

    await db.write(work)


async def test_plans_are_per_dialect(tmp_path: Path, pg_url: str) -> None:
    """A statement first run on SQLite and then on PostgreSQL (in the same process) gets a
    plan of each dialect: the same rows either way."""
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    sqlite = create_database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    pg = create_database(pg_url)
    upload_id = "fastsql-" + secrets.token_hex(8)  # (a database shared by the session)
    try:
        for database in (sqlite, pg):
            await upgrade(database)

            def work(conn: Connection) -> tuple[int, Any, str]:
                count = fastsql.execute(conn, uploads_module._INSERT, _upload(upload_id, now))
                plan = fastsql._plan(conn, uploads_module._INSERT, tuple(_upload(upload_id, now)))
                assert plan is not None
                return (
                    count,
                    fastsql.first(conn, uploads_module._BY_ID, {"id": upload_id}),
                    plan.sql,
                )

            count, got, sql = await database.write(work)
            assert count == 1 and got is not None and got["created_at"] == now
            assert ("$1" in sql) == (database is pg)
    finally:
        await sqlite.dispose()
        await pg.dispose()


async def test_errors_are_sqlalchemy_errors(db: Database) -> None:
    """A statement refused by the database raises what Connection.execute raises, and the
    unit is rolled back."""
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    await db.write(lambda conn: fastsql.execute(conn, uploads_module._INSERT, _upload("dup", now)))

    def work(conn: Connection) -> None:
        fastsql.execute(conn, uploads_module._INSERT, _upload("other", now))
        fastsql.execute(conn, uploads_module._INSERT, _upload("dup", now))

    with pytest.raises(IntegrityError):
        await db.write(work)
    assert await db.read(lambda c: fastsql.first(c, uploads_module._BY_ID, {"id": "other"})) is None
    got = await db.read(
        lambda c: fastsql.first(c, uploads_module._BY_ID, {"id": "dup"}), quick=True
    )
    assert got is not None and got["owner"] == "bob"


async def test_many_rows_match_sqlalchemy(db: Database) -> None:
    """execute_many writes the rows Connection.execute writes (datetimes, JSON, NULLs), on
    either dialect; rows with other keys take the plain path; errors are SQLAlchemy's."""
    from sqlalchemy import insert

    from tusserver.catalog.schema import audit_log

    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    tag = secrets.token_hex(6)  # (a database shared by the session)

    def entry(n: int, **extra: Any) -> dict[str, Any]:
        return {
            "at": now + dt.timedelta(seconds=n),
            "actor": None if n % 2 else "bob",
            "action": f"test.{tag}",
            "target": f"t{n}",
            "outcome": "ok",
            "ip": None,
            "detail": {"n": n, "none": None},
            **extra,
        }

    stmt = insert(audit_log)
    query = (
        select(audit_log.c.at, audit_log.c.actor, audit_log.c.target, audit_log.c.detail)
        .where(audit_log.c.action == f"test.{tag}")
        .order_by(audit_log.c.at)
    )

    def work(conn: Connection) -> list[Any]:
        fastsql.execute_many(conn, stmt, [entry(n) for n in range(3)])
        conn.execute(stmt, [entry(n) for n in range(3, 6)])
        fastsql.execute_many(conn, stmt, [entry(n) for n in range(6, 8)])
        fastsql.execute_many(conn, stmt, [])
        return [tuple(r) for r in conn.execute(query)]

    rows = await db.write(work)
    assert [r[2] for r in rows] == [f"t{n}" for n in range(8)]
    for n, (at, actor, _, detail) in enumerate(rows):
        assert (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) == now + dt.timedelta(seconds=n)
        assert actor == (None if n % 2 else "bob")
        assert detail == {"n": n, "none": None}

    def mixed(conn: Connection) -> None:
        # Rows whose keys differ go to SQLAlchemy, which refuses them as it always did.
        rows = [entry(8), {k: v for k, v in entry(9).items() if k != "ip"}]
        fastsql.execute_many(conn, stmt, rows)

    with pytest.raises(SQLAlchemyError, match="ip"):
        await db.write(mixed)

    def duplicate(conn: Connection) -> None:
        first = uploads_module._INSERT
        fastsql.execute_many(conn, first, [_upload(f"dup-{tag}", now)] * 2)

    with pytest.raises(IntegrityError):
        await db.write(duplicate)


async def test_a_file_row_its_link_and_the_finish_are_written_alike_on_both(
    db: Database,
) -> None:
    """create_for_upload: three statements on SQLite, one on PostgreSQL (WITH clauses, where
    SQLAlchemy fills in no column default): the same rows either way, and a second call for
    the same upload gives the first file."""
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    await db.write(lambda conn: conn.execute(uploads_module._INSERT, _upload("u1", now)))
    repo = files_module.FileRepository(db)
    new = files_module.NewFile(
        id="f1",
        owner="bob",
        name="Ä b.txt",
        size=3,
        declared_type="text/plain",
        metadata={"filename": "Ä b.txt"},
        upload_id="u1",
        protocol="tus",
        client="tuspy/1.4",
        started_at=now - dt.timedelta(seconds=2),
        finished_at=now - dt.timedelta(seconds=1),
    )
    finish = {"offset": 3, "length": 3, "state": "finished", "updated_at": now}
    assert await repo.create_for_upload(new, now, finish=finish) == "f1"
    again = dataclasses.replace(new, id="f2")
    assert await repo.create_for_upload(again, now, finish=finish) == "f1"

    def read(conn: Connection) -> tuple[Any, Any, Any]:
        link = conn.execute(select(file_uploads)).mappings().one()
        return (
            fastsql.first(conn, files_module._BY_ID, {"id": "f1"}),
            fastsql.first(conn, uploads_module._BY_ID, {"id": "u1"}),
            dict(link),
        )

    file_row, upload_row, link = await db.read(read)
    assert file_row is not None and upload_row is not None
    assert {
        k: file_row[k]
        for k in ("upload_id", "owner", "name", "name_folded", "size", "declared_type", "meta")
    } == {
        "upload_id": "u1",
        "owner": "bob",
        "name": "Ä b.txt",
        "name_folded": "ä b.txt",
        "size": 3,
        "declared_type": "text/plain",
        "meta": {"filename": "Ä b.txt"},
    }
    assert file_row["tags"] == [] and file_row["sha256"] is None
    assert link == {
        "file_id": "f1",
        "upload_id": "u1",
        "protocol": "tus",
        "client": "tuspy/1.4",
        "started_at": now - dt.timedelta(seconds=2),
        "finished_at": now - dt.timedelta(seconds=1),
        "bytes": 3,
    }
    # The Python-side defaults of the columns it leaves out:
    assert file_row["folder"] == "/" and file_row["attempts"] == 0
    assert file_row["location_stripped"] is False and file_row["thumbnail_bytes"] == 0
    assert file_row["created_at"] == now and file_row["status"] == "received"
    assert upload_row["file_id"] == "f1" and upload_row["state"] == "finished"
    assert (upload_row["offset"], upload_row["length"]) == (3, 3)
    assert await db.read(lambda conn: conn.execute(select(files.c.id)).scalars().all()) == ["f1"]


def test_a_default_computed_in_python_is_never_sent_as_null() -> None:
    """In a WITH clause SQLAlchemy leaves Python-side defaults to the caller: constants are
    filled in, and a computed one is refused rather than sent as NULL."""
    table = sa.Table(
        "t",
        sa.MetaData(),
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("n", sa.Integer, default=7),
        sa.Column("at", sa.DateTime, server_default=sa.func.now()),
        sa.Column("sql", sa.Integer, default=sa.text("1 + 1")),
        sa.Column("token", sa.String, default=lambda: "computed"),
    )
    with pytest.raises(TypeError, match=r"t\.token"):
        files_module._with_defaults(table, {"id": "a"})
    assert files_module._with_defaults(table, {"id": "a", "token": "x"}) == {
        "id": "a",
        "token": "x",
        "n": 7,
    }
