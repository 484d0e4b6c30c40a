"""Segments: AES-256-GCM over fixed-size pieces of a file, sealed and opened in streams.

An encrypted file (an upload in progress or a finished object) is a run of segments, each
``nonce (12) || ciphertext || tag (16)``; segment ``i`` holds plaintext bytes
``[i * S, (i + 1) * S)``. The associated data of a segment binds its index (segments cannot be
reordered) and, in finished objects, whether it is the last one (an object cut at a segment
boundary is detected; an empty object still has one, empty, final segment). A Range read
decrypts only the segments it touches, so memory stays bounded by one segment.

Here: the cipher of one file (:class:`SegmentCipher`), cutting plaintext streams into
segments without copying (:class:`Cutter`), sealing a stream (:func:`seal_stream`), opening
a range from a stream (:func:`open_range`, for S3) or from a local file (:func:`open_file`),
and the pool of buffers they share.
"""

from __future__ import annotations

import contextlib
import secrets
import struct
import threading
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..base import StorageError
from ..fileio import Bytes, in_worker, read_into
from .keys import NONCE, IntegrityError

__all__ = [
    "BATCH",
    "DEFAULT_SEGMENT_SIZE",
    "NONCE",
    "OVERHEAD",
    "POOL",
    "TAG",
    "BufferPool",
    "Cutter",
    "SegmentCipher",
    "closing",
    "open_file",
    "open_range",
    "seal_stream",
    "sealed_size",
    "segment_count",
]

DEFAULT_SEGMENT_SIZE = 256 * 1024
TAG = 16
OVERHEAD = NONCE + TAG
#: Plaintext read or sealed per step (one trip to a worker thread): whole segments, about
#: this much (at least one).
BATCH = 1024 * 1024
#: cryptography >= 44 seals into a caller's buffer; older versions return a new bytes.
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")


class SegmentCipher:
    """Seals and opens the segments of one file."""

    __slots__ = ("_aead", "segment_size")

    def __init__(self, data_key: bytes, segment_size: int) -> None:
        self._aead = AESGCM(data_key)
        self.segment_size = segment_size

    @staticmethod
    def _aad(index: int, final: bool) -> bytes:
        return b"tusenc1" + struct.pack(">QB", index, final)

    def seal_parts(self, index: int, plain: Bytes, *, final: bool = False) -> tuple[bytes, bytes]:
        """(nonce, ciphertext || tag): written one after the other, they are the segment."""
        nonce = secrets.token_bytes(NONCE)
        return nonce, self._aead.encrypt(nonce, plain, self._aad(index, final))

    def seal(self, index: int, plain: Bytes, *, final: bool = False) -> bytes:
        nonce, body = self.seal_parts(index, plain, final=final)
        return nonce + body

    def seal_into(
        self,
        index: int,
        plain: Bytes,
        out: memoryview,
        *,
        final: bool = False,
        nonce: bytes | None = None,
    ) -> int:
        """Seal into ``out[:len(plain) + OVERHEAD]`` (no allocation); returns that length.

        ``nonce``: 12 fresh random bytes, when the caller drew several at once.
        """
        n = len(plain) + OVERHEAD
        if nonce is None:
            nonce = secrets.token_bytes(NONCE)
        elif len(nonce) != NONCE:
            raise ValueError("a nonce is 12 bytes")
        out[:NONCE] = nonce
        if _ENCRYPT_INTO:
            self._aead.encrypt_into(nonce, plain, self._aad(index, final), out[NONCE:n])
        else:  # pragma: no cover - older cryptography
            out[NONCE:n] = self._aead.encrypt(nonce, plain, self._aad(index, final))
        return n

    def open(self, index: int, sealed: Bytes, *, final: bool = False) -> bytes:
        """The plaintext of a sealed segment; ``sealed`` may be a view into a larger buffer."""
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"segment {index} is truncated")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE], view[NONCE:], self._aad(index, final))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None

    def open_into(self, index: int, sealed: Bytes, out: bytearray, *, final: bool = False) -> int:
        """Open a sealed segment into ``out`` (at least its plaintext's size); returns the
        plaintext's size. ``out`` is left undefined if the segment fails authentication."""
        n = len(sealed) - OVERHEAD
        if n < 0:
            raise IntegrityError(f"segment {index} is truncated")
        view = memoryview(sealed)
        try:
            if _ENCRYPT_INTO:
                self._aead.decrypt_into(
                    view[:NONCE], view[NONCE:], self._aad(index, final), memoryview(out)[:n]
                )
            else:  # pragma: no cover - older cryptography
                out[:n] = self._aead.decrypt(view[:NONCE], view[NONCE:], self._aad(index, final))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
        return n

    def open_last(self, index: int, sealed: Bytes) -> tuple[bytes, bool]:
        """(plaintext, whether it is sealed as final) of the last segment of an upload, which
        is final once the upload has all its bytes (:meth:`EncryptedChunkStore.finish`) and
        not before. Either way it must authenticate, with its own index."""
        try:
            return self.open(index, sealed), False
        except IntegrityError:
            if len(sealed) < OVERHEAD:
                raise
        return self.open(index, sealed, final=True), True


def segment_count(size: int, segment_size: int, *, finished: bool) -> int:
    """Segments holding ``size`` plaintext bytes; a finished object has at least one."""
    n = -(-size // segment_size)
    return max(n, 1) if finished else n


def sealed_size(size: int, segment_size: int, *, finished: bool) -> int:
    return size + OVERHEAD * segment_count(size, segment_size, finished=finished)


class Cutter:
    """Cuts plaintext arriving in blocks of any size into segments, copying almost nothing.

    Whole segments inside a block are memoryview slices of it. The partial tail of a block
    is kept as a view too, and a segment split between blocks is assembled once, by one
    join, when it is complete. The blocks must not change once handed over (they are
    ``bytes``); a segment handed out is never touched again, so it may be sealed in another
    thread while the next block is cut.
    """

    __slots__ = ("_have", "_pieces", "_seg")

    def __init__(self, segment_size: int, prefix: bytes = b"") -> None:
        self._seg = segment_size
        self._pieces: list[Bytes] = [prefix] if prefix else []
        self._have = len(prefix)

    def cut(self, block: Bytes) -> list[Bytes]:
        """The segments this block completes (possibly none)."""
        seg = self._seg
        view = memoryview(block)
        parts: list[Bytes] = []
        if self._have:
            take = min(seg - self._have, len(view))
            if take:
                self._pieces.append(view[:take])
                self._have += take
            if self._have < seg:
                return parts
            parts.append(b"".join(self._pieces))
            self._pieces, self._have = [], 0
            view = view[take:]
        whole = len(view) - len(view) % seg
        parts.extend(view[at : at + seg] for at in range(0, whole, seg))
        if whole < len(view):
            self._pieces, self._have = [view[whole:]], len(view) - whole
        return parts

    def rest(self) -> bytes | None:
        """The partial segment after the last whole one, if any (and forget it)."""
        if not self._have:
            return None
        out = b"".join(self._pieces)
        self._pieces, self._have = [], 0
        return out


async def seal_stream(
    cipher: SegmentCipher, source: AsyncIterable[bytes], size: int
) -> AsyncIterator[bytes]:
    """Plaintext blocks of any size -> sealed segments; the last one is marked final.

    Segments are sealed from views of the source's blocks (see Cutter) and handed out about
    ``BATCH`` bytes at a time, joined once.
    """
    seg = cipher.segment_size
    final = segment_count(size, seg, finished=True) - 1
    batch = max(1, BATCH // seg)
    parts: list[Bytes] = []
    cutter = Cutter(seg)
    index = 0
    seen = 0

    def sealed(parts: list[Bytes]) -> bytes:
        nonlocal index
        out: list[bytes] = []
        for plain in parts:
            out += cipher.seal_parts(index, plain, final=index == final)
            index += 1
        return b"".join(out)

    async for block in source:
        seen += len(block)
        if seen > size:
            raise StorageError(f"expected {size} bytes, got more")
        parts += cutter.cut(block)
        if len(parts) >= batch:
            yield sealed(parts)
            parts = []
    if seen != size:
        raise StorageError(f"expected {size} bytes, got {seen}")
    rest = cutter.rest()
    if rest is not None or index + len(parts) == final:  # a partial last one, or the empty one
        parts.append(rest or b"")
    if parts:
        yield sealed(parts)


async def open_range(
    cipher: SegmentCipher,
    size: int,
    start: int,
    length: int | None,
    fetch: Callable[[int, int], AsyncIterator[bytes]],
) -> AsyncIterator[bytes]:
    """Plaintext ``[start, start+length)`` of a finished object, touching only its segments.

    For stores read as a stream (S3): segments are opened from views of the fetched blocks;
    only a segment split between two blocks is assembled in a buffer.
    """
    end = size if length is None else min(size, start + length)
    if start >= end:
        return
    seg = cipher.segment_size
    unit = seg + OVERHEAD
    last_of_file = segment_count(size, seg, finished=True) - 1
    first, last = start // seg, (end - 1) // seg

    def sealed_len(i: int) -> int:
        return unit if i < last_of_file else size - i * seg + OVERHEAD

    def cut(plain: bytes, i: int) -> bytes:
        lo = start - i * seg if i == first else 0
        hi = end - i * seg if i == last else len(plain)
        return plain if lo == 0 and hi == len(plain) else plain[lo:hi]

    want = (last - first) * unit + sealed_len(last)
    carry = bytearray()
    index = first
    fetched = fetch(first * unit, want)
    async with closing(fetched):
        async for block in fetched:
            view = memoryview(block)
            if carry:
                take = sealed_len(index) - len(carry)
                carry += view[:take]
                view = view[take:]
                if len(carry) < sealed_len(index):
                    continue
                yield cut(cipher.open(index, carry, final=index == last_of_file), index)
                carry = bytearray()
                index += 1
            while index <= last and len(view) >= (n := sealed_len(index)):
                plain = cipher.open(index, view[:n], final=index == last_of_file)
                view = view[n:]
                yield cut(plain, index)
                index += 1
            if index <= last:
                carry += view
    if index <= last:
        raise IntegrityError("the object is shorter than its envelope says")


@contextlib.asynccontextmanager
async def closing(blocks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close an inner generator with the outer one: its files now, not when collected."""
    try:
        yield blocks
    finally:
        if isinstance(blocks, AsyncGenerator):
            await blocks.aclose()


class BufferPool:
    """Spare buffers for sealed segments being read or written, by size, kept up to a total
    size (a fresh buffer of a megabyte is an mmap, zeroed and faulted in at every use).

    A buffer is in one reader's or writer's hands at a time, from take to give, including
    while a worker thread reads or writes with it; what a reader hands out is never a view
    of one.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept = 0
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()  # event loops of other threads may read too

    def take(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._kept -= size
                return free.pop()
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        size = len(buf)
        with self._lock:
            if self._kept + size <= self._limit:
                self._free.setdefault(size, []).append(buf)
                self._kept += size


#: At most this much stays allocated between reads and writes: the buffers of about eight
#: uploads (two each) and eight downloads (one each) at once.
POOL = BufferPool(24 * 1024 * 1024)


async def open_file(
    fd: int,
    cipher: SegmentCipher,
    start: int,
    end: int,
    stored: int,
    final: int,
    *,
    upload: bool = False,
) -> AsyncIterator[bytes]:
    """Plaintext ``[start, end)`` of the sealed file open at ``fd`` (``stored`` bytes long);
    segment ``final`` is the last of a finished object, or with ``upload`` the last of an
    upload, which may or may not be sealed as final (see SegmentCipher.open_last).

    A worker thread reads whole sealed segments, about ``BATCH`` bytes per trip, aligned on
    the file's layout, into a buffer taken from a small pool (a fresh megabyte per Range
    request is an mmap, zeroed and faulted in: most of a Range request's cost). Each segment
    is opened from a view of that buffer; a whole one is handed out as its plaintext, and one
    cut by the range is opened into a pooled scratch buffer, from which only the bytes asked
    for are copied out. Segments are opened here rather than in the worker: plaintext
    allocated in worker threads comes from glibc's per-thread arenas, which give memory back
    and fault it in again all the time (measured: twice the CPU of a download), and
    cryptography releases the GIL while it opens anyway.
    """
    if start >= end:
        return
    seg = cipher.segment_size
    unit = seg + OVERHEAD
    first, last = start // seg, (end - 1) // seg
    batch = max(1, BATCH // seg)
    buf = POOL.take(batch * unit)
    scratch: bytearray | None = None
    try:
        whole = memoryview(buf)
        index = first
        while index <= last:
            count = min(batch, last - index + 1)
            at = index * unit
            want = max(0, min(count * unit, stored - at))
            if await in_worker(read_into, fd, whole[:want], at) < want:
                raise StorageError("the file is shorter than expected")
            for i in range(count):
                sealed = whole[i * unit : min((i + 1) * unit, want)]
                lo = start - index * seg if index == first else 0
                hi = end - index * seg if index == last else seg
                if len(sealed) - OVERHEAD < hi:
                    raise StorageError("the file is shorter than expected")
                cut = lo > 0 or hi < len(sealed) - OVERHEAD
                if upload and index == final:
                    plain = cipher.open_last(index, sealed)[0]
                    if cut:
                        plain = plain[lo:hi]
                elif not cut:
                    plain = cipher.open(index, sealed, final=index == final)
                else:  # cut by the range: only the bytes asked for are copied out
                    if scratch is None:
                        scratch = POOL.take(seg)
                    cipher.open_into(index, sealed, scratch, final=index == final)
                    plain = bytes(memoryview(scratch)[lo:hi])
                index += 1
                yield plain
    finally:
        POOL.give(buf)
        if scratch is not None:
            POOL.give(scratch)
