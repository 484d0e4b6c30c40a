"""One writer per upload: lockers with lock breaking, like tusd's.

A request that wants an upload held by another request asks the holder to let go (the
holder's ``on_release`` callback: a PATCH stops reading its body, stores what it has and
unlocks), then waits at most ``timeout`` seconds. A client whose connection died mid-PATCH is
therefore never stuck behind its own ghost until the network timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import LockTimeout

__all__ = ["InProcessLocker", "KnowsHolders", "Locker"]

ReleaseCallback = Callable[[], None]


class Locker(Protocol):
    def lock(
        self,
        upload_id: str,
        *,
        on_release: ReleaseCallback | None = None,
        take_over: bool = True,
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the upload exclusively for the duration of the ``async with`` block.
        ``take_over=False``: never ask a holder to let go; LockTimeout at once if held."""


@runtime_checkable
class KnowsHolders(Protocol):
    """A locker that knows, without waiting, whether an upload is held in this process (and
    whose ``lock`` takes a free lock before it first awaits anything)."""

    def is_locked(self, upload_id: str) -> bool: ...


@dataclass(eq=False)
class _Holder:
    on_release: ReleaseCallback | None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    asked: bool = False


class InProcessLocker:
    """Locks within one process (the default for a single instance)."""

    def __init__(
        self, *, timeout: float, observe_wait: Callable[[float], None] | None = None
    ) -> None:
        self._timeout = timeout
        self._held: dict[str, _Holder] = {}
        self._observe = observe_wait

    def is_locked(self, upload_id: str) -> bool:
        return upload_id in self._held

    @contextlib.asynccontextmanager
    async def lock(
        self,
        upload_id: str,
        *,
        on_release: ReleaseCallback | None = None,
        take_over: bool = True,
    ) -> AsyncIterator[None]:
        started = time.monotonic()
        deadline = started + self._timeout
        while (holder := self._held.get(upload_id)) is not None:
            if not take_over:
                raise LockTimeout("the upload is in use", headers={"Retry-After": "1"})
            if not holder.asked:
                holder.asked = True
                if holder.on_release is not None:
                    holder.on_release()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    "the upload is in use by another request; try again shortly",
                    headers={"Retry-After": "1"},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(holder.released.wait(), remaining)
        me = _Holder(on_release)
        self._held[upload_id] = me
        if self._observe is not None:
            self._observe(time.monotonic() - started)
        try:
            yield
        finally:
            if self._held.get(upload_id) is me:
                del self._held[upload_id]
            me.released.set()
