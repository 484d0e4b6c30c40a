"""The cache's counters for Prometheus (see :mod:`tusserver.cache`)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .bus import LocalBus, PostgresBus
from .store import Cache

__all__ = ["CacheCollector"]


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
