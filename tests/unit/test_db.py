"""Database units of work: the embedded default and an in-memory catalog for embedders' tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import fcntl
import itertools
import math
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from tests.upload_rows import upload_row
from tusserver.catalog import db as db_module
from tusserver.catalog.db import Database, create_database
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.schema import uploads as uploads_table
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


async def _file_db(tmp_path: Path, *, durable: bool = False) -> Database:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", durable=durable)
    await upgrade(db)
    return db


async def _no_checkpoint_running(db: Database) -> None:
    """Until a checkpoint the migrations' writes may have started has ended."""
    assert db.sqlite is not None
    deadline = asyncio.get_running_loop().time() + 10
    while db.sqlite._checkpointing:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_lock_held_by_another_process_never_blocks_the_event_loop(
    tmp_path: Path, durable: bool
) -> None:
    """A quick unit meeting another connection's write lock waits on the thread, not inline."""
    db = await _file_db(tmp_path, durable=durable)
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    try:
        repo = UploadRepository(db)
        await repo.insert(_record("u1"))
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        write = asyncio.create_task(repo.update("u1", offset=5))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not write.done()
        got = await repo.get("u1")  # readers are not blocked by a writer (WAL)
        assert got is not None and got.offset == 0
        other.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        got = await repo.get("u1")
        assert got is not None and got.offset == 5
    finally:
        other.close()
        await db.dispose()


async def test_a_lock_held_too_long_fails_the_unit_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "_BUSY_WAIT_S", 0.2)
    db = await _file_db(tmp_path)
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    try:
        repo = UploadRepository(db)
        await repo.insert(_record("u1"))
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="locked"):
            await repo.update("u1", offset=5)
        other.execute("ROLLBACK")
        await repo.update("u1", offset=6)  # the connection is usable again
        got = await repo.get("u1")
        assert got is not None and got.offset == 6
    finally:
        other.close()
        await db.dispose()


async def test_a_writer_lock_held_too_long_by_another_process_fails_the_unit_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writers of the processes sharing the catalog queue on a lock file. A process
    stopped while it holds it (SIGSTOP, a frozen host) must not hold the others' writes
    forever: a write waits as long as for SQLite's own lock, then fails (a 503 for its
    request), and reads go on meanwhile."""
    monkeypatch.setattr(db_module, "_BUSY_WAIT_S", 0.3)
    db = await _file_db(tmp_path)
    other = os.open(tmp_path / "c.db-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        repo = UploadRepository(db)
        await repo.insert(_record("u1"))
        fcntl.flock(other, fcntl.LOCK_EX)  # the other process's writer, stopped
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OperationalError, match="locked"):
            await asyncio.wait_for(repo.update("u1", offset=5), 10)
        assert loop.time() - started < 5
        got = await asyncio.wait_for(repo.get("u1"), 5)  # reads are not held up
        assert got is not None and got.offset == 0
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.wait_for(repo.update("u1", offset=6), 10)
        got = await repo.get("u1")
        assert got is not None and got.offset == 6
    finally:
        os.close(other)
        await db.dispose()


async def test_checkpoints_run_on_the_thread_and_keep_the_wal_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automatic checkpoints are off on the catalog's connection; the runner does them."""
    monkeypatch.setattr(db_module, "_CHECKPOINT_WAL_BYTES", 64 * 1024)
    db = await _file_db(tmp_path)
    try:
        repo = UploadRepository(db)
        for i in range(200):
            await repo.insert(_record(f"u{i}"))
            await repo.update(f"u{i}", offset=i)
        # The last checkpoint, on its thread (on a loaded machine it may take a while; the
        # WAL grows meanwhile), then a write, which starts the checkpointed WAL over.
        deadline = asyncio.get_running_loop().time() + 20
        while db.sqlite is not None and db.sqlite._checkpointing:
            assert asyncio.get_running_loop().time() < deadline, "the checkpoint never ended"
            await asyncio.sleep(0.02)
        await repo.update("u0", offset=1000)
        # (That write may start a checkpoint too; two checkpoints at once: one is busy.)
        await _no_checkpoint_running(db)
        check = sqlite3.connect(tmp_path / "c.db")
        try:
            # (busy, frames in the WAL, frames checkpointed). After a checkpoint a later
            # writer starts the WAL over: it holds the frames of the last writes only
            # (64 KiB, ~16 frames, here), where 400 writes without checkpoints leave over 1,000.
            _busy, frames, _done = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            check.close()
        assert 0 < frames < 500
        assert await repo.get("u199") is not None
    finally:
        await db.dispose()


async def test_units_go_on_while_a_checkpoint_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint runs on a connection of its own: units of work go on while it copies and
    syncs (it held them all for 10-65 ms before), and the WAL still starts over after it."""
    monkeypatch.setattr(db_module, "_CHECKPOINT_WAL_BYTES", 64 * 1024)
    db = await _file_db(tmp_path)
    runner = db.sqlite
    assert runner is not None
    # The migrations' writes may have started a checkpoint already: the checkpointer's
    # connection made for it is dropped, so that the next one is made (slow) below.
    await _no_checkpoint_running(db)
    if (conn := runner._checkpoint_conn) is not None:
        await asyncio.wrap_future(runner._checkpointer.submit(conn.close))  # (its thread's)
        runner._checkpoint_conn = None
    repo = UploadRepository(db)
    started, release = threading.Event(), threading.Event()
    real_connect = sqlite3.connect

    class SlowCheckpoints:
        """The checkpointer's connection; its first statement waits for the test."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            self._conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
            self._first = True

        def execute(self, sql: str) -> sqlite3.Cursor:
            if self._first:
                self._first = False
                started.set()
                assert release.wait(20)
            return self._conn.execute(sql)

        def close(self) -> None:
            self._conn.close()

    monkeypatch.setattr(db_module.sqlite3, "connect", SlowCheckpoints)
    wal = tmp_path / "c.db-wal"
    try:
        n = 0
        while not started.is_set():  # write until a checkpoint has begun
            await repo.insert(_record(f"a{n}"))
            n += 1
            assert n < 5000
        # The checkpoint is held in its first step: units run all the same.
        for i in range(20):
            await asyncio.wait_for(repo.insert(_record(f"b{i}")), 5)
            assert await asyncio.wait_for(repo.get(f"b{i}"), 5) is not None
        grown = wal.stat().st_size
        release.set()
        deadline = asyncio.get_running_loop().time() + 10
        while runner._checkpointing:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        # Everything was copied (the frames written meanwhile too): the next writes start
        # the WAL over, and it is cut back.
        for i in range(3):
            await repo.insert(_record(f"c{i}"))
        assert wal.stat().st_size < grown
        assert wal.stat().st_size <= 64 * 1024
    finally:
        release.set()
        await db.dispose()


async def test_writes_that_may_sync_files_never_run_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write after opening or after a checkpoint starts the WAL over (SQLite syncs
    its header then): it runs on the thread; the quick writes after it run inline."""
    # A WAL cut back to 16 KiB when it starts over (a quarter of the 64 KiB threshold).
    monkeypatch.setattr(db_module, "_checkpoint_threshold", lambda _dir: 64 * 1024)
    db = await _file_db(tmp_path)
    assert db.sqlite is not None
    await _no_checkpoint_running(db)
    db.sqlite._checkpoint_at = db_module._CHECKPOINT_WAL_BYTES
    where: list[str] = []
    ids = itertools.count()

    def write(conn: Connection) -> None:
        where.append(threading.current_thread().name)
        conn.execute(insert(uploads_table), upload_row(f"w{next(ids)}"))

    try:
        await db.write(write, quick=True)
        await db.write(write, quick=True)
        assert where[0].startswith("sqlite") and where[1] == "MainThread", where
        # (Checkpoints from here on: with this threshold from the start, the migrations' WAL
        # could start one right after the first write, and the second would rightly wait.)
        db.sqlite._checkpoint_at = 64 * 1024
        checkpointed = threading.Event()
        writes_before: list[int] = []
        original = db.sqlite._checkpoint

        def checkpoint() -> None:
            original()
            writes_before.append(len(where))  # on the thread, which holds no unit now
            checkpointed.set()

        monkeypatch.setattr(db.sqlite, "_checkpoint", checkpoint)
        while not checkpointed.is_set():  # write until a checkpoint has run
            await db.write(write, quick=True)
        # (Until its end is noted on its thread, writes stay there too.)
        await _no_checkpoint_running(db)
        await db.write(write, quick=True)
        await db.write(write, quick=True)
        after = where[writes_before[0] :]
        # The first write after the checkpoint on the thread; once one has run there, inline.
        assert after[0].startswith("sqlite") and after[-1] == "MainThread", after
    finally:
        await db.dispose()
    with pytest.raises(RuntimeError, match="closed"):
        await db.write(write, quick=True)


def _count_commits(db: Database) -> list[int]:
    """Commits of the runner's connection (SQLAlchemy's commit event), counted in a list."""
    from sqlalchemy import event

    assert db.sqlite is not None
    commits = [0]

    def on_commit(_conn: Connection) -> None:
        commits[0] += 1

    event.listen(db.sqlite.engine, "commit", on_commit)
    return commits


@pytest.mark.parametrize(("durable", "quick"), [(False, True), (True, True), (False, False)])
async def test_concurrent_units_share_one_transaction_and_one_commit(
    tmp_path: Path, durable: bool, quick: bool
) -> None:
    """Group commit: the writes of concurrent requests (inline on the event loop, or on the
    thread with fsync or for units that are not quick) commit together; each caller gets its
    own result once that commit is done."""
    db = await _file_db(tmp_path, durable=durable)
    try:
        await db.write(lambda conn: conn.execute(insert(uploads_table), upload_row("first")))
        commits = _count_commits(db)

        def write(upload_id: str) -> object:
            def work(conn: Connection) -> str:
                conn.execute(insert(uploads_table), upload_row(upload_id))
                return upload_id

            return db.write(work, quick=quick)

        got = await asyncio.gather(*(write(f"g{i}") for i in range(40)))
        assert got == [f"g{i}" for i in range(40)]
        assert 1 <= commits[0] < 10, commits  # not one commit per unit
        check = sqlite3.connect(tmp_path / "c.db")
        try:
            (n,) = check.execute("SELECT count(*) FROM uploads WHERE id LIKE 'g%'").fetchone()
        finally:
            check.close()
        assert n == 40  # committed, and visible to another connection
    finally:
        await db.dispose()


@pytest.mark.parametrize("quick", [True, False])
async def test_a_failing_unit_fails_alone_in_its_group(tmp_path: Path, quick: bool) -> None:
    """One unit's error rolls back its group; the others run again on their own and commit,
    and the failed unit leaves nothing behind."""
    db = await _file_db(tmp_path)
    try:
        repo = UploadRepository(db)
        await repo.insert(_record("taken"))

        def insert_row(upload_id: str, *, then_fail: bool = False) -> object:
            def work(conn: Connection) -> str:
                conn.execute(insert(uploads_table), upload_row(upload_id))
                if then_fail:
                    conn.execute(insert(uploads_table), upload_row("taken"))  # UNIQUE violation
                return upload_id

            return db.write(work, quick=quick)

        results = await asyncio.gather(
            insert_row("a1"),
            insert_row("bad", then_fail=True),
            insert_row("a2"),
            return_exceptions=True,
        )
        assert results[0] == "a1" and results[2] == "a2"
        assert isinstance(results[1], IntegrityError)
        assert set((await repo.get_many(["a1", "a2", "bad"])).keys()) == {"a1", "a2"}
    finally:
        await db.dispose()


async def test_a_write_delivered_during_close_starts_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that commits while the database closes must not start a checkpoint on a
    thread that is gone (an error in a loop callback, a connection nobody closes)."""
    monkeypatch.setattr(db_module, "_CHECKPOINT_WAL_BYTES", 1)
    db = await _file_db(tmp_path)
    runner = db.sqlite
    assert runner is not None
    await UploadRepository(db).insert(_record("x"))
    await db.dispose()
    runner._checkpointing = False
    runner._wrote()  # (what _deliver calls after a group)
    assert runner._checkpointing is False
    assert runner._checkpoint_conn is None


async def test_a_write_that_finds_the_disk_full_asks_for_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL starts over (reusing the space its file holds) only after a checkpoint: once a
    write found the disk full, every write asks for one (at most once a second) until one
    succeeds, instead of waiting for the WAL's threshold (it may never get there)."""
    db = await _file_db(tmp_path)
    runner = db.sqlite
    assert runner is not None
    asked: list[bool] = []
    monkeypatch.setattr(runner, "_start_checkpoint", lambda: asked.append(True))
    monkeypatch.setattr(db_module, "_FULL_CHECKPOINT_EVERY_S", 3600.0)

    def full(conn: Connection) -> None:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    def other(conn: Connection) -> None:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: x"))

    ids = itertools.count()

    def fine(conn: Connection) -> None:
        conn.execute(insert(uploads_table), upload_row(f"fine{next(ids)}"))

    try:
        with pytest.raises(OperationalError):
            await db.write(other)
        assert asked == []
        for _ in range(3):
            with pytest.raises(OperationalError):
                await db.write(full)
        assert asked == [True]  # (not again within the interval)
        runner._full_at = -math.inf  # the interval has passed
        await db.write(fine, quick=True)
        assert asked == [True, True]  # asked again by a write that succeeded
        # A checkpoint that succeeds ends it: the WAL's threshold decides again.
        runner._checkpointed(_done_future())
        runner._full_at = -math.inf
        await db.write(fine)
        assert asked == [True, True]
    finally:
        await db.dispose()


def _done_future() -> concurrent.futures.Future[None]:
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()
    fut.set_result(None)
    return fut


def test_a_small_filesystem_gets_a_smaller_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sixteenth of a filesystem smaller than 64 MiB, never below 64 KiB."""
    size = 0

    class Fs:
        f_frsize = 4096

        @property
        def f_blocks(self) -> int:
            return size // 4096

    monkeypatch.setattr(db_module.os, "statvfs", lambda _path: Fs())
    threshold = db_module._checkpoint_threshold
    for size, want in [
        (2 * 1024**2, 128 * 1024),
        (512 * 1024, 64 * 1024),
        (32 * 1024**2, 2 * 1024**2),
        (10 * 1024**3, db_module._CHECKPOINT_WAL_BYTES),
    ]:
        assert threshold(tmp_path) == want, size


async def test_the_async_engine_of_a_sqlite_file_is_made_when_asked_for(tmp_path: Path) -> None:
    """Tests and admin tools still get an async engine on the same file (whatever the
    driver the URL named), made at their first use; none is made after dispose()."""
    db = create_database(f"sqlite:///{tmp_path / 'c.db'}")
    await upgrade(db)
    assert db._engine is None
    async with db.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
        assert (await conn.exec_driver_sql("SELECT count(*) FROM uploads")).scalar() == 0
    await db.dispose()
    closed = create_database(f"sqlite:///{tmp_path / 'd.db'}")
    await closed.dispose()
    with pytest.raises(RuntimeError, match="closed"):
        closed.engine  # noqa: B018
