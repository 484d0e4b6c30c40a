"""The cache itself: a bounded LRU map with a TTL per namespace (see :mod:`tusserver.cache`)."""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar, cast

import structlog

__all__ = ["ANALYTICS", "FILES", "MISSING", "USERS", "Cache", "Key", "Namespace"]

_log = structlog.get_logger("tusserver.cache")

#: Namespaces.
FILES: Final = "file"
USERS: Final = "user"
ANALYTICS: Final = "analytics"

V = TypeVar("V")
T = TypeVar("T")

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
