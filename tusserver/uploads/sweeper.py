"""Background expiry of abandoned uploads and purge of old tombstones; now and then, the
orphan sweep of the chunk store (:mod:`.orphans`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

import structlog

from storage_backends.base import ListingRefused

from .orphans import OrphanSweep, OrphanSweepStopped
from .service import UploadService

__all__ = ["Sweeper"]

_log = structlog.get_logger("tusserver.sweeper")


class Sweeper:
    def __init__(
        self,
        service: UploadService,
        *,
        interval: float,
        tombstone_retention: float,
        extra: Sequence[Callable[[], Awaitable[int]]] = (),
        orphans: OrphanSweep | None = None,
        orphan_interval: float = 0.0,
    ) -> None:
        self._service = service
        self._extra = list(extra)
        self._interval = interval
        self._retention = dt.timedelta(seconds=tombstone_retention)
        #: None: the chunk store cannot list its uploads (a store passed in by an embedder).
        self._orphans = orphans
        self._orphan_interval = orphan_interval
        self._tasks: list[asyncio.Task[None]] = []

    async def sweep_once(self, *, expire: bool = True) -> int:
        """Expire due uploads and purge old tombstones now; returns uploads expired.
        ``expire=False``: everything but the expiry (this process cannot see the upload
        locks of a server writing them, see ``tusserver sweep``)."""
        expired = 0
        while expire:
            n = await self._service.expire_due()
            expired += n
            if n == 0:
                break
        await self._service.purge_tombstones(self._retention)
        for task in self._extra:
            await task()
        return expired

    async def sweep_orphans(self) -> int:
        """Remove the chunk store's entries no upload row names (see :mod:`.orphans`) now;
        returns how many. 0 when the store cannot list its uploads (said in the log)."""
        if self._orphans is None:
            _log.info("no orphan sweep: the chunk store cannot list its uploads")
            return 0
        try:
            return await self._orphans.run()
        except ListingRefused as exc:
            _log.warning("no orphan sweep", reason=str(exc))
            return 0
        except OrphanSweepStopped as exc:
            _log.error("orphan sweep stopped", reason=str(exc), removed=exc.removed)
            return exc.removed

    def start(self) -> None:
        """The background sweeps, none with ``interval`` 0: expiry and purges every
        ``interval`` seconds; the orphan sweep, in a task of its own (listing a big store
        must not hold up expiry), ``interval`` seconds after the start (a server restarted
        more often than ``orphan_interval`` still sweeps), then every ``orphan_interval``
        (0: never)."""
        if self._interval <= 0 or self._tasks:
            return
        loop = asyncio.get_running_loop()
        every = self._interval
        self._tasks.append(loop.create_task(self._run(self.sweep_once, every, every)))
        if self._orphans is not None and self._orphan_interval > 0:
            orphans = self._run(self.sweep_orphans, self._orphan_interval, every)
            self._tasks.append(loop.create_task(orphans))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(
        self, sweep: Callable[[], Awaitable[int]], interval: float, delay: float
    ) -> None:
        """``sweep`` after ``delay`` seconds, then every ``interval`` seconds."""
        await asyncio.sleep(delay)
        while True:
            try:
                await sweep()
            except Exception:
                _log.exception("sweep failed")
            await asyncio.sleep(interval)
