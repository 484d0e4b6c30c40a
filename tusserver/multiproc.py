"""Prometheus metrics of several server processes exported as one (``serve --workers N``).

The supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it forks the
server processes: prometheus_client then keeps every counter, gauge and histogram value of
every process in memory-mapped files there, and ``/metrics`` on any process merges them
(counters and histograms summed; gauges as declared by their ``multiprocess_mode``). What a
process collects by itself (e.g. the cache's statistics) is added as that process sees it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .metrics import Metrics

__all__ = ["MULTIPROC_ENV", "enable", "metrics_handler", "process_gone"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Handler = Callable[[web.Request], Awaitable[web.Response]]


def enable(directory: Path) -> None:
    """Multiprocess collection into ``directory`` for this process and the ones it forks
    (call before any metric is created)."""
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def process_gone(pid: int, directory: Path) -> None:
    """Forget the live gauges of a process that exited (its counters stay in the totals)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def metrics_handler(
    metrics: Metrics, refresh: Callable[[], Awaitable[None]] | None = None
) -> Handler:
    """``/metrics``: of every process when multiprocess collection is on, else this one's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return metrics.handler(refresh)

    async def handler(_request: web.Request) -> web.Response:
        if refresh is not None:
            await refresh()
        # Reads one small file per process and metric kind: off the event loop.
        families = await asyncio.to_thread(_merged, directory)
        shared = {f.name for f in families}
        # Collectors of this process alone (not backed by the shared files).
        families += [f for f in metrics.registry.collect() if f.name not in shared]
        out = CollectorRegistry(auto_describe=False)
        out.register(_Families(families))
        body = generate_latest(out)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


def _merged(directory: str) -> list[Metric]:
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    return list(merged.collect())
