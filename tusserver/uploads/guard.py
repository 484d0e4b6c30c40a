"""What stands between a request body and the chunk store: the byte guard (budget, checksum,
running sha256, the early type check on the first bytes) and the answers for a body that
must not or could not be stored whole. Used by :class:`tusserver.uploads.service.UploadService`
only; kept apart so the lifecycle reads as the order of its steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from storage_backends.base import ChunkSource

from ..errors import (
    PayloadTooLarge,
    Progress,
    RequestTimeout,
    TusError,
    UploadInterrupted,
    UploadSuspended,
)
from ..hashing import update_all
from .body import Interruption

if TYPE_CHECKING:
    from .service import UploadStatus

__all__ = ["BodyGuard", "raise_if_stopped", "refuse_more"]


async def refuse_more(source: ChunkSource, content_length: int | None) -> None:
    """A finished upload's bytes may already have moved on to the object store: never touch
    the chunk store again. An empty body just reports the final offset."""
    if content_length:
        raise PayloadTooLarge("the upload is already complete")
    async for block in source:
        if block:
            raise PayloadTooLarge("the upload is already complete")


def raise_if_stopped(interruption: Interruption, status: UploadStatus) -> None:
    """After what arrived is stored: tell the client why its body was cut short."""
    if interruption not in (Interruption.RELEASED, Interruption.SHUTDOWN, Interruption.IDLE):
        return
    assert status.offset is not None
    progress = Progress(status.offset, status.record.length, status.finished)
    error = stopped_error(interruption, progress)
    if error is not None:
        raise error


def stopped_error(
    interruption: Interruption, progress: Progress, *, discarded: bool = False
) -> TusError | None:
    """Why a body was cut short (None: it was not stopped by the server), with the offset to
    resume from. ``discarded``: the chunk (one with Upload-Checksum) was kept whole or not
    at all, and this one not at all; it is answered as a body stopped the same way."""
    what = "the chunk (Upload-Checksum) was discarded" if discarded else "what arrived is stored"
    offset = str(progress.offset)
    if interruption is Interruption.IDLE:
        return RequestTimeout(
            f"the body sent nothing for too long; {what}, resume from Upload-Offset",
            headers={"Upload-Offset": offset, "Connection": "close"},
            progress=progress,
        )
    if interruption is Interruption.RELEASED:
        taken = "the upload was taken over by a newer request"
        return UploadInterrupted(
            f"{taken}; {what}, resume from Upload-Offset"
            if discarded
            else f"{taken}; resume from Upload-Offset",
            headers={"Upload-Offset": offset},
            progress=progress,
        )
    if interruption is Interruption.SHUTDOWN:
        return UploadSuspended(
            f"the server is restarting; {what}, resume from Upload-Offset shortly"
            if discarded
            else "the server is restarting; resume from Upload-Offset shortly",
            headers={"Upload-Offset": offset, "Retry-After": "2"},
            progress=progress,
        )
    return None


class BodyGuard:
    """Pass the body through, hashing it and stopping at ``budget`` bytes.

    Bytes past the budget are never handed to the store; ``exceeded`` tells the caller to
    answer 413 after recording what was stored. ``hasher`` is the request's checksum,
    ``content`` the upload's running sha256 (tusserver.uploads.digests): both see exactly
    the bytes handed to the store (``total`` of them), in one trip to a worker thread per
    big block.
    """

    def __init__(
        self,
        source: ChunkSource,
        budget: int | None,
        hasher: Any,
        first_check: Callable[[bytes], Awaitable[None]] | None = None,
        content: Any | None = None,
    ) -> None:
        self._source = source
        self._budget = budget
        self.hasher = hasher
        self._first_check = first_check
        self._hashers = tuple(h for h in (hasher, content) if h is not None)
        self.exceeded = False
        self.total = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        budget, hashers = self._budget, self._hashers
        async for block in self._source:
            if self._first_check is not None:
                check, self._first_check = self._first_check, None
                await check(block)
            if budget is not None and total + len(block) > budget:
                self.exceeded = True
                block = block[: budget - total]
                if not block:
                    return
            await update_all(hashers, block)
            total += len(block)
            self.total = total
            yield block
            del block  # the store has it; not kept while the next one is read
            if self.exceeded:
                return
