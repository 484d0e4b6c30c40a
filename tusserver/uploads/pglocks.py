"""Upload locks shared by many instances: PostgreSQL session-level advisory locks.

Each instance keeps one dedicated connection for its locks. Within the instance an
:class:`InProcessLocker` orders requests (advisory locks are re-entrant per session, so they
cannot exclude two requests of the same instance); across instances the advisory lock does.
Lock breaking works across instances too: a request that finds the upload held elsewhere
sends ``NOTIFY tusserver_release, '<upload id>'`` (again every half second while it waits);
the holding instance asks its request to let go. If the lock connection dies, PostgreSQL
releases every lock of this instance, so this instance immediately asks all its holders to
stop writing, and reconnects.

The connection carries one statement at a time, so the lock and unlock calls of concurrent
requests are grouped: the calls made while a round trip is out go together in the next one,
as one statement over arrays, in the order they were made. Under load that is one round trip
for many requests instead of two each, on a connection every request of the instance waits
for. A lock granted to a request that gave up meanwhile is released at once.

Every call on the connection is bounded by ``database_timeout`` (:mod:`tusserver.deadlines`):
a round trip (with the connection and its LISTEN, when one is made for it) that gets no answer
in time terminates the connection, which ends the session and with it this instance's locks
(on the server, once it sees the socket closed), so the holders are asked to let go as for a
lost connection. Its lock calls fail with :class:`~tusserver.errors.CatalogUnavailable` (503
with Retry-After); the next call makes a new connection. A request waits for its unlock's
answer :data:`_UNLOCK_WAIT_S` at most: an unlock that gets none ends the session, which
releases the lock all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import structlog

from ..deadlines import NoAnswer, close_within, terminate, within
from ..errors import CatalogUnavailable, LockTimeout, ServiceUnavailable
from ..futures import settle
from ..settings import DEFAULT_DATABASE_TIMEOUT
from .locks import InProcessLocker, ReleaseCallback

__all__ = ["PostgresLocker", "advisory_key"]

_log = structlog.get_logger("tusserver.locks")
CHANNEL = "tusserver_release"
_POLL = 0.05
#: A request leaving an upload waits this long at most for its unlock's answer (normally a
#: round trip of a millisecond): the unlock stays queued in order, and one that gets no
#: answer ends the session (its deadline), which releases the lock all the same.
_UNLOCK_WAIT_S = 1.0
#: A request waiting for an upload held by another instance asks the holder to let go this
#: often (the first time at once): a release request that reaches the holder's instance
#: between the grant of its lock and the holder's record is not acted on.
_ASK_AGAIN_S = 0.5
#: Retry-After (seconds) of a call the lock database did not answer.
_RETRY_AFTER = "5"
#: The lock (``take``) and unlock calls of one round trip, in the order they were made (the
#: rows of a function scan over ``unnest`` come in the arrays' order).
_ADVISORY_CALLS = (
    "SELECT CASE WHEN c.take THEN pg_try_advisory_lock(c.key)"
    " ELSE pg_advisory_unlock(c.key) END"
    " FROM unnest($1::bigint[], $2::boolean[]) WITH ORDINALITY AS c(key, take, n)"
    " ORDER BY c.n"
)

#: One queued call: lock (True) or unlock (False), the key, and who waits for its outcome.
_Call = tuple[bool, int, "asyncio.Future[bool]"]


def advisory_key(upload_id: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, from the upload id."""
    return int.from_bytes(hashlib.sha256(upload_id.encode()).digest()[:8], "big", signed=True)


class PostgresLocker:
    def __init__(
        self,
        dsn: str,
        *,
        timeout: float,
        database_timeout: float = DEFAULT_DATABASE_TIMEOUT,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        """``timeout``: how long a request waits for an upload held elsewhere;
        ``database_timeout``: how long one round trip to the lock database may take."""
        self._dsn = dsn
        self._timeout = timeout
        self._database_timeout = database_timeout
        self._observe = observe_wait
        self._local = InProcessLocker(timeout=timeout)
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._held: dict[str, ReleaseCallback | None] = {}
        self._closing = False
        self._calls: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        #: Lock-break requests on their way (kept referenced; see _notify).
        self._notifying: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        await self._connection(self._database_timeout)

    async def close(self) -> None:
        self._closing = True
        if self._sender is not None:  # the calls already made are answered first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._sender), 5)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            busy = self._conn_lock.locked()  # (a round trip outlived the wait above)
            await close_within(conn, conn.close, self._database_timeout, busy=busy)

    async def _connection(self, seconds: float) -> Any:
        """The lock connection, made (with its LISTEN) within ``seconds`` if there is none."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self._closing:
            raise ServiceUnavailable(
                "the server is stopping", headers={"Retry-After": _RETRY_AFTER}
            )
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        try:
            conn = await asyncpg.connect(self._dsn, timeout=max(seconds, 0.001))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise _unavailable(f"the lock database is unreachable: {exc}") from exc
        try:
            await within(end - loop.time(), conn.add_listener(CHANNEL, self._on_notify), conn)
        except BaseException as exc:
            terminate(conn)
            if isinstance(exc, NoAnswer | OSError | asyncpg.PostgresError):
                raise _unavailable(f"the lock database is unreachable: {exc}") from exc
            raise
        conn.add_termination_listener(self._on_lost)
        self._conn = conn
        return conn

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload in self._held:
            callback = self._held[payload]
            if callback is not None:
                callback()

    def _on_lost(self, _conn: Any) -> None:
        if self._closing:
            return
        # Our advisory locks are gone with the session: nobody may keep writing under them.
        _log.error("lock connection lost; interrupting writers", held=len(self._held))
        self._conn = None
        for callback in list(self._held.values()):
            if callback is not None:
                callback()

    async def _try_lock(self, key: int) -> bool:
        call = self._call(True, key)
        try:
            return await call
        except asyncio.CancelledError:
            # Answered, but its request was cancelled before it could take the lock: given
            # back. (A call cancelled before its answer is given back when that comes.)
            if call.done() and not call.cancelled() and call.exception() is None and call.result():
                self._give_back(key)
            raise

    async def _unlock(self, key: int) -> None:
        await self._call(False, key)

    def _give_back(self, key: int) -> None:
        """Unlock a lock that nobody holds, before any call made since."""
        self._calls.insert(0, (False, key, asyncio.get_running_loop().create_future()))
        self._start_sending()

    def _call(self, take: bool, key: int) -> asyncio.Future[bool]:
        """Queue a lock (``take``) or unlock call for the next round trip. A lock's future
        fails with :class:`CatalogUnavailable` if the lock database does; an unlock's is
        False then (the session, and its locks, are gone)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._calls.append((take, key, future))
        self._start_sending()
        return future

    def _start_sending(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_calls())

    async def _send_calls(self) -> None:
        calls: list[_Call] = []
        try:
            while self._calls:
                calls, self._calls = self._calls, []
                async with self._conn_lock:
                    await self._round_trip(calls)
                calls = []
        except BaseException as exc:
            # (Cancelled at the loop's end, say: no caller is left waiting.)
            _fail([*calls, *self._calls], _unavailable(f"the lock database failed: {exc!r}"))
            self._calls = []
            raise
        finally:
            self._sender = None

    async def _round_trip(self, calls: list[_Call]) -> None:
        # A lock whose caller gave up before it was sent is not taken.
        calls = [c for c in calls if not (c[0] and c[2].done())]
        if self._conn is None or self._conn.is_closed():
            # The session is gone, and its locks with it: nothing to unlock.
            for take, _key, future in calls:
                if not take:
                    settle(future, True, False)
            calls = [c for c in calls if c[0]]
        if not calls:
            return
        # One deadline for the round trip, a new connection included.
        deadline = asyncio.get_running_loop().time() + self._database_timeout
        try:
            conn = await self._connection(self._database_timeout)
        except ServiceUnavailable as exc:
            _fail(calls, exc)
            return
        left = deadline - asyncio.get_running_loop().time()
        try:
            rows = await within(
                left,
                conn.fetch(_ADVISORY_CALLS, [c[1] for c in calls], [c[0] for c in calls]),
                conn,
            )
        except Exception as exc:
            # Some of the calls may have taken effect before the one that failed (a
            # session's advisory locks outlive the statement): the session is ended, which
            # releases all its locks, and their holders are told (_on_lost). (A deadline
            # that passed has terminated it already.)
            terminate(conn)
            _fail(calls, _unavailable(f"the lock database failed: {exc}"))
            return
        for (take, key, future), row in zip(calls, rows, strict=True):
            granted = bool(row[0])
            if take and granted and future.done():  # its caller gave up meanwhile
                self._give_back(key)
            settle(future, True, granted)

    async def _notify(self, upload_id: str) -> None:
        """Ask the instance holding ``upload_id`` to let go (``NOTIFY``).

        The round trip goes on without the caller if the caller gives up (a cancelled
        request): a call cancelled on the lock connection terminates it (see
        :func:`~tusserver.deadlines.within`), and that would end this instance's lock
        session, releasing every lock it holds while their writers still write. Only its
        deadline ends it early."""
        task = asyncio.ensure_future(self._send_notify(upload_id))
        self._notifying.add(task)
        task.add_done_callback(self._notify_done)
        await asyncio.shield(task)

    def _notify_done(self, task: asyncio.Task[None]) -> None:
        self._notifying.discard(task)
        if not task.cancelled():
            task.exception()  # (seen: a caller that gave up is not there to see it)

    async def _send_notify(self, upload_id: str) -> None:
        async with self._conn_lock:
            conn = await self._connection(self._database_timeout)
            with contextlib.suppress(Exception):
                await within(
                    self._database_timeout,
                    conn.execute("SELECT pg_notify($1, $2)", CHANNEL, upload_id),
                    conn,
                )

    @contextlib.asynccontextmanager
    async def lock(
        self,
        upload_id: str,
        *,
        on_release: ReleaseCallback | None = None,
        take_over: bool = True,
    ) -> AsyncIterator[None]:
        started = time.monotonic()
        async with self._local.lock(upload_id, on_release=on_release, take_over=take_over):
            key = advisory_key(upload_id)
            deadline = started + self._timeout
            asked_at: float | None = None
            while not await self._try_lock(key):
                if not take_over:
                    raise LockTimeout("the upload is in use", headers={"Retry-After": "1"})
                if asked_at is None or time.monotonic() - asked_at >= _ASK_AGAIN_S:
                    # Asked again while it waits: a holder whose lock was granted as the
                    # request came has not recorded itself yet and misses it (the grant's
                    # answer and the notification arrive together), and the holder may
                    # have changed since (as within one instance, each one is asked).
                    await self._notify(upload_id)
                    asked_at = time.monotonic()
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        "the upload is in use by another request; try again shortly",
                        headers={"Retry-After": "1"},
                    )
                await asyncio.sleep(_POLL)
            if self._observe is not None:
                self._observe(time.monotonic() - started)
            self._held[upload_id] = on_release
            try:
                yield
            finally:
                self._held.pop(upload_id, None)
                unlock = self._call(False, key)
                # (Its answer never fails, see _call; a wait cut short leaves it queued.)
                await asyncio.wait([unlock], timeout=_UNLOCK_WAIT_S)


def _unavailable(message: str) -> CatalogUnavailable:
    return CatalogUnavailable(message, headers={"Retry-After": _RETRY_AFTER})


def _fail(calls: list[_Call], error: ServiceUnavailable) -> None:
    """The calls could not be made: locks fail with ``error`` (a copy each), unlocks are done
    (nobody waits on an unlock's error: if it was not made, its session is being ended)."""
    for take, _key, future in calls:
        if take:
            settle(future, False, type(error)(error.message, headers=error.headers))
        else:
            settle(future, True, False)
