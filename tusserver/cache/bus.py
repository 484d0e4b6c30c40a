"""Invalidations on writes, in one process or between instances (see :mod:`tusserver.cache`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol, TypeVar

import structlog
from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection

from ..deadlines import close_within, terminate, within
from ..settings import DEFAULT_DATABASE_TIMEOUT
from .store import Cache, Key

__all__ = [
    "CHANNEL",
    "DEFERRED_NOTIFY",
    "Invalidator",
    "LocalBus",
    "NotifyOnly",
    "PostgresBus",
    "deferred_statement",
]

_log = structlog.get_logger("tusserver.cache")

#: The PostgreSQL channel of invalidations.
CHANNEL: Final = "tusserver_cache"

T = TypeVar("T")


class Database(Protocol):
    """What the buses need of :class:`tusserver.catalog.db.Database` (which imports this
    module's cache: the catalog depends on the cache, never the other way)."""

    @property
    def dialect(self) -> str: ...

    async def write(self, work: Callable[[Connection], T], *, quick: bool = False) -> T: ...


# --- invalidation on writes ------------------------------------------------------------------


class Invalidator(Protocol):
    """What a repository writes through: a transaction that invalidates ``keys`` on commit."""

    async def run(
        self, db: Database, work: Callable[[Connection], T], *keys: Key, quick: bool = False
    ) -> T:
        """``work`` as one unit of work (see Database.write) that invalidates ``keys``."""
        ...


def _payload(origin: str, seq: int, key: Key) -> str:
    return json.dumps([origin, seq, key[0], key[1]], separators=(",", ":"))


def _decode(payload: str) -> tuple[str, int, str, str | None] | None:
    try:
        origin, seq, ns, key = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not (isinstance(origin, str) and isinstance(seq, int) and isinstance(ns, str)):
        return None
    if key is not None and not isinstance(key, str):
        return None
    return origin, seq, ns, key


#: Set in ``Connection.info`` by a runner of units of work that sends their notifications
#: itself (:func:`deferred_statement`, before its COMMIT): a list the units' payloads go to, so
#: that a group of units sharing a transaction notifies in one statement, not one per key.
DEFERRED_NOTIFY: Final = "tusserver.cache.deferred_notify"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
_NOTIFY_ALL = text(
    "SELECT count(pg_notify(:channel, p)) FROM unnest(CAST(:payloads AS text[])) AS p"
)


def _publishing(
    work: Callable[[Connection], T], origin: str, seq: int, keys: Iterable[Key]
) -> Callable[[Connection], T]:
    """``work``, then the NOTIFY of its invalidations in the same transaction (PostgreSQL)."""
    keys = list(keys)

    def unit(conn: Connection) -> T:
        result = work(conn)
        if keys and conn.dialect.name == "postgresql":
            payloads = [_payload(origin, seq, key) for key in keys]
            deferred: list[str] | None = conn.info.get(DEFERRED_NOTIFY)
            if deferred is not None:
                deferred.extend(payloads)
            else:
                for payload in payloads:
                    conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})
        return result

    return unit


def deferred_statement(payloads: list[str]) -> tuple[TextClause, dict[str, Any]]:
    """The statement that sends the notifications deferred by the units run on a connection
    (see :data:`DEFERRED_NOTIFY`), all in one, in their order; the runner executes it inside
    the transaction that is about to commit."""
    return _NOTIFY_ALL, {"channel": CHANNEL, "payloads": payloads}


class NotifyOnly:
    """For a process without a cache (the CLI): its writes still reach every instance's."""

    def __init__(self) -> None:
        self.origin = secrets.token_hex(6)
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def run(
        self, db: Database, work: Callable[[Connection], T], *keys: Key, quick: bool = False
    ) -> T:
        return await db.write(_publishing(work, self.origin, self._next_seq(), keys), quick=quick)


class LocalBus(NotifyOnly):
    """One process (SQLite): a write drops the entries of this process's cache on commit.

    Another process writing the same SQLite file (``tusserver user disable``) cannot reach
    this cache: its changes show when the entries expire.
    """

    def __init__(self, cache: Cache) -> None:
        super().__init__()
        self.cache = cache

    @property
    def listening(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def sync(self) -> bool:
        """Every invalidation committed before this call is applied here (in-process: always)."""
        return True

    async def run(
        self, db: Database, work: Callable[[Connection], T], *keys: Key, quick: bool = False
    ) -> T:
        result = await db.write(_publishing(work, self.origin, self._next_seq(), keys), quick=quick)
        self._apply(keys)
        return result

    def _apply(self, keys: Iterable[Key], source: str = "local") -> None:
        for ns, key in keys:
            if key is None:
                self.cache.invalidate_namespace(ns, source=source)
            else:
                self.cache.invalidate(ns, key, source=source)


class PostgresBus(LocalBus):
    """Invalidations between instances: LISTEN on a dedicated asyncpg connection.

    The cache is suspended (empty, bypassed) whenever this connection is not listening: at
    start until it is, after it is lost until it is back, and when a health check or the
    echo of one of our own notifications does not come back in time.

    Every call on the connection is bounded (:mod:`tusserver.deadlines`): connecting and
    its LISTEN by ``timeout`` (``database_timeout``), a health check by ``health_timeout``,
    closing by ``timeout``. A call that gets no answer terminates the connection (never a
    cancel request it would then wait for): a server that stops answering suspends the
    cache, and the listener reconnects once it answers again.
    """

    def __init__(
        self,
        cache: Cache,
        dsn: str,
        *,
        echo_timeout: float = 1.0,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        timeout: float = DEFAULT_DATABASE_TIMEOUT,
    ) -> None:
        super().__init__(cache)
        cache.suspend()  # nothing is cached before the listener is in place
        self._dsn = dsn
        #: Seconds connecting (with the LISTEN) and closing may take.
        self.timeout = timeout
        self.echo_timeout = echo_timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._query_lock = asyncio.Lock()  # one query at a time on the listener connection
        self._closing = False
        #: Times the listener was lost (for metrics and tests).
        self.losses = 0
        #: The PostgreSQL backend pid of the listener connection, while connected.
        self.backend_pid: int | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        self._closing = False
        self.cache.suspend()
        try:
            await self._connect()
        except Exception as exc:
            _log.warning("cache listener unavailable; the cache is bypassed", error=str(exc))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn, self._conn = self._conn, None
        self.backend_pid = None
        self.cache.suspend()
        self._release_waiters()
        if conn is not None:
            await close_within(conn, conn.close, self.timeout, busy=self._query_lock.locked())

    async def _connect(self) -> None:
        import asyncpg

        loop = asyncio.get_running_loop()
        end = loop.time() + self.timeout
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self.timeout,
            server_settings={"application_name": "tusserver-cache"},
        )
        try:
            await within(end - loop.time(), conn.add_listener(CHANNEL, self._on_notify), conn)
        except BaseException:
            terminate(conn)
            raise
        conn.add_termination_listener(self._on_terminated)
        if self._closing:
            conn.terminate()
            return
        self._conn = conn
        self.backend_pid = conn.get_server_pid()
        self._lost.clear()
        # Whatever was read while we were not listening may be stale: start from empty.
        self.cache.resume()
        _log.info("cache listener connected", channel=CHANNEL)

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._drop("the cache listener connection was lost")

    def _drop(self, why: str) -> None:
        """Stop trusting the cache: empty it, bypass it, and reconnect."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self.backend_pid = None
        self.losses += 1
        self.cache.suspend()
        self._release_waiters()
        self._lost.set()
        if not conn.is_closed():
            conn.terminate()
        if not self._closing:
            _log.error(why + "; the cache is bypassed until it is back")

    def _release_waiters(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_result(None)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        decoded = _decode(payload)
        if decoded is None:
            # Not ours, or garbled: whatever it meant to invalidate, drop everything.
            _log.warning("unreadable cache invalidation; clearing the cache", size=len(payload))
            self.cache.clear()
            return
        origin, seq, ns, key = decoded
        if origin == self.origin:
            # Our own write, dropped locally at its commit: only its waiter cares.
            waiter = self._pending.get(seq)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self._apply([(ns, key)], source="remote")

    async def run(
        self, db: Database, work: Callable[[Connection], T], *keys: Key, quick: bool = False
    ) -> T:
        seq = self._next_seq()
        echo: asyncio.Future[None] | None = None
        if keys and self.listening and db.dialect == "postgresql":
            echo = asyncio.get_running_loop().create_future()
            self._pending[seq] = echo
        try:
            result = await db.write(_publishing(work, self.origin, seq, keys), quick=quick)
            self._apply(keys)
            if echo is not None:
                await self._await_echo(echo)
            return result
        finally:
            self._pending.pop(seq, None)

    async def _await_echo(self, echo: asyncio.Future[None]) -> None:
        """Wait until PostgreSQL has delivered our notification to our own listener.

        It signals every listening session before the COMMIT returns, so once ours has it the
        other instances' listeners have been signalled too, and normally served at the same
        moment: the response that follows this write leaves after the invalidation it caused
        was dispatched. No echo in time means our listener cannot be trusted: it is dropped.
        """
        try:
            await asyncio.wait_for(echo, self.echo_timeout)
        except TimeoutError:
            self._drop(
                f"no echo of our own invalidation within {self.echo_timeout:g} s "
                "(the listener may be stuck)"
            )

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                if self._conn is None:
                    delay = min(self.reconnect_delay * 2**failures, self.max_reconnect_delay)
                    await asyncio.sleep(delay)
                    try:
                        await self._connect()
                    except Exception as exc:
                        failures = min(failures + 1, 30)
                        _log.warning("cache listener reconnect failed", error=str(exc))
                        continue
                    failures = 0
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), self.health_interval)
                    continue  # lost: reconnect
                await self._health_check()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("cache listener loop error")
                await asyncio.sleep(self.max_reconnect_delay)

    async def sync(self) -> bool:
        """Return once every invalidation committed before the call has been applied here.

        One round trip on the listener connection: PostgreSQL signals the listening sessions
        before a commit returns, and a signalled session sends its pending notifications
        before the reply to its next query (asyncpg dispatches them first too). False when
        not listening, and then the cache is bypassed anyway. Costs a round trip, so
        reads do not do this; a caller that must see a write acknowledged elsewhere can.
        """
        conn = self._conn
        if conn is None:
            return False
        try:
            async with self._query_lock:
                await within(self.health_timeout, conn.fetchval("SELECT 1"), conn)
        except Exception:
            if conn is self._conn:
                self._drop("the cache listener does not answer")
            return False
        return conn is self._conn

    async def _health_check(self) -> None:
        await self.sync()
