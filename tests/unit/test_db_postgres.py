"""Units of work on PostgreSQL (PostgresRunner): group commit of quick writes, the cache's
invalidations sent once per group, and connections the server closed replaced on the way."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.util import await_only

from tests.upload_rows import upload_row
from tusserver.cache import CHANNEL, FILES, NotifyOnly
from tusserver.catalog import db as db_module
from tusserver.catalog.db import Database, create_database
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.schema import uploads as uploads_table

pytestmark = pytest.mark.postgres


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Database]:
    database = create_database(pg_url)
    await upgrade(database)
    yield database
    await database.dispose()


def _dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


def _count_commits(db: Database) -> list[int]:
    commits = [0]

    def on_commit(_conn: Connection) -> None:
        commits[0] += 1

    event.listen(db.engine.sync_engine, "commit", on_commit)
    return commits


def _insert(db: Database, upload_id: str, *, then_fail: str | None = None) -> Any:
    def work(conn: Connection) -> str:
        conn.execute(insert(uploads_table), upload_row(upload_id))
        if then_fail is not None:
            conn.execute(insert(uploads_table), upload_row(then_fail))  # a duplicate key
        return upload_id

    return db.write(work, quick=True)


async def _count(pg_url: str, prefix: str) -> int:
    """Rows committed, seen by another session."""
    conn = await asyncpg.connect(_dsn(pg_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM uploads WHERE id LIKE $1", prefix))
    finally:
        await conn.close()


async def test_concurrent_quick_writes_share_one_transaction(db: Database, pg_url: str) -> None:
    """Group commit: the quick writes of concurrent requests commit together, each caller gets
    its own result once that commit is done, and another session sees every row."""
    commits = _count_commits(db)
    prefix = "grp-" + secrets.token_hex(4)
    ids = [f"{prefix}-{i}" for i in range(40)]
    assert await asyncio.gather(*(_insert(db, i) for i in ids)) == ids
    assert 1 <= commits[0] < 10, commits  # not one commit per unit
    assert await _count(pg_url, prefix + "%") == 40


async def test_a_failing_unit_fails_alone_in_its_group(db: Database, pg_url: str) -> None:
    prefix = "fail-" + secrets.token_hex(4)
    await _insert(db, f"{prefix}-taken")
    results = await asyncio.gather(
        _insert(db, f"{prefix}-a1"),
        _insert(db, f"{prefix}-bad", then_fail=f"{prefix}-taken"),
        _insert(db, f"{prefix}-a2"),
        return_exceptions=True,
    )
    assert results[0] == f"{prefix}-a1" and results[2] == f"{prefix}-a2"
    assert isinstance(results[1], IntegrityError)
    assert await _count(pg_url, f"{prefix}-a%") == 2
    assert await _count(pg_url, f"{prefix}-bad") == 0


async def test_invalidations_of_a_group_are_sent_once_each_at_commit(
    db: Database, pg_url: str
) -> None:
    """Each unit's invalidation reaches a listener (in the group's one statement), and a
    unit that fails, rolled back, sends none."""
    listener = await asyncpg.connect(_dsn(pg_url))
    got: list[str] = []
    await listener.add_listener(CHANNEL, lambda _c, _p, _ch, payload: got.append(payload))
    try:
        bus = NotifyOnly()
        prefix = "inv-" + secrets.token_hex(4)
        await _insert(db, f"{prefix}-taken")

        def unit(upload_id: str, fail: bool = False) -> Any:
            def work(conn: Connection) -> str:
                conn.execute(insert(uploads_table), upload_row(upload_id))
                if fail:
                    conn.execute(insert(uploads_table), upload_row(f"{prefix}-taken"))
                return upload_id

            return bus.run(db, work, (FILES, upload_id), quick=True)

        results = await asyncio.gather(
            *(unit(f"{prefix}-{i}") for i in range(10)),
            unit(f"{prefix}-bad", fail=True),
            return_exceptions=True,
        )
        assert isinstance(results[-1], IntegrityError)
        await listener.fetchval("SELECT 1")  # notifications come before this answer
        keys = sorted(payload.split(",")[3].strip('"]') for payload in got)
        assert keys == sorted(f"{prefix}-{i}" for i in range(10))
    finally:
        await listener.close()


async def test_connections_the_server_closed_are_replaced(db: Database, pg_url: str) -> None:
    """Without a pre-ping, pooled connections the server terminated (a restart) cost no
    request an error: reads and writes run on new connections."""
    upload_id = "term-" + secrets.token_hex(4)
    # Several connections in the pool.
    sleep = "SELECT pg_sleep(0.05)"
    await asyncio.gather(*(db.read(lambda c: c.exec_driver_sql(sleep)) for _ in range(4)))
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 4
    finally:
        await admin.close()
    query = select(uploads_table.c.id).where(uploads_table.c.id == upload_id)
    assert await db.read(lambda c: c.execute(query).scalar(), quick=True) is None
    assert await _insert(db, upload_id) == upload_id
    assert await db.read(lambda c: c.execute(query).scalar()) == upload_id


async def test_a_small_pool_serves_many_units_of_both_kinds(pg_url: str) -> None:
    """Connections kept open between units never starve a unit waiting for the pool: many
    concurrent reads in autocommit, reads in a transaction and writes on a pool of 4."""
    db = create_database(pg_url, pool_size=2)
    prefix = "small-" + secrets.token_hex(4)
    sleep = "SELECT pg_sleep(0.01)"
    try:

        async def one(round_: int, i: int) -> None:
            if i % 3 == 0:
                await db.read(lambda c: c.exec_driver_sql(sleep).scalar(), quick=True)
            elif i % 3 == 1:
                await db.read(lambda c: c.exec_driver_sql(sleep).scalar())
            else:
                await _insert(db, f"{prefix}-{round_}-{i}")

        for round_ in range(3):
            await asyncio.wait_for(asyncio.gather(*(one(round_, i) for i in range(60))), 20)
        assert await _count(pg_url, prefix + "%") == 60
    finally:
        await db.dispose()


async def test_a_cancelled_unit_is_cancelled_and_rolled_back(db: Database, pg_url: str) -> None:
    """A caller cancelled while its unit waits on PostgreSQL (a shutdown stopping a flush)
    sees CancelledError, not another error that would hide the cancellation; nothing of the
    unit is committed and the database keeps serving."""
    upload_id = "cancel-" + secrets.token_hex(4)

    def work(conn: Connection) -> None:
        conn.execute(insert(uploads_table), upload_row(upload_id))
        conn.exec_driver_sql("SELECT pg_sleep(5)")

    task = asyncio.ensure_future(db.write(work))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert await _insert(db, upload_id + "-after") == upload_id + "-after"
    await asyncio.sleep(5)
    assert await _count(pg_url, upload_id) == 0


async def test_closing_commits_the_quick_writes_still_queued_and_refuses_new_units(
    pg_url: str,
) -> None:
    database = create_database(pg_url)
    await upgrade(database)
    prefix = f"close-{secrets.token_hex(4)}-"
    # Queued for the next turn of the event loop, which has not come when close() starts.
    waiting = [asyncio.ensure_future(_insert(database, f"{prefix}{i}")) for i in range(3)]
    await asyncio.sleep(0)  # the units are queued, their group not yet started
    await database.dispose()
    assert [await w for w in waiting] == [f"{prefix}{i}" for i in range(3)]
    assert await _count(pg_url, prefix + "%") == 3
    with pytest.raises(RuntimeError, match="closed"):
        await _insert(database, f"{prefix}late")


async def test_writes_queued_while_two_groups_are_out_go_together_in_the_next(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most two groups of quick writes at once: the writes of later turns of the event
    loop wait for one of them to end, then share one transaction; close() runs those still
    queued before it ends."""
    monkeypatch.setattr(db_module, "_SLOW_GROUP_S", 60.0)  # (none is slow here)
    db = create_database(pg_url)
    await upgrade(db)
    runner = db.postgres
    assert runner is not None
    commits = _count_commits(db)
    prefix = "out-" + secrets.token_hex(4)
    release = asyncio.Event()
    started = 0

    async def blocked(upload_id: str) -> Any:
        # A unit that holds its group open until released (it waits on the event loop
        # through the greenlet, as a statement would).
        def work(conn: Connection) -> str:
            nonlocal started
            started += 1
            conn.execute(insert(uploads_table), upload_row(upload_id))
            await_only(release.wait())
            return upload_id

        return await db.write(work, quick=True)

    try:
        first = asyncio.create_task(blocked(f"{prefix}-g1"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(blocked(f"{prefix}-g2"))
        await asyncio.sleep(0.05)
        assert started == 2 and len(runner._groups) == 2
        later: list[asyncio.Task[Any]] = []
        for turn in range(5):  # five turns of the event loop, a write each
            later.append(asyncio.create_task(_insert(db, f"{prefix}-w{turn}")))
            await asyncio.sleep(0.01)
        assert len(runner._groups) == 2 and len(runner._pending) == 5
        before = commits[0]
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, second, *later), 10) == [
            f"{prefix}-g1",
            f"{prefix}-g2",
            *(f"{prefix}-w{turn}" for turn in range(5)),
        ]
        assert commits[0] - before == 3  # the two groups, then the five writes in one
        assert await _count(pg_url, prefix + "%") == 7
        # Queued when the database closes: run, not dropped.
        release.clear()
        held = asyncio.create_task(blocked(f"{prefix}-h1"))
        await asyncio.sleep(0.05)
        held2 = asyncio.create_task(blocked(f"{prefix}-h2"))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(_insert(db, f"{prefix}-last"))
        await asyncio.sleep(0.01)
        assert len(runner._groups) == 2 and len(runner._pending) == 1
        closing = asyncio.create_task(db.dispose())
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(closing, 10)
        assert await asyncio.wait_for(asyncio.gather(held, held2, queued), 10) == [
            f"{prefix}-h1",
            f"{prefix}-h2",
            f"{prefix}-last",
        ]
        assert await _count(pg_url, prefix + "%") == 10
    finally:
        release.set()
        await db.dispose()


async def test_two_slow_groups_hold_back_the_writes_behind_them_only_so_long(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups out for longer than _SLOW_GROUP_S (a row lock, a connection that hangs) no
    longer count: the writes queued behind them start a group of their own."""
    monkeypatch.setattr(db_module, "_SLOW_GROUP_S", 0.5)
    db = create_database(pg_url)
    await upgrade(db)
    prefix = "slow-" + secrets.token_hex(4)
    release = asyncio.Event()

    def held(upload_id: str) -> Any:
        def work(conn: Connection) -> str:
            conn.execute(insert(uploads_table), upload_row(upload_id))
            await_only(release.wait())
            return upload_id

        return db.write(work, quick=True)

    try:
        stuck = [asyncio.create_task(held(f"{prefix}-s{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        stuck.append(asyncio.create_task(held(f"{prefix}-s2")))  # (in the second group)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(_insert(db, f"{prefix}-w"), 10) == f"{prefix}-w"
        assert loop.time() - started >= 0.3  # it waited for them to become slow
        assert not any(task.done() for task in stuck)
        release.set()
        assert len(await asyncio.gather(*stuck)) == 3
        assert await _count(pg_url, prefix + "%") == 4
    finally:
        release.set()
        await db.dispose()
