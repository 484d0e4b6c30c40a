"""Reading a request body in bounded blocks, stoppable by lock breaking and at shutdown.

The lifecycle (:class:`~tusserver.uploads.service.UploadService`) wraps every body it
receives in a :class:`BodyReader`, whatever the entry path: a tus or IETF-draft PATCH body
(aiohttp's ``StreamReader``) or one part of a form upload (:class:`PartStream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["READ_PIECE", "BodyReader", "ByteStream", "Interruption"]

#: The most one read asks of the body: no more than aiohttp's read buffer (the server's
#: ``read_bufsize``, set to this in :data:`tusserver.http_io.HANDLER_ARGS`), so a read never
#: raises the buffer's limit.
READ_PIECE = 64 * 1024


class ByteStream(Protocol):
    """What a body is read from (aiohttp's ``StreamReader`` is one)."""

    async def read(self, n: int = -1) -> bytes: ...

    def is_eof(self) -> bool: ...

    def set_exception(self, exc: BaseException) -> None: ...


class Interruption(enum.Enum):
    NONE = "none"
    #: The client's connection ended before the body did.
    DISCONNECTED = "disconnected"
    #: A newer request for the same upload asked this one to let go.
    RELEASED = "released"
    #: The server is shutting down: what arrived is kept, the client resumes later.
    SHUTDOWN = "shutdown"
    #: The body sent nothing for ``idle_timeout`` seconds: what arrived is kept.
    IDLE = "idle"


class _ReleaseRequested(Exception):
    pass


class BodyReader:
    """Async iterator over a body in blocks of at most ``block_size`` bytes.

    Memory is bounded by one block plus aiohttp's own flow-controlled buffer. A lost
    connection or a release request ends the iteration early (``interruption`` says which):
    the bytes received so far are still yielded, so the store keeps them.

    The body is read in pieces of at most :data:`READ_PIECE` bytes, collected in a list and
    joined once per block: asking aiohttp's ``StreamReader`` for a whole block at once would
    raise its flow-control high-water mark to twice the block (``set_read_chunk_size``), so
    every connection could hold two more blocks in aiohttp's buffer, and growing a bytearray
    then copying it out cost two copies where the join costs one.
    """

    def __init__(
        self,
        content: ByteStream,
        block_size: int,
        *,
        idle_timeout: float | None = None,
        meter: Callable[[int], Awaitable[float]] | None = None,
    ) -> None:
        self._content = content
        self._block_size = block_size
        #: Seconds one read may wait for bytes (None: forever).
        self.idle_timeout = idle_timeout or None
        #: Asked for each block's bytes before the block is read: 0 when they are granted,
        #: else how long to wait before asking again (a byte rate limit: the body is read
        #: at its pace). Waiting is not idleness, and a stop ends the wait.
        self._meter = meter
        self._wake: asyncio.Future[None] | None = None
        self.interruption = Interruption.NONE
        self.received = 0
        #: Bytes the meter granted (the last block's may be more than arrived).
        self.metered = 0
        #: The read was cancelled (the request's task): the body ended there, and the
        #: caller re-raises the cancellation once what arrived is stored.
        self.cancelled = False

    def request_release(self) -> None:
        """Called by the locker when another request wants this upload."""
        self.stop(Interruption.RELEASED)

    def stop(self, why: Interruption) -> None:
        """End the body here: the bytes already received are still written."""
        if self.interruption is Interruption.NONE:
            self.interruption = why
            self._content.set_exception(_ReleaseRequested())
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

    async def _grant(self, size: int) -> None:
        """Wait until the meter grants ``size`` more bytes (or the body is stopped)."""
        assert self._meter is not None
        while (wait := await self._meter(size)) > 0:
            if self.interruption is not Interruption.NONE:
                return
            self._wake = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake, wait)
            self._wake = None
        self.metered += size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces: list[bytes] = []
        have = 0
        size = self._block_size
        content = self._content
        idle = self.idle_timeout
        loop = asyncio.get_running_loop()
        #: When the current read began waiting (None: not reading); one timer per body
        #: watches it, cheaper than a timeout around every read.
        waiting_since: float | None = None
        watchdog: asyncio.TimerHandle | None = None

        def watch() -> None:
            nonlocal watchdog
            assert idle is not None
            now = loop.time()
            if waiting_since is not None and now - waiting_since >= idle:
                # A stalled body: keep what arrived, and read no more of it.
                watchdog = None
                self.stop(Interruption.IDLE)
                return
            watchdog = loop.call_at((waiting_since or now) + idle, watch)

        if idle is not None:
            watchdog = loop.call_at(loop.time() + idle, watch)
        try:
            while True:
                try:
                    if have == 0 and self._meter is not None and not content.is_eof():
                        await self._grant(size)
                    if idle is not None:
                        waiting_since = loop.time()
                    data = await content.read(min(READ_PIECE, size - have))
                    waiting_since = None
                except _ReleaseRequested:
                    break
                except asyncio.CancelledError:
                    self.cancelled = True
                    if self.interruption is Interruption.NONE:
                        self.interruption = Interruption.DISCONNECTED
                    break
                except (OSError, HttpProcessingError):
                    if self.interruption is Interruption.NONE:
                        self.interruption = Interruption.DISCONNECTED
                    break
                if not data:
                    if self.interruption is Interruption.NONE and not content.is_eof():
                        self.interruption = Interruption.DISCONNECTED
                    break
                self.received += len(data)
                pieces.append(data)
                have += len(data)
                if have >= size:
                    have = 0
                    yield _take(pieces)
            if pieces:
                yield _take(pieces)
        finally:
            if watchdog is not None:
                watchdog.cancel()


def _take(pieces: list[bytes]) -> bytes:
    """The pieces as one block, and the list emptied (no reference left behind: the block
    lives only as long as its consumer keeps it)."""
    block = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    pieces.clear()
    return block
