"""Engine creation, and one way to run catalog work on SQLite (the default) and PostgreSQL.

Repositories write their SQL once, as plain synchronous SQLAlchemy Core functions of a
``Connection``, and hand them to :meth:`Database.read` / :meth:`Database.write`:

- on PostgreSQL the function runs on the async engine (asyncpg), in one greenlet per unit or
  group of quick writes (:class:`PostgresRunner`);
- on SQLite it runs on a synchronous engine, a whole unit of work per trip, on one dedicated
  thread. aiosqlite pays a thread hop and a greenlet switch for every execute, fetch and
  commit (measured: ~0.6 ms of CPU for a primary-key SELECT, against ~0.2 ms here), and the
  small upload path is made of such statements. One thread also serializes SQLite's writers
  in a fair FIFO instead of its sleeping busy handler.
- A unit marked ``quick`` (a point read or write by primary key: the tus hot path) runs
  inline on the event loop instead when nothing else holds the connection: it takes tens of
  microseconds, less than the hop to the thread and back costs. It never waits there: the
  connection's busy timeout is zero and a unit that meets a lock held by another process (or
  that the thread is using the connection) goes to the thread, which waits and retries. What
  syncs files stays off the loop too: WAL checkpoints (run when the WAL passes 4 MiB, on a
  thread and a connection of their own, so units go on meanwhile), the first write after one
  (it starts the WAL over, syncing its header: on the thread) and, with ``durable``
  (``fsync``), every quick write (each commit syncs the WAL: on the thread).
- Reads go through a memory map of the database file (``mmap_size``): a connection drops its
  page cache whenever another connection (another process: ``serve --workers N``) has
  written, and pages read back from the map cost no system call and no copy, where ``read()``
  cost both (measured with two processes: about 0.4 ms of CPU less per small upload). Pages
  still in the WAL are read as before.
- Group commit: quick writes are not run at once but at the next turn of the event loop,
  together with the other quick writes of that turn, in one transaction (one commit, and one
  WAL append for the pages they share); units on the thread run in groups the same way, one
  sync for all of them with ``durable``. Each caller gets its result only once its group has
  committed; if one unit of a group fails, the group is rolled back and its units run again
  one by one, so that the error is that unit's alone (units may run twice anyway, see
  :meth:`Database.write`). Hot statements run through :mod:`.fastsql`.
- Several processes on one database (``serve --workers N``, a ``worker`` beside ``serve``)
  queue their writes on a lock file beside it (``flock``): a process whose write found the
  lock taken tries it again every few milliseconds (a unit holds it about one), instead of
  polling SQLite with sleeps growing to 50 ms while the others keep writing (which starved
  it), and gives up after ``_BUSY_WAIT_S``: a process stopped while it holds the lock
  (SIGSTOP, a frozen host) fails the others' writes then, instead of holding them forever.

``Database.engine`` (the async engine) stays for tests and rare admin work; on SQLite it is
made at its first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import fcntl
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.util import greenlet_spawn

from storage_backends.fileio import private_dirs, private_file

from ..cache.bus import DEFERRED_NOTIFY, deferred_statement
from ..deadlines import terminate
from ..errors import CatalogUnavailable
from ..futures import settle
from ..settings import DEFAULT_DATABASE_TIMEOUT
from . import fastsql

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "DEFAULT_BOUND",
    "Database",
    "create_database",
    "is_disk_full",
    "terminate_invalidated",
]

T = TypeVar("T")

_log = structlog.get_logger("tusserver.db")

#: How long a unit on the thread waits for a lock another process holds, in all.
_BUSY_WAIT_S = 30.0
#: The longest pause between two tries of the writers' lock file (see _unit_waiting).
_WRITER_POLL_S = 0.005
#: How much of the database file is read through a memory map (address space, not memory).
_MMAP_BYTES = 256 * 1024 * 1024
#: WAL size (bytes) past which a checkpoint runs (on the thread: a checkpoint syncs files).
#: About SQLite's own automatic threshold (1,000 pages).
_CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024
#: The least of it on a small filesystem (see _checkpoint_threshold).
_MIN_CHECKPOINT_WAL_BYTES = 64 * 1024
#: After a write found the disk full, checkpoints are asked for at most this often (see
#: SqliteRunner._deliver).
_FULL_CHECKPOINT_EVERY_S = 1.0
#: At most this many units share one transaction on the thread (group commit).
_MAX_GROUP = 64
#: PostgreSQL: connections kept open between units, of each kind (see PostgresRunner).
_MAX_IDLE = 6
#: PostgreSQL: groups of quick writes running at once (see PostgresRunner), not counting
#: those out for longer than _SLOW_GROUP_S (waiting for a lock, a connection that hangs; a
#: group takes a few milliseconds, and PostgreSQL looks for deadlocks only after a second).
_MAX_GROUPS_AT_ONCE = 2
_SLOW_GROUP_S = 0.25
#: PostgreSQL: a unit still running this long after its deadline terminated its connection
#: (it fails at once, normally) is cancelled (see _Deadline).
_CANCEL_AFTER_S = 1.0
#: Retry-After (seconds) of a unit that passed its deadline: as for a catalog found down.
_RETRY_AFTER = "5"
#: A deadline this close is due (the loop may run a timer a moment early).
_WATCH_SLACK_S = 0.001


class _Default(enum.Enum):
    BOUND = enum.auto()


#: ``bound`` of :meth:`Database.read` and :meth:`Database.write`: the catalog's own
#: (:attr:`Database.timeout`, the ``database_timeout`` setting).
DEFAULT_BOUND: Final = _Default.BOUND


class Database:
    """The catalog: units of work (:meth:`read`, :meth:`write`) and the async engine.

    A SQLite file catalog runs every unit on :class:`SqliteRunner`; its async engine
    (aiosqlite, and with it SQLAlchemy's ORM package, ~8 MiB of imports and a connection
    with a thread of its own) is made only when something asks for :attr:`engine`: tests,
    admin tools. PostgreSQL runs units on the async engine (:class:`PostgresRunner`).

    On PostgreSQL every unit is bounded by :attr:`timeout` (``database_timeout``): one that
    has not ended by then (the server stopped answering) fails with
    :class:`~tusserver.errors.CatalogUnavailable` (503), and its connection is terminated
    (see :class:`PostgresRunner`). Which units run under which bound:

    - every unit of a request, of the pipeline, the sweeper and the background writers runs
      under :attr:`timeout`. The slowest of them are bounded by their own design, far below
      its default of 10 s: a search is one keyset page (2 to 150 ms measured on a million
      files, 0.8 s for the worst pattern before per-query plans), an analytics report reads
      rollups whose size depends on the range, not on the events, and the retention purges
      and tombstone sweeps go in batches (5,000 and 500 rows), each its own transaction, so
      a batch that fails is taken up again by the next sweep.
    - migrations run under no bound (``bound=None``, :mod:`.migrate`): a table rewrite
      on a big catalog may take minutes, and a start-up that waits for it is visible (the
      process does not serve, its readiness probe fails) rather than a migration killed
      half way and retried forever.
    - the readiness probe passes a shorter bound of its own.

    SQLite (a file: no network to stall) takes no such bound; its units wait for another
    process's lock at most ``_BUSY_WAIT_S``.
    """

    __slots__ = ("_engine", "_make_engine", "dialect", "postgres", "sqlite", "timeout", "url")

    def __init__(
        self,
        url: URL,
        *,
        engine: AsyncEngine | None = None,
        make_engine: Callable[[], AsyncEngine] | None = None,
        sqlite: SqliteRunner | None = None,
        postgres: PostgresRunner | None = None,
        timeout: float = DEFAULT_DATABASE_TIMEOUT,
    ) -> None:
        if engine is None and make_engine is None:
            raise ValueError("an engine or a way to make one")
        self.url = url
        #: PostgreSQL: seconds a unit of work may take unless it asks for another bound.
        self.timeout = timeout
        #: ``sqlite`` or ``postgresql``.
        self.dialect: str = url.get_backend_name()
        #: SQLite only: where units of work run (the synchronous engine and its thread).
        self.sqlite = sqlite
        #: PostgreSQL only: how units of work run (one greenlet each, see PostgresRunner).
        self.postgres = postgres
        self._engine = engine
        self._make_engine = make_engine

    @property
    def engine(self) -> AsyncEngine:
        """The async engine, for work outside units (tests, admin tools)."""
        if self._engine is None:
            if self._make_engine is None:
                raise RuntimeError("the database is closed")
            self._engine = self._make_engine()
        return self._engine

    def _bound(self, bound: float | _Default | None) -> float | None:
        return self.timeout if bound is DEFAULT_BOUND else bound

    async def read(
        self,
        work: Callable[[Connection], T],
        *,
        quick: bool = False,
        bound: float | _Default | None = DEFAULT_BOUND,
    ) -> T:
        """Run ``work`` on a connection, outside any explicit transaction.

        ``quick``: a point query that may run inline on the event loop (SQLite).
        ``bound``: PostgreSQL: seconds it may take (None: no bound), see the class.
        """
        if self.sqlite is not None:
            return await self.sqlite.run(work, write=False, quick=quick)
        if self.postgres is not None:
            return await self.postgres.run(work, write=False, quick=quick, bound=self._bound(bound))
        async with self.engine.connect() as conn:
            return await conn.run_sync(work)

    async def write(
        self,
        work: Callable[[Connection], T],
        *,
        quick: bool = False,
        bound: float | _Default | None = DEFAULT_BOUND,
    ) -> T:
        """Run ``work`` in one transaction: committed when it returns, rolled back if it raises.

        ``work`` may run twice (after a lock held by another process made the first attempt
        fail and roll back): it must have no effect outside the connection. A unit that
        failed with :class:`~tusserver.errors.CatalogUnavailable` for its deadline may have
        been committed or not (its COMMIT sent, the answer never came).
        """
        if self.sqlite is not None:
            return await self.sqlite.run(work, write=True, quick=quick)
        if self.postgres is not None:
            return await self.postgres.run(work, write=True, quick=quick, bound=self._bound(bound))
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def dispose(self) -> None:
        self._make_engine = None  # (none made after this)
        if self.postgres is not None:
            await self.postgres.close()
        if self._engine is not None:
            if self.postgres is None:
                await self._engine.dispose()
            else:
                # Pooled connections close gracefully: a Terminate message whose answer
                # (the server closing) a server that stopped answering never sends.
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._engine.dispose()
                except TimeoutError:
                    _log.warning(
                        "database connections not closed: the server did not answer",
                        timeout=self.timeout,
                    )
        if self.sqlite is not None:
            await self.sqlite.close()


class _UnitFailed(Exception):
    """A unit of a group failed (the group is rolled back, its units run one by one)."""


class _Busy(Exception):
    """The database is locked by another connection (inline attempts never wait)."""


#: PostgreSQL's SQLSTATE for "disk full" (class 53, insufficient resources).
_PG_DISK_FULL = "53100"


def is_disk_full(exc: DBAPIError) -> bool:
    """Whether the database refused because its disk is full: SQLite's SQLITE_FULL
    ("database or disk is full"), or PostgreSQL's disk_full (SQLSTATE 53100)."""
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code: int | None = getattr(orig, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(orig)
    return bool(
        getattr(orig, "sqlstate", None) == _PG_DISK_FULL
        or getattr(orig, "pgcode", None) == _PG_DISK_FULL
    )


#: SQLSTATE classes that say the server went away: connection exception (08) and operator
#: intervention (57: shutting down, restarting, a cancelled statement).
_PG_GONE_CLASSES = ("08", "57")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (down, restarting, the
    connection dropped), as opposed to a fault of the statement: the request may be retried.

    Connection failures reach the caller wrapped by SQLAlchemy (``connection_invalidated``)
    or raw, from the pool's connect (asyncpg raises ``OSError`` subclasses); a raw one counts
    only if it came out of the database layer."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(state, str) and state[:2] in _PG_GONE_CLASSES:
            return True
        cause = getattr(orig, "__cause__", None)
        return isinstance(orig, ConnectionError) or isinstance(cause, ConnectionError)
    if not isinstance(exc, OSError | TimeoutError) and not type(exc).__module__.startswith(
        "asyncpg"
    ):
        return False
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("sqlalchemy.", "asyncpg.")):
            return True
        tb = tb.tb_next
    return False


def _is_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:  # extended codes (SQLITE_BUSY_SNAPSHOT...) keep the primary one
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(orig)


@dataclass(slots=True)
class _Queued:
    """A unit of work waiting for the SQLite thread."""

    work: Callable[[Connection], Any]
    write: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class SqliteRunner:
    """The one connection of a SQLite catalog: units run inline or on one thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        durable: bool,
        wal_path: Path | None = None,
        writer_lock_path: Path | None = None,
        checkpoint_at: int = _CHECKPOINT_WAL_BYTES,
    ) -> None:
        self.engine = engine
        self.durable = durable
        self._wal_path = wal_path
        #: WAL size (bytes) past which a checkpoint runs.
        self._checkpoint_at = checkpoint_at
        #: Writers of every process queue on this file (see the module docstring).
        self._writer_lock_path = writer_lock_path
        self._writer_fd: int | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        #: WAL checkpoints run here, on a connection of their own (see :meth:`_checkpoint`).
        self._checkpointer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sqlite-checkpoint"
        )
        self._checkpoint_conn: sqlite3.Connection | None = None
        #: Units waiting for the thread, which runs them in groups (:meth:`_drain`).
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()
        #: A drain is submitted to the thread or running (it goes on while units are queued).
        self._draining = False
        #: Quick writes waiting for the next turn of the event loop (:meth:`_flush_inline`).
        self._inline: list[_Queued] = []
        self._inline_scheduled = False
        #: Held by whoever uses the connection: a unit inline, or the thread.
        self._conn_lock = threading.Lock()
        self._checkpointing = False
        #: A write found the disk full: a checkpoint is asked for until one succeeds (see
        #: :meth:`_deliver`), the last time at ``_full_at`` (monotonic).
        self._checkpoint_wanted = False
        self._full_at = -math.inf
        #: The next write may start the WAL over, which syncs its header even with
        #: synchronous=NORMAL: that write goes to the thread (at start, after a checkpoint).
        self._wal_restart = True
        self._closed = False
        #: Kept open between units (a pool checkout per unit cost more than a point query).
        self._conn: Connection | None = None

    async def run(self, work: Callable[[Connection], T], *, write: bool, quick: bool) -> T:
        if self._closed:
            raise RuntimeError("the database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        unit = _Queued(work, write, future, loop)
        if quick and write and not self.durable:
            # Grouped with the other quick writes of this turn of the event loop: one
            # transaction and one commit for all of them (see _flush_inline).
            self._inline.append(unit)
            if not self._inline_scheduled:
                self._inline_scheduled = True
                loop.call_soon(self._flush_inline)
            return await future
        if quick and not write and self._conn_lock.acquire(blocking=False):
            try:
                return self._unit(work, False)
            except _Busy:
                pass  # retried on the thread, which may wait
            finally:
                self._conn_lock.release()
        self._to_thread([unit])
        return await future

    def _flush_inline(self) -> None:
        """On the event loop: the quick writes queued since the last turn, in one
        transaction inline when nothing else holds the connection, else on the thread."""
        self._inline_scheduled = False
        group = [q for q in self._inline[:_MAX_GROUP] if not q.future.done()]
        del self._inline[:_MAX_GROUP]
        if self._inline:
            self._inline_scheduled = True
            group[0].loop.call_soon(self._flush_inline)
        if not group:
            return
        if self._closed:
            for q in group:
                q.future.set_exception(RuntimeError("the database is closed"))
            return
        if self._conn_lock.acquire(blocking=False):
            try:
                # (Checked under the lock: a checkpoint may have just set it.)
                if not self._wal_restart and self._writer_lock(False):
                    try:
                        outcomes = self._run_group(group, inline=True)
                    finally:
                        self._writer_unlock()
                    # Units the inline attempt could not run (a lock held by another
                    # process) go to the thread, which waits.
                    left = [q for q, o in zip(group, outcomes, strict=True) if o is None]
                    self._deliver(
                        [(q, o) for q, o in zip(group, outcomes, strict=True) if o is not None]
                    )
                    group = left
            finally:
                self._conn_lock.release()
        if group:
            self._to_thread(group)

    def _to_thread(self, units: list[_Queued]) -> None:
        with self._queue_lock:
            self._queue.extend(units)
            start = not self._draining
            self._draining = True
        if start:
            self._thread.submit(self._drain)

    def _drain(self) -> None:
        """On the thread: run the queued units, all that queued up meanwhile in one group
        (one transaction, one commit, one sync with ``durable``). While more are queued it
        submits itself again, behind what else waits for the thread (a checkpoint)."""
        with self._queue_lock:
            group = self._queue[:_MAX_GROUP]
            del self._queue[:_MAX_GROUP]
        # (A unit whose caller gave up before it started is not run.)
        group = [q for q in group if not q.future.done()]
        outcomes: list[tuple[bool, Any] | None]
        try:
            outcomes = self._run_group(group, inline=False) if group else []
        except BaseException as exc:  # never leave callers waiting
            outcomes = [(False, exc)] * len(group)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Queued, tuple[bool, Any]]]] = {}
        for q, outcome in zip(group, outcomes, strict=True):
            assert outcome is not None
            by_loop.setdefault(q.loop, []).append((q, outcome))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                loop.call_soon_threadsafe(self._deliver, done)
        with self._queue_lock:
            if not self._queue:
                self._draining = False
                return
        self._thread.submit(self._drain)

    def _deliver(self, done: list[tuple[_Queued, tuple[bool, Any]]]) -> None:
        """On the event loop: hand a group's results (or errors) to the units' callers."""
        wrote = full = False
        for q, (ok, value) in done:
            wrote = wrote or q.write
            full = full or (
                q.write and not ok and isinstance(value, DBAPIError) and is_disk_full(value)
            )
            settle(q.future, ok, value)
        if full:
            # The WAL starts over (and writes again into the space its file already holds)
            # only after a checkpoint, which waits for the WAL to reach its threshold: on a
            # full disk it may never get there, every write (a deletion that frees space
            # included) needing more of it. So from now on each write asks for a checkpoint,
            # at most once a second, until one succeeds: once the database file has room
            # for what the WAL holds (freed by a deletion, or by an operator).
            self._checkpoint_wanted = True
        if wrote:
            self._wrote()

    def _run_group(self, group: list[_Queued], *, inline: bool) -> list[tuple[bool, Any] | None]:
        """Run ``group`` (the caller holds the locks inline; the thread takes them): all in
        one transaction, committed once. A result is delivered only once its group has
        committed. If any unit fails, the group is rolled back and its units run again one
        by one, each in its own transaction (units may run twice: see
        :meth:`Database.write`), so that one unit's error is its own.

        Inline, a unit that meets a lock held by another process is not run (None): it and
        the ones after it go to the thread.
        """
        run: Callable[[Callable[[Connection], Any], bool], Any] = (
            self._unit if inline else self._unit_waiting
        )
        if len(group) > 1:
            works = [q.work for q in group]
            with contextlib.suppress(Exception):
                results = run(
                    lambda conn: [work(conn) for work in works], any(q.write for q in group)
                )
                return [(True, r) for r in results]
        outcomes: list[tuple[bool, Any] | None] = []
        for i, q in enumerate(group):
            try:
                outcomes.append((True, run(q.work, q.write)))
            except _Busy:
                outcomes += [None] * (len(group) - i)
                break
            except BaseException as exc:
                outcomes.append((False, exc))
        return outcomes

    def _unit_waiting(self, work: Callable[[Connection], T], write: bool) -> T:
        """On the thread: run the unit, retrying while another process holds the lock.

        Both locks are waited for within ``_BUSY_WAIT_S``: SQLite's, and the writers' lock
        file of the processes sharing the catalog, which a process stopped while writing
        (SIGSTOP, a frozen host) would otherwise hold against every write here for as long
        as it is stopped. The connection is not held while the lock file is waited for, so
        reads (inline or here) go on meanwhile."""
        deadline = time.monotonic() + _BUSY_WAIT_S
        pause = 0.001
        while True:
            with self._conn_lock:
                queued = write and not self._writer_lock(False)
                if not queued:
                    try:
                        result = self._unit(work, write)
                    except _Busy:
                        pass
                    else:
                        if write and not self._checkpointing:
                            self._wal_restart = False
                        return result
                    finally:
                        if write:
                            self._writer_unlock()
            if time.monotonic() >= deadline:
                raise OperationalError(
                    "unit of work", None, sqlite3.OperationalError("database is locked")
                ) from None
            time.sleep(pause)
            # Another process's write holds the lock file for a unit (a millisecond or so):
            # tried again often, or its writes would always come first. SQLite's own lock
            # (a checkpoint, another program) is waited for more patiently.
            pause = min(pause * 2, _WRITER_POLL_S if queued else 0.05)

    def _writer_lock(self, wait: bool) -> bool:
        """Take the cross-process writer lock (the caller holds ``_conn_lock``); without
        ``wait``, False when another process holds it."""
        if self._writer_lock_path is None:
            return True
        if self._writer_fd is None:
            self._writer_fd = os.open(
                self._writer_lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        try:
            fcntl.flock(self._writer_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _writer_unlock(self) -> None:
        if self._writer_fd is not None:
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def _unit(self, work: Callable[[Connection], T], write: bool) -> T:
        """One unit on the connection; the caller holds ``_conn_lock``."""
        conn = self._conn
        try:
            if conn is None or conn.closed or conn.invalidated:
                if conn is not None:
                    conn.close()
                conn = self._conn = self.engine.connect()
            if write:
                with conn.begin():
                    return work(conn)
            try:
                return work(conn)
            finally:
                conn.rollback()  # end the implicit read transaction: never hold a WAL snapshot
        except OperationalError as exc:
            self._drop_if_dirty(conn)
            if _is_busy(exc):
                raise _Busy from exc
            raise
        except BaseException:
            self._drop_if_dirty(conn)
            raise

    def _drop_if_dirty(self, conn: Connection | None) -> None:
        """After a failure, a connection still inside a transaction (its rollback failed) is
        discarded: the next unit's commit would otherwise make the failed unit's writes
        permanent."""
        if conn is None or conn.closed or conn.invalidated:
            return
        raw = conn.connection.dbapi_connection
        if raw is None or getattr(raw, "in_transaction", False):
            conn.invalidate()

    def _wrote(self) -> None:
        if self._checkpointing or self._wal_path is None or self._closed:
            return
        if self._checkpoint_wanted:
            now = time.monotonic()
            if now - self._full_at >= _FULL_CHECKPOINT_EVERY_S:
                self._full_at = now
                self._start_checkpoint()
                return
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size >= self._checkpoint_at:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        if self._checkpointing or self._wal_path is None or self._closed:
            return
        self._checkpointing = True
        try:
            fut = self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # closing: the last checkpoint is close()'s
            self._checkpointing = False
            return
        fut.add_done_callback(self._checkpointed)

    def _checkpoint(self) -> None:
        """On its own thread and connection: a PASSIVE checkpoint copies what the WAL holds
        into the database while units go on (WAL lets writers and readers run beside a
        checkpointer). It syncs the database file, which took 10-65 ms here: with the units'
        connection held, every unit waited that long. Only the frames written meanwhile are
        then copied with the units held.

        From now until a write on the units' thread after it, writes stay off the event loop:
        the first one after a checkpoint may start the WAL over, which syncs its header."""
        if self._closed:  # (queued behind close()'s end of this thread's connection)
            self._checkpointing = False
            return
        with self._conn_lock:
            self._wal_restart = True
        if self._checkpoint_conn is None:
            # (The engine's pool holds the units' connection alone.)
            self._checkpoint_conn = sqlite3.connect(
                str(self.engine.url.database), timeout=0, isolation_level=None
            )
        conn = self._checkpoint_conn
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            with self._conn_lock:
                # What was written meanwhile, with the units held: the WAL is then wholly
                # in the database and the next write starts it over. Without this, a steady
                # stream of writes would leave a few frames behind each checkpoint and the
                # WAL would never start over (it would grow without bound).
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self._checkpointing = False  # (the next write on the units' thread clears
                # the restart flag)

    def _close_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _checkpointed(self, fut: concurrent.futures.Future[None]) -> None:
        self._checkpointing = False
        if (exc := fut.exception()) is not None:
            _log.warning("sqlite checkpoint failed", error=str(exc))
        else:
            self._checkpoint_wanted = False

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        # (A checkpoint under way ends first; its connection closes on its thread.)
        await asyncio.wrap_future(self._checkpointer.submit(self._close_checkpointer))
        self._checkpointer.shutdown(wait=False)
        await loop.run_in_executor(self._thread, self._close_on_thread)
        self._thread.shutdown(wait=False)

    def _close_on_thread(self) -> None:
        with self._conn_lock:
            # What the automatic checkpoints (off on this connection) would have done.
            # (A lock held by another process, or a full disk: the WAL stays for the next
            # start; the connection closes all the same.)
            with contextlib.suppress(_Busy, DBAPIError):
                self._unit(lambda c: c.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)"), False)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None
            self.engine.dispose()


class PostgresRunner:
    """Units of work on PostgreSQL (asyncpg), each in one greenlet.

    ``AsyncEngine.begin()`` + ``run_sync`` spawns a greenlet for the checkout, the begin, the
    work, the commit and the close; here one greenlet does all of it on the synchronous side
    of the async engine (its statements still wait on the event loop through asyncpg).

    Round trips a unit does not need are left out:

    - no pre-ping at checkout (with asyncpg it is BEGIN, ``;``, ROLLBACK: three round trips):
      a pooled connection the server has closed (a restart, an idle timeout) is known closed
      by asyncpg as soon as the event loop has read its end, and the checkout event below
      replaces it. One whose end has not been seen yet fails at its first statement: the
      unit is run again once on a new connection when that is safe (a read; a write that
      had not reached its COMMIT, rolled back with the lost session).
    - a ``quick`` read (a point query) runs in autocommit: a single statement is its own
      transaction, without a BEGIN and a ROLLBACK around it.
    - connections stay open between units (a few of each kind: in autocommit for quick
      reads, in transactions for the rest) instead of a pool checkout and return each.
    - quick writes are grouped as on SQLite: those of one turn of the event loop share one
      transaction (:meth:`_group`). Two groups run side by side, on their own
      connections; the quick writes queued while both are out wait for one of them to end
      and go together in the next group (under load: fewer, larger transactions, with
      fewer BEGIN, COMMIT and NOTIFY round trips per write). The quick writes are point
      writes by primary key, and two groups that would still wait for each other's rows are
      told so by PostgreSQL's deadlock detection, and their units run again one by one.

    A server that stops answering (a network partition, a frozen host: its connections stay
    open, nothing comes back) would hold every unit, and every request behind it, as long
    as it is gone. So each unit (and each group of quick writes) has a deadline
    (:class:`_Deadline`: ``timeout`` seconds, the catalog's ``database_timeout``, unless the
    caller asks for another ``bound``). When it passes, the unit's connection is
    *terminated* (its socket closed, no word to the server), so the statement waiting on it
    fails at once; a unit still waiting for a connection (the pool, a new connection) is
    cancelled. The caller gets :class:`~tusserver.errors.CatalogUnavailable` (503 with
    Retry-After); the unit is not run again. The idle connections are terminated too (they
    lead to the same silent server), and the pool replaces those it holds once SQLAlchemy
    has seen one lost. The connection is never cancelled instead, nor closed gracefully,
    nor reused: asyncpg answers a cancelled statement with a cancel request and keeps the
    connection waiting for its acknowledgement, which a silent server never sends (the next
    unit on it, or its graceful close, would hang). For the same reason every connection
    SQLAlchemy invalidates (a statement cancelled from outside, a lost connection) is
    terminated before SQLAlchemy tries to close it (:func:`terminate_invalidated`). New
    connections are made as units need them: once the server answers again, the catalog
    works again.
    """

    def __init__(self, engine: AsyncEngine, *, capacity: int, timeout: float) -> None:
        self.engine = engine.sync_engine
        #: Seconds a unit may take by default, quick writes always (see _Deadline).
        self.timeout = timeout
        self._watch = _Watch()
        #: How many connections the pool gives out at most (pool_size + max_overflow).
        self._capacity = capacity
        #: Quick writes waiting for the next turn of the event loop (:meth:`_flush`).
        self._pending: list[_Queued] = []
        self._scheduled = False
        #: Groups running, with when each started (loop time): kept referenced until done,
        #: awaited by close.
        self._groups: dict[asyncio.Task[None], float] = {}
        #: The flush due when the oldest running group becomes slow (see _flush).
        self._recheck: asyncio.TimerHandle | None = None
        #: Connections kept open between units, in autocommit (quick reads) or not.
        self._idle: dict[bool, list[Connection]] = {False: [], True: []}
        self._closed = False

    async def run(
        self, work: Callable[[Connection], T], *, write: bool, quick: bool, bound: float | None
    ) -> T:
        if self._closed:
            raise RuntimeError("the database is closed")
        if write and quick and bound == self.timeout:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            self._pending.append(_Queued(work, True, future, loop))
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._flush)
            return await future
        deadline = None if bound is None else _Deadline(bound)
        try:
            return await self._within(deadline, self._unit, work, write, quick)
        except Exception as exc:
            if deadline is not None and deadline.expired and _from_database(exc):
                raise deadline.failure() from exc
            raise

    async def _within(self, deadline: _Deadline | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args, deadline)`` in a greenlet, under ``deadline`` (None: no bound)."""
        if deadline is None:
            unbounded: T = await greenlet_spawn(fn, *args, None)
            return unbounded
        task = asyncio.current_task()
        assert task is not None
        deadline.start(task, asyncio.get_running_loop().time())
        self._watch.add(deadline)
        try:
            result: T = await greenlet_spawn(fn, *args, deadline)
        except asyncio.CancelledError:
            if deadline.ours(task):
                raise TimeoutError(f"no answer within {deadline.seconds:g} s") from None
            raise
        finally:
            self._watch.discard(deadline)
        if deadline.cancelled:  # (the unit swallowed it: the task is not being cancelled)
            task.uncancel()
        return result

    def _flush(self) -> None:
        """The quick writes queued since the last turn of the event loop: one group, run in
        one transaction on one connection (see :meth:`_group`)."""
        self._scheduled = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        recent = [t for t in self._groups.values() if now - t < _SLOW_GROUP_S]
        if len(recent) >= _MAX_GROUPS_AT_ONCE:
            # The end of one flushes again (_group_done), or the oldest becoming slow: a
            # group that waits long holds back the writes queued behind it only so long.
            if self._recheck is None:
                self._recheck = loop.call_at(min(recent) + _SLOW_GROUP_S, self._slow_group)
            return
        group = [q for q in self._pending[:_MAX_GROUP] if not q.future.done()]
        del self._pending[:_MAX_GROUP]
        if self._pending:
            self._scheduled = True
            loop.call_soon(self._flush)
        if group:
            task = loop.create_task(self._run_group(group))
            self._groups[task] = now
            task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._groups.pop(task, None)
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _slow_group(self) -> None:
        self._recheck = None
        if self._pending and not self._scheduled:
            self._flush()

    async def _run_group(self, group: list[_Queued]) -> None:
        deadline = _Deadline(self.timeout)
        try:
            outcomes = await self._within(deadline, self._group, [q.work for q in group])
        except BaseException as exc:  # never leave callers waiting
            outcomes = [(False, exc)] * len(group)
        for q, (ok, value) in zip(group, outcomes, strict=True):
            if not ok and deadline.expired and _from_database(value):
                failure = deadline.failure()
                failure.__cause__ = value
                value = failure
            settle(q.future, ok, value)

    def _group(
        self, works: list[Callable[[Connection], Any]], deadline: _Deadline | None
    ) -> list[tuple[bool, Any]]:
        """Group commit: the units in one transaction, so one BEGIN and one COMMIT (and one
        checkout, one greenlet) for all of them. Each caller gets its result once the group
        has committed. If a unit fails, the group is rolled back and its units run again one
        by one, each in its own transaction, so that the error is that unit's alone (units
        may run twice: see :meth:`Database.write`). An error outside the units (no
        connection, the COMMIT) is every unit's. Past the ``deadline`` no unit is run again
        (each would take a connection to the same silent server): they all fail."""
        if len(works) > 1:

            def all_of(conn: Connection) -> list[Any]:
                results = []
                for work in works:
                    try:
                        results.append(work(conn))
                    except Exception as exc:
                        raise _UnitFailed from exc
                return results

            try:
                return [(True, r) for r in self._unit(all_of, True, True, deadline)]
            except _UnitFailed as exc:
                if deadline is not None and deadline.expired:
                    return [(False, exc.__cause__)] * len(works)
        outcomes: list[tuple[bool, Any]] = []
        for work in works:
            try:
                outcomes.append((True, self._unit(work, True, True, deadline)))
            except Exception as exc:
                outcomes.append((False, exc))
                if deadline is not None and deadline.expired:
                    outcomes += [(False, exc)] * (len(works) - len(outcomes))
                    break
        return outcomes

    async def close(self) -> None:
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        # Quick writes whose turn has not come yet run now, not after.
        while self._pending or self._groups:
            if self._pending:
                self._flush()
            if self._groups:
                await asyncio.wait(list(self._groups), return_when=asyncio.FIRST_COMPLETED)
        await greenlet_spawn(self._drop_idle)

    def _unit(
        self,
        work: Callable[[Connection], T],
        write: bool,
        quick: bool,
        deadline: _Deadline | None,
    ) -> T:
        retried = False
        autocommit = quick and not write
        while True:
            committing = False
            reuse = False
            conn = self._checkout(autocommit)
            if deadline is not None:
                deadline.attach(conn)
            try:
                if write:
                    # Invalidations of the cache are sent in one statement at the end. (The
                    # dict itself is kept: once a failure has invalidated the connection,
                    # conn.info raises instead of the failure.)
                    info = conn.info
                    deferred: list[str] = []
                    with conn.begin():
                        info[DEFERRED_NOTIFY] = deferred
                        try:
                            result = work(conn)
                        finally:
                            info.pop(DEFERRED_NOTIFY, None)
                        if deferred:
                            fastsql.execute(conn, *deferred_statement(deferred))
                        committing = True
                else:
                    result = work(conn)
                    if conn.in_transaction():
                        conn.rollback()  # (autocommit: no round trip)
                reuse = True
                return result
            except DBAPIError as exc:
                late = deadline is not None and deadline.expired
                if exc.connection_invalidated or late:
                    # The others may be gone too (a restart), or lead to the same silent
                    # server (terminated then): new connections from now on.
                    self._drop_idle(terminate_them=late)
                if late or retried or committing or not exc.connection_invalidated:
                    raise
                retried = True
                _log.info("database connection lost; running the unit again", error=str(exc))
            finally:
                if deadline is not None and deadline.expired:
                    _discard(conn)  # (terminated by its deadline: never reused)
                else:
                    self._checkin(conn, autocommit, reuse)
                if deadline is not None:
                    deadline.detach()

    def _checkout(self, autocommit: bool) -> Connection:
        """A connection kept open from an earlier unit (a pool checkout and return per unit
        cost more than a point query), or a new one from the pool."""
        idle = self._idle[autocommit]
        while idle:
            conn = idle.pop()
            raw = conn.connection.driver_connection
            if raw is not None and not raw.is_closed():
                return conn
            _discard(conn)  # closed by the server (or terminated): not back to the pool
        conn = self.engine.connect()
        if autocommit:
            conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def _checkin(self, conn: Connection, autocommit: bool, reuse: bool) -> None:
        idle = self._idle[autocommit]
        if (
            reuse
            and not self._closed
            and len(idle) < _MAX_IDLE
            # A unit may be waiting for the pool (it is exhausted): this one goes back to it.
            and self.engine.pool.checkedout() < self._capacity  # type: ignore[attr-defined]
            and not (conn.closed or conn.invalidated or conn.in_transaction())
        ):
            idle.append(conn)
        else:
            conn.close()

    def _drop_idle(self, *, terminate_them: bool = False) -> None:
        """Give the idle connections back to the pool, or with ``terminate_them`` end them
        (a server that stopped answering: no word to it, see :func:`_discard`)."""
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                if terminate_them:
                    _discard(conn)
                else:
                    conn.close()


class _Deadline:
    """The bound of one unit of work, or one group of quick writes, on PostgreSQL.

    When it passes, the connection the unit is using is terminated (see
    :class:`PostgresRunner`): the statement waiting on it fails at once with a lost
    connection, and so does every later one of the unit. A unit without a connection at
    that moment (waiting for the pool, or for a new connection to be made) is cancelled
    instead, and so is one still running :data:`_CANCEL_AFTER_S` after its connection was
    terminated (it should have failed at once). :meth:`failure` is then what its caller
    gets. The unit's own code (the greenlet) attaches and detaches its connection; the
    :class:`_Watch` runs on the event loop between its statements.
    """

    __slots__ = ("_cancelling", "_conn", "_task", "at", "cancelled", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: Loop time at which the watch acts next (the deadline, then the backstop).
        self.at = math.inf
        self.expired = False
        #: The unit's task was cancelled for it (not by someone else).
        self.cancelled = False
        self._conn: Connection | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0

    def start(self, task: asyncio.Task[Any], now: float) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self.at = now + self.seconds

    def ours(self, task: asyncio.Task[Any]) -> bool:
        """On a CancelledError of ``task``: whether it is this deadline's alone (as
        ``asyncio.timeout`` tells its own cancellation from others')."""
        return self.cancelled and task.uncancel() <= self._cancelling

    def attach(self, conn: Connection) -> None:
        """The unit now uses ``conn`` (terminated at once if the deadline has passed)."""
        self._conn = conn
        if self.expired:
            _terminate_conn(conn)

    def detach(self) -> None:
        self._conn = None

    def due(self, now: float) -> bool:
        """The time came (see :class:`_Watch`); whether to be watched further."""
        if not self.expired:
            self.expired = True
            if self._conn is not None:
                _terminate_conn(self._conn)
                self.at = now + _CANCEL_AFTER_S
                return True
        if self._task is not None and not self.cancelled:
            self.cancelled = True
            self._task.cancel()
        return False

    def failure(self) -> CatalogUnavailable:
        return CatalogUnavailable(
            f"the catalog database did not answer within {self.seconds:g} s",
            headers={"Retry-After": _RETRY_AFTER},
        )


class _Watch:
    """The deadlines of the units running now, under one timer of the event loop set for
    the earliest: not a timer per unit (its own timer and timeout scope cost a point query
    several percent of its CPU)."""

    __slots__ = ("_active", "_at", "_timer")

    def __init__(self) -> None:
        self._active: set[_Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def add(self, deadline: _Deadline) -> None:
        self._active.add(deadline)
        if deadline.at < self._at:
            self._schedule(deadline.at)

    def discard(self, deadline: _Deadline) -> None:
        self._active.discard(deadline)  # (the timer finds nothing due, and is set again)

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._check)

    def _check(self) -> None:
        self._timer = None
        self._at = math.inf
        now = asyncio.get_running_loop().time()
        for deadline in [d for d in self._active if d.at <= now + _WATCH_SLACK_S]:
            if not deadline.due(now):
                self._active.discard(deadline)
        if self._active:
            self._schedule(min(d.at for d in self._active))


def _from_database(exc: object) -> bool:
    """Whether ``exc`` came out of the database layer (a statement failed on its terminated
    connection, a unit cancelled by its deadline), not out of the unit's own logic."""
    return isinstance(exc, SQLAlchemyError | OSError | TimeoutError) or type(
        exc
    ).__module__.startswith("asyncpg")


def _terminate_conn(conn: Connection) -> None:
    """Close the socket of ``conn``'s asyncpg connection (see :func:`terminate`); one that
    SQLAlchemy has invalidated is terminated already (:func:`terminate_invalidated`)."""
    if not (conn.closed or conn.invalidated):
        with contextlib.suppress(Exception):
            terminate(conn.connection.driver_connection)


def _discard(conn: Connection) -> None:
    """End ``conn`` for good: its socket closed without a word to the server (which may not
    answer one), never back to the pool."""
    if not (conn.closed or conn.invalidated):
        _terminate_conn(conn)
        conn.invalidate()
    conn.close()


def terminate_invalidated(engine: AsyncEngine) -> None:
    """Have ``engine`` (asyncpg) terminate every connection it invalidates, see below."""
    event.listen(engine.sync_engine, "invalidate", _terminate_invalidated)


def _terminate_invalidated(dbapi_conn: Any, _record: Any, _exc: BaseException | None) -> None:
    """Pool event: a connection SQLAlchemy invalidates (lost, or its statement cancelled:
    the readiness probe's bound, a request that went away) is terminated at once, before
    SQLAlchemy closes it. Its own close would first try a graceful one, which waits for the
    answer to asyncpg's cancel request, without bound, from a server that may say nothing."""
    terminate(getattr(dbapi_conn, "driver_connection", None))


def _asyncpg_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """A pooled connection the server has closed is replaced at checkout (no round trip)."""
    raw = record.driver_connection
    if raw is not None and raw.is_closed():
        raise DisconnectionError("the connection was closed by the server")


def _private_sqlite_files(path: Path) -> None:
    """The catalog holds password hashes and the audit log: its directory is created 0700
    and its files are 0600 (or stricter, by the umask). The database file is created here
    with that mode, since SQLite gives its -wal and -shm files the mode of the database
    file; files an older version left readable by others are tightened."""
    private_dirs(path.parent)
    private_file(path, create=True)
    for suffix in ("-wal", "-shm", "-journal"):
        private_file(path.with_name(path.name + suffix))


def create_database(
    url: str,
    *,
    durable: bool = False,
    pool_size: int = 10,
    timeout: float = DEFAULT_DATABASE_TIMEOUT,
) -> Database:
    """The catalog at ``url``. SQLite gets WAL, a busy timeout and foreign keys.

    ``durable`` selects ``synchronous=FULL`` on SQLite (the ``fsync`` setting); otherwise
    ``NORMAL``, which in WAL mode survives a process crash but not a power loss.
    ``timeout`` bounds each unit of work on PostgreSQL (``database_timeout``, see
    :class:`Database`).
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() != "sqlite":
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        # asyncpg: a closed connection is replaced at checkout instead (PostgresRunner).
        kwargs["pool_pre_ping"] = parsed.get_driver_name() != "asyncpg"
        if parsed.get_driver_name() == "asyncpg":
            # (Units are cancelled at their deadline anyway; this bounds the rest: the
            # engine used as it is, by tests and admin tools.)
            kwargs["connect_args"] = {"timeout": timeout}
        engine = _async_engine(parsed, kwargs)
        if parsed.get_driver_name() != "asyncpg":
            return Database(parsed, engine=engine, timeout=timeout)
        event.listen(engine.sync_engine, "checkout", _asyncpg_checkout)
        terminate_invalidated(engine)
        postgres = PostgresRunner(engine, capacity=2 * pool_size, timeout=timeout)
        return Database(parsed, engine=engine, postgres=postgres, timeout=timeout)
    sync_mode = "FULL" if durable else "NORMAL"
    kwargs["connect_args"] = {"timeout": 30}
    if not parsed.database or parsed.database == ":memory:":
        # One shared connection (SQLAlchemy's StaticPool): a second engine would open a
        # second, empty in-memory database, so units of work run on the async engine
        # (slower, and only used by embedders' tests).
        return Database(parsed, engine=_async_engine(parsed, kwargs, _sqlite_pragmas(sync_mode)))
    _private_sqlite_files(Path(parsed.database))
    # One connection: SQLite serializes writers anyway, and with several connections they
    # would wait in SQLite's sleeping busy handler instead of a fair queue.
    kwargs.update(pool_size=1, max_overflow=0, pool_timeout=60, pool_reset_on_return=None)
    sync_url = parsed.set(drivername="sqlite+pysqlite")
    sync_engine = create_engine(
        sync_url,
        # No busy handler: an inline unit must never sleep on the event loop; the thread
        # retries units that met a lock (SqliteRunner).
        connect_args={"timeout": 0, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
        pool_reset_on_return=None,
    )
    checkpoint_at = _checkpoint_threshold(Path(parsed.database).parent)
    event.listen(
        sync_engine,
        "connect",
        _sqlite_pragmas(
            sync_mode, busy_ms=0, autocheckpoint=False, wal_size_limit=checkpoint_at // 4
        ),
    )
    runner = SqliteRunner(
        sync_engine,
        durable=durable,
        wal_path=Path(f"{parsed.database}-wal"),
        writer_lock_path=Path(f"{parsed.database}-writer.lock"),
        checkpoint_at=checkpoint_at,
    )
    return Database(
        parsed,
        make_engine=lambda: _async_engine(
            parsed.set(drivername="sqlite+aiosqlite"), kwargs, _sqlite_pragmas(sync_mode)
        ),
        sqlite=runner,
    )


def _async_engine(
    url: URL, kwargs: dict[str, Any], on_connect: Callable[[Any, Any], None] | None = None
) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, **kwargs)
    if on_connect is not None:
        event.listen(engine.sync_engine, "connect", on_connect)
    return engine


def _checkpoint_threshold(directory: Path) -> int:
    """The WAL size past which SqliteRunner checkpoints: :data:`_CHECKPOINT_WAL_BYTES`, or a
    sixteenth of a smaller filesystem. On a filesystem of a few MiB the WAL would otherwise
    fill the disk before its first checkpoint, and a full disk would then keep every write
    needing more of it (the WAL starts over only after a checkpoint)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return _CHECKPOINT_WAL_BYTES
    small = max(_MIN_CHECKPOINT_WAL_BYTES, st.f_blocks * st.f_frsize // 16)
    return min(_CHECKPOINT_WAL_BYTES, small)


def _sqlite_pragmas(
    sync_mode: str,
    *,
    busy_ms: int = 30000,
    autocheckpoint: bool = True,
    wal_size_limit: int = -1,
) -> Callable[[Any, Any], None]:
    def apply(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync_mode}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        if not autocheckpoint:
            # Checkpoints sync files: SqliteRunner runs them on its thread, never inline.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            # A checkpointed WAL is cut back to this size when it starts over (SQLite keeps
            # the file at its largest otherwise); below the checkpoint threshold, so the
            # file's size tells how much the WAL holds once it passes that threshold.
            cur.execute(f"PRAGMA journal_size_limit={int(wal_size_limit)}")
        cur.close()

    return apply
