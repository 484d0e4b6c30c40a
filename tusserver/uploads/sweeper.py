"""Background expiry of abandoned uploads and purge of old tombstones."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

import structlog

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
    ) -> None:
        self._service = service
        self._extra = list(extra)
        self._interval = interval
        self._retention = dt.timedelta(seconds=tombstone_retention)
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> int:
        """Expire due uploads and purge old tombstones now; returns uploads expired."""
        expired = 0
        while True:
            n = await self._service.expire_due()
            expired += n
            if n == 0:
                break
        await self._service.purge_tombstones(self._retention)
        for task in self._extra:
            await task()
        return expired

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep_once()
            except Exception:
                _log.exception("sweep failed")
