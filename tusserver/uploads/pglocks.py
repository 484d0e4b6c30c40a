"""Upload locks shared by many instances: PostgreSQL session-level advisory locks.

Each instance keeps one dedicated connection for its locks. Within the instance an
:class:`InProcessLocker` orders requests (advisory locks are re-entrant per session, so they
cannot exclude two requests of the same instance); across instances the advisory lock does.
Lock breaking works across instances too: a request that finds the upload held elsewhere
sends ``NOTIFY tusserver_release, '<upload id>'``; the holding instance asks its request to
let go. If the lock connection dies, PostgreSQL releases every lock of this instance, so this
instance immediately asks all its holders to stop writing, and reconnects.
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

from ..errors import LockTimeout, ServiceUnavailable
from .locks import InProcessLocker, ReleaseCallback

__all__ = ["PostgresLocker", "advisory_key"]

_log = structlog.get_logger("tusserver.locks")
CHANNEL = "tusserver_release"
_POLL = 0.05


def advisory_key(upload_id: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, from the upload id."""
    return int.from_bytes(hashlib.sha256(upload_id.encode()).digest()[:8], "big", signed=True)


class PostgresLocker:
    def __init__(
        self,
        dsn: str,
        *,
        timeout: float,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._observe = observe_wait
        self._local = InProcessLocker(timeout=timeout)
        self._conn: Any = None
        self._conn_lock = asyncio.Lock()
        self._held: dict[str, ReleaseCallback | None] = {}
        self._closing = False

    async def open(self) -> None:
        await self._connection()

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ServiceUnavailable(f"the lock database is unreachable: {exc}") from exc
        await conn.add_listener(CHANNEL, self._on_notify)
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
        async with self._conn_lock:
            conn = await self._connection()
            try:
                return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise ServiceUnavailable(f"the lock database failed: {exc}") from exc

    async def _unlock(self, key: int) -> None:
        async with self._conn_lock:
            if self._conn is None or self._conn.is_closed():
                return  # the session is gone, and its locks with it
            with contextlib.suppress(Exception):
                await self._conn.fetchval("SELECT pg_advisory_unlock($1)", key)

    async def _notify(self, upload_id: str) -> None:
        async with self._conn_lock:
            conn = await self._connection()
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, upload_id)

    @contextlib.asynccontextmanager
    async def lock(
        self, upload_id: str, *, on_release: ReleaseCallback | None = None
    ) -> AsyncIterator[None]:
        started = time.monotonic()
        async with self._local.lock(upload_id, on_release=on_release):
            key = advisory_key(upload_id)
            deadline = started + self._timeout
            asked = False
            while not await self._try_lock(key):
                if not asked:
                    await self._notify(upload_id)
                    asked = True
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
                await self._unlock(key)
