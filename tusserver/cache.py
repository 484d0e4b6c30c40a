"""Server-side cache of hot reads, and the bus that carries its invalidations between instances.

:class:`Cache` is a bounded (LRU) map with a TTL per namespace. What goes in it:

=============  ==========================================  ===================================
namespace      what                                        invalidated by
=============  ==========================================  ===================================
``file``       file records by id (GET /file/{id}, the     every write to the file's row
               lookup behind GET /file/{id}/content)       (FileRepository, update_file)
``user``       users by id (the gateway, every request)    UserRepository.update/revoke_tokens
``analytics``  GET /analytics reports                      the TTL only (a few seconds)
=============  ==========================================  ===================================

A write invalidates through an :class:`Invalidator`: the repository opens its transaction
with ``await invalidator.run(db, work, (namespace, key))`` (``work`` is a unit of work, see
:class:`tusserver.catalog.db.Database`). On PostgreSQL the write
also runs ``pg_notify('tusserver_cache', payload)`` inside the same transaction, so the
invalidation is delivered to every listening instance exactly when the change commits (and
not at all when it rolls back). The payload names the namespace and the key (an id), never
a value. After the commit the writing instance drops its own entry at once.

On PostgreSQL each instance listens on the channel with one dedicated asyncpg connection
(:class:`PostgresBus`). A write waits (bounded) until its own notification comes back on that
connection before it returns, so the HTTP response of a write leaves only after PostgreSQL
has dispatched the invalidation: it signals every listening session before the COMMIT
returns, and the other instances' copies normally land at the same moment as ours (on a busy
machine a few milliseconds later; :meth:`PostgresBus.sync` is the exact barrier, and the TTL
the hard bound). While the listener is not connected the cache is emptied and bypassed (an
instance that may miss invalidations must not answer from memory), and it comes back empty
once the listener is again in place.

Reads that race with writes: :meth:`Cache.token` is taken before the database read and
:meth:`Cache.put` refuses the value if the key (or its namespace, or the whole cache) was
invalidated after the token, so a value read before a commit is never stored after the
commit's invalidation.

Nothing here is module-level state: the cache and its bus belong to a Runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, cast

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import text
from sqlalchemy.engine import Connection

__all__ = [
    "ANALYTICS",
    "CHANNEL",
    "FILES",
    "MISSING",
    "USERS",
    "Cache",
    "CacheCollector",
    "Invalidator",
    "LocalBus",
    "Namespace",
    "NotifyOnly",
    "PostgresBus",
]

_log = structlog.get_logger("tusserver.cache")

#: The PostgreSQL channel of invalidations.
CHANNEL: Final = "tusserver_cache"
#: Namespaces.
FILES: Final = "file"
USERS: Final = "user"
ANALYTICS: Final = "analytics"

V = TypeVar("V")
T = TypeVar("T")


class Database(Protocol):
    """What the buses need of :class:`tusserver.catalog.db.Database` (which imports this
    module's cache: the catalog depends on the cache, never the other way)."""

    @property
    def dialect(self) -> str: ...

    async def write(self, work: Callable[[Connection], T], *, quick: bool = False) -> T: ...


#: (namespace, key); a key of None stands for the whole namespace.
Key = tuple[str, str | None]


class _Missing(enum.Enum):
    MISSING = "MISSING"


#: What :meth:`Cache.get` returns when it has nothing (values themselves may be None).
MISSING: Final = _Missing.MISSING


@dataclass(frozen=True, slots=True)
class Namespace(Generic[V]):
    """A typed part of the cache: its name, how long its entries live (0: not cached) and,
    for namespaces of large values, how many of them it may hold at most."""

    name: str
    ttl: float
    max_entries: int | None = None


class _Entry:
    __slots__ = ("expires", "used", "value")

    def __init__(self, expires: float, used: int, value: Any) -> None:
        self.expires = expires
        self.used = used  # the cache's tick at the last put or hit: the global LRU order
        self.value = value


class Cache:
    """A bounded LRU map of ``(namespace, key) -> value`` with a TTL per namespace.

    ``max_entries`` bounds all namespaces together, evicting the least recently used entry
    of any namespace; a namespace may also have a bound of its own
    (``Namespace.max_entries``), which evicts within it. ``enabled=False`` (``cache_ttl = 0``)
    makes every lookup a miss and every put a no-op. :meth:`suspend` does the same at run
    time (the invalidation listener is down), counting the lookups it turns away as
    *bypassed*; :meth:`resume` starts again from empty.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        max_tombstones: int = 4096,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.enabled = enabled
        self._clock = clock
        # One LRU-ordered map per namespace; the ticks order entries across namespaces.
        self._spaces: dict[str, OrderedDict[str, _Entry]] = {}
        self._size = 0
        self._tick = 0
        self._suspended = False
        # Invalidation sequence: every invalidation takes the next number; a put carrying the
        # token of an earlier moment is refused if its key was invalidated since.
        self._seq = 0
        self._cleared_at = 0
        self._namespace_cleared: dict[str, int] = {}
        self._tombstones: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._max_tombstones = max_tombstones
        self._forgotten = 0  # the newest tombstone dropped from the bounded map
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self.bypassed: dict[str, int] = {}
        self.evictions = 0
        self.refused = 0
        self.invalidations: dict[str, int] = {"local": 0, "remote": 0}

    # --- reading ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether lookups may be answered from memory now."""
        return self.enabled and not self._suspended

    def __len__(self) -> int:
        return self._size

    def get(self, ns: Namespace[V], key: str) -> V | Literal[_Missing.MISSING]:
        if not self.enabled or ns.ttl <= 0:
            return MISSING
        if self._suspended:
            _bump(self.bypassed, ns.name)
            return MISSING
        space = self._spaces.get(ns.name)
        entry = space.get(key) if space is not None else None
        if space is not None and entry is not None:
            if self._clock() < entry.expires:
                space.move_to_end(key)
                self._tick += 1
                entry.used = self._tick
                _bump(self.hits, ns.name)
                return cast(V, entry.value)
            del space[key]
            self._size -= 1
        _bump(self.misses, ns.name)
        return MISSING

    def peek(self, ns: Namespace[V], key: str) -> V | Literal[_Missing.MISSING]:
        """What is stored for ``key`` now, without counting a lookup or refreshing its age."""
        space = self._spaces.get(ns.name) if self.active else None
        entry = space.get(key) if space is not None else None
        if entry is None or self._clock() >= entry.expires:
            return MISSING
        return cast(V, entry.value)

    def token(self) -> int:
        """Take before reading the database; give to :meth:`put` with what was read."""
        return self._seq

    def put(self, ns: Namespace[V], key: str, value: V, *, token: int | None = None) -> bool:
        """Store ``value``; False if caching is off or ``key`` was invalidated since ``token``."""
        if not self.active or ns.ttl <= 0:
            return False
        if token is not None and self._invalidated_since((ns.name, key), token):
            self.refused += 1
            return False
        space = self._spaces.setdefault(ns.name, OrderedDict())
        if key in space:
            del space[key]
            self._size -= 1
        self._tick += 1
        space[key] = _Entry(self._clock() + ns.ttl, self._tick, value)
        self._size += 1
        if ns.max_entries is not None and len(space) > ns.max_entries:
            space.popitem(last=False)
            self._size -= 1
            self.evictions += 1
        while self._size > self.max_entries:
            self._evict_oldest()
        return True

    def _evict_oldest(self) -> None:
        """Drop the least recently used entry of all: the oldest head of the namespaces."""
        oldest: OrderedDict[str, _Entry] | None = None
        oldest_used = 0
        for space in self._spaces.values():
            if space:
                head = space[next(iter(space))]
                if oldest is None or head.used < oldest_used:
                    oldest, oldest_used = space, head.used
        assert oldest is not None
        oldest.popitem(last=False)
        self._size -= 1
        self.evictions += 1

    async def fetch(
        self,
        ns: Namespace[V],
        key: str,
        load: Callable[[], Awaitable[V]],
        *,
        keep: Callable[[V], bool] | None = None,
    ) -> V:
        """The cached value, or ``load()``'s (stored unless ``keep`` says otherwise)."""
        hit = self.get(ns, key)
        if hit is not MISSING:
            return hit
        token = self.token()
        value = await load()
        if keep is None or keep(value):
            self.put(ns, key, value, token=token)
        return value

    # --- invalidation -----------------------------------------------------------------------

    def invalidate(self, ns: Namespace[Any] | str, key: str, *, source: str = "local") -> None:
        name = ns if isinstance(ns, str) else ns.name
        slot = (name, key)
        self._seq += 1
        space = self._spaces.get(name)
        if space is not None and space.pop(key, None) is not None:
            self._size -= 1
        self._tombstones[slot] = self._seq
        self._tombstones.move_to_end(slot)
        while len(self._tombstones) > self._max_tombstones:
            _, seq = self._tombstones.popitem(last=False)
            self._forgotten = max(self._forgotten, seq)
        self._count_invalidation(source)

    def invalidate_namespace(self, ns: Namespace[Any] | str, *, source: str = "local") -> None:
        name = ns if isinstance(ns, str) else ns.name
        self._seq += 1
        self._namespace_cleared[name] = self._seq
        space = self._spaces.pop(name, None)
        if space is not None:
            self._size -= len(space)
        self._count_invalidation(source)

    def clear(self) -> None:
        self._seq += 1
        self._cleared_at = self._seq
        self._spaces.clear()
        self._size = 0
        self._tombstones.clear()
        self._forgotten = self._seq

    def suspend(self) -> None:
        """Empty the cache and bypass it until :meth:`resume` (invalidations may be missed)."""
        self._suspended = True
        self.clear()

    def resume(self) -> None:
        """Use the cache again, from empty (and refuse values read before this moment)."""
        self.clear()
        self._suspended = False

    def _invalidated_since(self, slot: tuple[str, str], token: int) -> bool:
        return (
            self._cleared_at > token
            or self._forgotten > token
            or self._namespace_cleared.get(slot[0], 0) > token
            or self._tombstones.get(slot, 0) > token
        )

    def _count_invalidation(self, source: str) -> None:
        self.invalidations[source] = self.invalidations.get(source, 0) + 1


def _bump(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


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


def _publishing(
    work: Callable[[Connection], T], origin: str, seq: int, keys: Iterable[Key]
) -> Callable[[Connection], T]:
    """``work``, then the NOTIFY of its invalidations in the same transaction (PostgreSQL)."""
    keys = list(keys)

    def unit(conn: Connection) -> T:
        result = work(conn)
        if conn.dialect.name == "postgresql":
            for key in keys:
                conn.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": _payload(origin, seq, key)},
                )
        return result

    return unit


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
    ) -> None:
        super().__init__(cache)
        cache.suspend()  # nothing is cached before the listener is in place
        self._dsn = dsn
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
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": "tusserver-cache"}
        )
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
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
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self.health_timeout)
        except Exception:
            if conn is self._conn:
                self._drop("the cache listener does not answer")
            return False
        return conn is self._conn

    async def _health_check(self) -> None:
        await self.sync()


class CacheCollector:
    """The cache's counters for the app's Prometheus registry (read at scrape time)."""

    def __init__(self, cache: Cache, bus: LocalBus) -> None:
        self._cache = cache
        self._bus = bus

    def collect(self) -> Iterable[Metric]:
        c = self._cache
        for name, helptext, counts in (
            ("tusserver_cache_hits", "Lookups answered from the cache", c.hits),
            ("tusserver_cache_misses", "Lookups that went to the database", c.misses),
            (
                "tusserver_cache_bypassed",
                "Lookups that skipped the cache while invalidations could be missed",
                c.bypassed,
            ),
        ):
            family = CounterMetricFamily(name, helptext, labels=["namespace"])
            for namespace, value in sorted(counts.items()):
                family.add_metric([namespace], value)
            yield family
        inv = CounterMetricFamily(
            "tusserver_cache_invalidations", "Invalidations applied", labels=["source"]
        )
        for source, value in sorted(c.invalidations.items()):
            inv.add_metric([source], value)
        yield inv
        yield CounterMetricFamily(
            "tusserver_cache_evictions", "Entries evicted by the size bound", value=c.evictions
        )
        yield GaugeMetricFamily("tusserver_cache_entries", "Entries in the cache", value=len(c))
        yield GaugeMetricFamily(
            "tusserver_cache_listening",
            "1 while invalidations from other instances are received (always 1 on SQLite)",
            value=1 if self._bus.listening else 0,
        )
        losses = self._bus.losses if isinstance(self._bus, PostgresBus) else 0
        yield CounterMetricFamily(
            "tusserver_cache_listener_losses",
            "Times the invalidation listener was lost",
            value=losses,
        )
