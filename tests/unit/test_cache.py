"""Unit tests of tusserver.cache: TTL per namespace (injected clock), the LRU bound,
invalidation (including reads racing with writes), suspension, the payload and the metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tusserver.cache import (
    MISSING,
    Cache,
    CacheCollector,
    LocalBus,
    Namespace,
)
from tusserver.cache.bus import _decode, _payload
from tusserver.catalog.db import create_database

FILES: Namespace[str] = Namespace("file", 30.0)
USERS: Namespace[str | None] = Namespace("user", 5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    max_entries: int = 100, *, enabled: bool = True, max_tombstones: int = 4096
) -> tuple[Cache, Clock]:
    clock = Clock()
    cache = Cache(
        max_entries=max_entries, enabled=enabled, clock=clock, max_tombstones=max_tombstones
    )
    return cache, clock


def test_get_put_and_counters() -> None:
    cache, _ = make()
    assert cache.get(FILES, "a") is MISSING
    assert cache.put(FILES, "a", "A")
    assert cache.get(FILES, "a") == "A"
    assert cache.get(FILES, "b") is MISSING
    assert cache.hits == {"file": 1}
    assert cache.misses == {"file": 2}
    # None is a value like any other (a user that does not exist)
    cache.put(USERS, "ghost", None)
    assert cache.get(USERS, "ghost") is None
    # the same key in two namespaces: two entries
    cache.put(USERS, "a", "user a")
    assert (cache.get(FILES, "a"), cache.get(USERS, "a")) == ("A", "user a")


def test_ttl_per_namespace_with_injected_clock() -> None:
    cache, clock = make()
    cache.put(FILES, "f", "F")  # 30 s
    cache.put(USERS, "u", "U")  # 5 s
    clock.now += 4.999
    assert cache.get(USERS, "u") == "U"
    clock.now += 0.001  # exactly 5 s: expired
    assert cache.get(USERS, "u") is MISSING
    assert cache.get(FILES, "f") == "F"
    clock.now += 25.0
    assert cache.get(FILES, "f") is MISSING
    assert len(cache) == 0  # expired entries are dropped when met
    # a hit does not extend the lifetime; a new put does
    cache.put(USERS, "u", "U1")
    clock.now += 3
    assert cache.get(USERS, "u") == "U1"
    clock.now += 3
    assert cache.get(USERS, "u") is MISSING


def test_zero_ttl_namespace_and_disabled_cache_store_nothing() -> None:
    cache, _ = make()
    off: Namespace[str] = Namespace("analytics", 0)
    assert not cache.put(off, "k", "v")
    assert cache.get(off, "k") is MISSING
    disabled, _ = make(enabled=False)
    assert not disabled.put(FILES, "a", "A")
    assert disabled.get(FILES, "a") is MISSING
    assert not disabled.active
    assert disabled.hits == disabled.misses == {}


def test_lru_bound_evicts_the_least_recently_used() -> None:
    cache, _ = make(max_entries=3)
    for k in "abc":
        cache.put(FILES, k, k.upper())
    assert cache.get(FILES, "a") == "A"  # a is now the most recently used
    cache.put(FILES, "d", "D")  # evicts b
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.get(FILES, "b") is MISSING
    assert [cache.get(FILES, k) for k in "acd"] == ["A", "C", "D"]
    cache.put(FILES, "c", "C2")  # an update refreshes c's place, evicts nothing
    assert cache.evictions == 1
    cache.put(FILES, "e", "E")  # evicts a (c, d used later)
    assert cache.get(FILES, "a") is MISSING
    assert cache.get(FILES, "c") == "C2"
    with pytest.raises(ValueError):
        Cache(max_entries=0)


def test_lru_order_spans_namespaces() -> None:
    cache, _ = make(max_entries=3)
    cache.put(FILES, "a", "A")
    cache.put(USERS, "u", "U")
    cache.put(FILES, "b", "B")
    assert cache.get(FILES, "a") == "A"  # now u is the least recently used of all
    cache.put(USERS, "v", "V")
    assert cache.peek(USERS, "u") is MISSING
    assert [cache.peek(FILES, "a"), cache.peek(FILES, "b"), cache.peek(USERS, "v")] == [
        "A",
        "B",
        "V",
    ]
    assert cache.evictions == 1


def test_a_namespace_bound_evicts_within_the_namespace() -> None:
    cache, _ = make(max_entries=10)
    reports: Namespace[str] = Namespace("analytics", 5.0, max_entries=2)
    cache.put(FILES, "f", "F")
    for k in "abc":
        cache.put(reports, k, k)
    assert cache.peek(reports, "a") is MISSING  # only the namespace's oldest goes
    assert (cache.peek(reports, "b"), cache.peek(reports, "c")) == ("b", "c")
    assert cache.peek(FILES, "f") == "F"
    assert len(cache) == 3
    assert cache.evictions == 1


def test_invalidate_namespace_and_clear() -> None:
    cache, _ = make()
    cache.put(FILES, "a", "A")
    cache.put(FILES, "b", "B")
    cache.put(USERS, "a", "UA")
    cache.invalidate(FILES, "a")
    assert cache.get(FILES, "a") is MISSING
    assert cache.get(FILES, "b") == "B"
    cache.invalidate("user", "a", source="remote")  # by name, as a notification names it
    assert cache.get(USERS, "a") is MISSING
    cache.put(USERS, "a", "UA")
    cache.invalidate_namespace(FILES)
    assert cache.get(FILES, "b") is MISSING
    assert cache.get(USERS, "a") == "UA"
    cache.clear()
    assert len(cache) == 0
    assert cache.invalidations == {"local": 2, "remote": 1}


def test_a_read_older_than_an_invalidation_is_not_stored() -> None:
    cache, _ = make()
    # token, then the write's invalidation, then the (old) value arrives: refused
    token = cache.token()
    cache.invalidate(FILES, "a")
    assert not cache.put(FILES, "a", "old", token=token)
    assert cache.get(FILES, "a") is MISSING
    assert cache.refused == 1
    # an invalidation of another key does not matter
    token = cache.token()
    cache.invalidate(FILES, "other")
    assert cache.put(FILES, "a", "fresh", token=token)
    # an invalidation before the token does not matter either
    cache.invalidate(FILES, "b")
    token = cache.token()
    assert cache.put(FILES, "b", "B", token=token)
    # a namespace invalidation or a clear since the token: refused
    for drop in (lambda: cache.invalidate_namespace(FILES), cache.clear):
        token = cache.token()
        drop()
        assert not cache.put(FILES, "c", "C", token=token)


def test_tombstone_overflow_refuses_conservatively() -> None:
    cache, _ = make(max_tombstones=4)
    token = cache.token()
    for i in range(10):  # more invalidations than remembered while "a" is being read
        cache.invalidate(FILES, f"k{i}")
    assert not cache.put(FILES, "a", "A", token=token)
    assert cache.put(FILES, "a", "A", token=cache.token())


async def test_fetch_loads_once_and_keep_decides() -> None:
    cache, _ = make()
    calls: list[str] = []

    async def load() -> str | None:
        calls.append("x")
        return None if len(calls) < 3 else "found"

    ns: Namespace[str | None] = Namespace("file", 30)
    keep = lambda v: v is not None  # noqa: E731
    assert await cache.fetch(ns, "a", load, keep=keep) is None
    assert await cache.fetch(ns, "a", load, keep=keep) is None  # a miss is not kept
    assert await cache.fetch(ns, "a", load, keep=keep) == "found"
    assert await cache.fetch(ns, "a", load, keep=keep) == "found"  # from the cache
    assert len(calls) == 3


async def test_fetch_racing_an_invalidation_keeps_nothing() -> None:
    cache, _ = make()

    async def load_then_write() -> str:
        cache.invalidate(FILES, "a")  # the write commits while the read is in flight
        return "stale"

    assert await cache.fetch(FILES, "a", load_then_write) == "stale"  # answered, not kept
    assert cache.get(FILES, "a") is MISSING


def test_suspend_bypasses_and_resume_starts_empty() -> None:
    cache, _ = make()
    cache.put(FILES, "a", "A")
    token = cache.token()
    cache.suspend()
    assert not cache.active
    assert len(cache) == 0
    assert cache.get(FILES, "a") is MISSING
    assert not cache.put(FILES, "a", "A")
    assert cache.bypassed == {"file": 1}
    assert cache.misses == {}
    cache.resume()
    # a value read before the listener was back may have missed an invalidation
    assert not cache.put(FILES, "a", "A", token=token)
    assert cache.put(FILES, "a", "A", token=cache.token())
    assert cache.get(FILES, "a") == "A"


def test_peek_counts_nothing() -> None:
    cache, clock = make()
    cache.put(FILES, "a", "A")
    assert cache.peek(FILES, "a") == "A"
    assert cache.peek(FILES, "b") is MISSING
    clock.now += 31
    assert cache.peek(FILES, "a") is MISSING
    assert cache.hits == cache.misses == {}


def test_payload_round_trip_and_garbage() -> None:
    assert _decode(_payload("o1", 7, ("file", "ab" * 16))) == ("o1", 7, "file", "ab" * 16)
    assert _decode(_payload("o1", 8, ("file", None))) == ("o1", 8, "file", None)
    assert len(_payload("0" * 12, 2**40, ("user", "f" * 64))) < 120  # small, ids only
    for bad in ("", "x", "[1,2]", '["o", "1", "file", "k"]', '["o", 1, "file", 5]', "{}"):
        assert _decode(bad) is None


def test_metrics_in_the_apps_registry() -> None:
    cache, _ = make()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CacheCollector(cache, LocalBus(cache)))
    cache.put(FILES, "a", "A")
    cache.get(FILES, "a")
    cache.get(FILES, "a")
    cache.get(FILES, "b")
    cache.invalidate(FILES, "a")
    text_out = generate_latest(registry).decode()
    assert 'tusserver_cache_hits_total{namespace="file"} 2.0' in text_out
    assert 'tusserver_cache_misses_total{namespace="file"} 1.0' in text_out
    assert 'tusserver_cache_invalidations_total{source="local"} 1.0' in text_out
    assert "tusserver_cache_entries 0.0" in text_out
    assert "tusserver_cache_listening 1.0" in text_out


async def test_local_bus_invalidates_after_commit_only(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        cache, _ = make()
        bus = LocalBus(cache)
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES ('a', 'A')"))
        cache.put(FILES, "a", "A")

        # a failed write changes nothing: the entry stays
        def failing(conn: Connection) -> None:
            conn.execute(text("UPDATE t SET v = 'B' WHERE id = 'a'"))
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            await bus.run(db, failing, ("file", "a"))
        assert cache.get(FILES, "a") == "A"
        # inside the transaction the entry is still there; after the commit it is gone
        seen: list[object] = []

        def work(conn: Connection) -> None:
            conn.execute(text("UPDATE t SET v = 'B' WHERE id = 'a'"))
            seen.append(cache.peek(FILES, "a"))

        await bus.run(db, work, ("file", "a"), ("file", None))
        assert seen == ["A"]
        assert cache.get(FILES, "a") is MISSING
        assert cache.invalidations["local"] == 2
    finally:
        await db.dispose()
