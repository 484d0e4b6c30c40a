"""Token-bucket rate limits, in memory for one instance or in PostgreSQL for many.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; taking ``cost``
tokens either succeeds or tells how long to wait. With several instances the buckets live in
PostgreSQL and are updated by one atomic statement, so a limit holds across all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection

from tusserver.catalog.db import Database

__all__ = ["Decision", "MemoryRateLimiter", "PostgresRateLimiter", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float = 0.0


class RateLimiter(Protocol):
    async def take(
        self,
        key: str,
        *,
        rate: float,
        burst: float,
        cost: float = 1.0,
        require: float | None = None,
        force: bool = False,
        overdraw: bool = False,
    ) -> Decision:
        """Take ``cost`` tokens from the bucket ``key`` if ``max(cost, require)`` are there.

        ``force``: take them anyway, into debt if need be (a cost known only afterwards,
        such as the bytes of a body without Content-Length); later takes wait for the debt.
        ``overdraw``: take them, into debt if need be, if ``require`` are there (a cost
        bigger than the burst, paid off before the next take).
        """


class MemoryRateLimiter:
    """Buckets in process memory: exact for a single instance.

    At most ``max_keys`` buckets are kept, in the order they were last used: a new key
    beyond that forgets the least recently used one (whose debt, if it had one, is forgiven).
    A bucket being hammered stays, however many other keys a client makes up; and a refused
    take of a key not kept yet stores nothing (its bucket is full, as a new one would be).
    """

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys
        self._lock = asyncio.Lock()

    async def take(
        self,
        key: str,
        *,
        rate: float,
        burst: float,
        cost: float = 1.0,
        require: float | None = None,
        force: bool = False,
        overdraw: bool = False,
    ) -> Decision:
        now = time.monotonic()
        needed = (require or 0.0) if overdraw else max(cost, require or 0.0)
        tokens, updated = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - updated) * rate)
        if force or tokens >= needed:
            self._store(key, tokens - cost, now)
            return Decision(True)
        if key in self._buckets:
            self._store(key, tokens, now)
        return Decision(False, (needed - tokens) / rate if rate > 0 else math.inf)

    def _store(self, key: str, tokens: float, now: float) -> None:
        buckets = self._buckets
        if key in buckets:
            buckets.move_to_end(key)
        elif len(buckets) >= self._max_keys:
            buckets.popitem(last=False)
        buckets[key] = (tokens, now)


_ENSURE_BUCKET = text(
    "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (:k, :t, :u) "
    "ON CONFLICT (key) DO NOTHING"
)
_LOCK_BUCKET = text("SELECT tokens, updated_at FROM rate_buckets WHERE key = :k FOR UPDATE")
_SET_BUCKET = text("UPDATE rate_buckets SET tokens = :t, updated_at = :u WHERE key = :k")


class PostgresRateLimiter:
    """Buckets in PostgreSQL: one atomic upsert per decision, shared by all instances.

    Each decision is a unit of work of the catalog (:meth:`Database.write`), so it has the
    catalog's deadline: a PostgreSQL that stops answering fails it with
    ``CatalogUnavailable`` instead of holding the request."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def take(
        self,
        key: str,
        *,
        rate: float,
        burst: float,
        cost: float = 1.0,
        require: float | None = None,
        force: bool = False,
        overdraw: bool = False,
    ) -> Decision:
        now = time.time()
        needed = (require or 0.0) if overdraw else max(cost, require or 0.0)
        # A digest: fixed length, and no byte of a client's value (NUL included) reaches SQL.
        key = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

        def work(conn: Connection) -> tuple[bool, float]:
            # Make sure the row exists, then lock it: concurrent takers serialize on it.
            conn.execute(_ENSURE_BUCKET, {"k": key, "t": burst, "u": now})
            row = conn.execute(_LOCK_BUCKET, {"k": key}).one()
            available = min(burst, row[0] + max(0.0, now - row[1]) * rate)
            allowed = force or available >= needed
            remaining = available - cost if allowed else available
            conn.execute(_SET_BUCKET, {"k": key, "t": remaining, "u": now})
            return allowed, available

        allowed, available = await self._db.write(work)
        if allowed:
            return Decision(True)
        return Decision(False, (needed - available) / rate if rate > 0 else math.inf)
