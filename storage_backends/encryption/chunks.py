"""The encrypted chunk store: uploads in progress on local disk, sealed in segments.

It is the local chunk store with encryption: appending to an upload re-seals its last,
partial segment; when the upload has all its bytes, its last segment is re-sealed as final,
and the sealed file is then already a finished object, which a commit into the encrypted
local object store renames into place (:meth:`EncryptedChunkStore.copy_into`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..base import ChunkSource, StorageError, StoreCapabilities, StoredUpload, UploadDataMissing
from ..fileio import (
    INLINE_WRITE,
    Bytes,
    copy_range,
    finish_file,
    fsync_dir,
    full_disk_is_storage_full,
    in_worker,
    list_upload_files,
    pwritev_all,
    read_small,
    reserve,
    touch,
    write_atomic,
)
from ..local import LocalChunkStore, LocalObjectStore
from .keys import (
    CHECK_NAME,
    NONCE,
    EncryptionKeyError,
    Envelope,
    IntegrityError,
    KeyRing,
    RotationReport,
    strip_envelope,
)
from .objects import EncryptedObjectStore
from .segments import (
    BATCH,
    DEFAULT_SEGMENT_SIZE,
    OVERHEAD,
    POOL,
    Cutter,
    SegmentCipher,
    closing,
    open_file,
    sealed_size,
    segment_count,
)

__all__ = ["EncryptedChunkStore"]


class EncryptedChunkStore:
    """Uploads in progress on local disk, sealed in segments; the envelope in a sidecar.

    Appending at an offset inside a segment re-seals that segment with the new bytes (a fresh
    nonce each time). If the process dies while re-sealing, that last segment fails
    authentication and :meth:`get_offset` reports the offset before it: the client re-sends
    those bytes, and nothing unauthenticated is ever counted or read. When the upload has all
    its bytes, :meth:`finish` re-seals its last segment as final (the same way, with the same
    guarantee), which makes the sealed file a finished object: the commit renames it.
    It deliberately offers no ``local_path``: the plaintext exists only in memory.

    Files of an upload: ``<id>.key`` (the envelope: written first, so data never exists
    without the key that opens it), ``<id>`` (the sealed segments), ``<id>.stage`` (a chunk
    with a checksum, sealed while it is verified).
    """

    #: The files of an upload (see the class).
    PIECES = (".key", "", ".stage")

    #: A Finisher that can still read an upload back before it is finished (S3's chunk store
    #: cannot): the IETF handler relies on it to check Repr-Digest on a resumed upload.
    reads_unfinished: Literal[True] = True

    def __init__(
        self,
        root: Path,
        keys: KeyRing,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_size: int | None = None,
        fsync: bool | None = None,
    ) -> None:
        # With fsync on, a new upload's file and its key are durable as they are created.
        self._files = LocalChunkStore(root, max_size=max_size, fsync=bool(fsync))
        self._keys = keys
        self._segment = segment_size
        #: Whether :meth:`finish` syncs its re-seal to disk; None: as the writes were asked
        #: to (the service passes its fsync setting to each), and yes before any write.
        self._fsync = fsync
        self._writes_fsync: bool | None = None
        self.capabilities: StoreCapabilities = self._files.capabilities

    @property
    def root(self) -> Path:
        return self._files.root

    @full_disk_is_storage_full
    async def open(self) -> None:
        await self._files.open()
        check = self.root / CHECK_NAME
        try:
            records = json.loads(await asyncio.to_thread(check.read_bytes))
        except FileNotFoundError:
            records = {}
        except ValueError:
            raise EncryptionKeyError(f"{check} is damaged") from None
        self._keys.verify_records(records, f"the chunk store {self.root}")
        if self._keys.active_id not in records:
            records[self._keys.active_id] = self._keys.check_record(self._keys.active_id)
            await asyncio.to_thread(write_atomic, check, json.dumps(records).encode())

    async def close(self) -> None:
        await self._files.close()

    def _key_path(self, upload_id: str) -> Path:
        return self._files.path(upload_id).with_name(upload_id + ".key")

    def _envelope(self, upload_id: str) -> Envelope:
        # Inline: the sidecar is a few hundred bytes (see storage_backends.fileio).
        try:
            raw = read_small(self._key_path(upload_id))
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None
        return _envelope_from_json(raw, upload_id)

    def _cipher(self, upload_id: str) -> SegmentCipher:
        env = self._envelope(upload_id)
        return SegmentCipher(self._keys.unwrap(env, upload_id), env.segment_size)

    def _open_fd(self, upload_id: str, flags: int) -> int:
        try:
            return os.open(self._files.path(upload_id), flags)  # inline: a metadata call
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None

    @full_disk_is_storage_full
    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        _, env = self._keys.new_envelope(upload_id, self._segment)
        # The sidecar first: data never exists without the key that opens it. Inline: a
        # small write into the page cache, unless it is synced (fsync on: in a thread).
        key_path, doc = self._key_path(upload_id), _envelope_to_json(env)
        if self._fsync:
            await asyncio.to_thread(write_atomic, key_path, doc, durable=True)
        else:
            write_atomic(key_path, doc)
        await self._files.create(upload_id, length=length)

    async def get_offset(self, upload_id: str) -> int:
        cipher = self._cipher(upload_id)
        fd = self._open_fd(upload_id, os.O_RDONLY)
        try:
            # Only the last segment is read (and authenticated): inline when it is small.
            unit = cipher.segment_size + OVERHEAD
            stored = os.fstat(fd).st_size
            if stored - max(stored - 1, 0) // unit * unit <= INLINE_WRITE:
                return _verified_length(fd, cipher)
            return await in_worker(_verified_length, fd, cipher)
        finally:
            os.close(fd)

    @full_disk_is_storage_full
    async def write(
        self,
        upload_id: str,
        offset: int,
        source: ChunkSource,
        *,
        verify: Callable[[], None] | None = None,
        fsync: bool = False,
    ) -> int:
        cipher = self._cipher(upload_id)
        path = self._files.path(upload_id)
        seg = cipher.segment_size
        unit = seg + OVERHEAD
        index, partial = divmod(offset, seg)
        self._writes_fsync = fsync
        fd = self._open_fd(upload_id, os.O_RDWR)
        try:
            prefix = b""
            if partial:
                # The partial last segment is re-sealed with the new bytes after it (not as
                # final, even if it was: an upload is final only once it has all its bytes).
                n = partial + OVERHEAD
                if partial <= INLINE_WRITE:
                    prefix, _ = _read_last(fd, cipher, index, n)
                else:
                    prefix, _ = await in_worker(_read_last, fd, cipher, index, n)
                if len(prefix) != partial:
                    raise IntegrityError(f"upload {upload_id} does not hold {offset} bytes")
                # The re-seal writes over acknowledged bytes: the room of the whole segment
                # is taken first, so that a full disk refuses the write here, before they
                # are touched (a write cut short by ENOSPC would leave a segment that no
                # longer authenticates, and the upload would go back to the one before).
                reserve(fd, index * unit, unit)
            if verify is None:
                return await _seal_into(fd, index * unit, cipher, index, prefix, source, fsync)
            stage = path.with_name(upload_id + ".stage")
            sfd = os.open(stage, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = await _seal_into(sfd, 0, cipher, index, prefix, source, False)
                verify()
                staged = os.fstat(sfd).st_size
                await in_worker(_splice, sfd, fd, index * unit, staged, fsync)
                return written
            finally:
                os.close(sfd)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stage)
        finally:
            os.close(fd)

    @full_disk_is_storage_full
    async def finish(self, upload_id: str) -> None:
        """The upload has all its bytes: re-seal its last segment as final (idempotent).

        Its sealed file is then what the object's must be (the same data key, each segment's
        index in the associated data, the last one marked final), so :meth:`copy_into` commits
        it by a rename. Nothing is appended to an upload after this (the service accepts no
        more bytes once the length is reached); reads and appends accept a last segment sealed
        either way. An error (a damaged last segment) leaves the upload unfinished.
        """
        cipher = self._cipher(upload_id)
        fsync = self._fsync if self._fsync is not None else self._writes_fsync is not False
        fd = self._open_fd(upload_id, os.O_RDWR)
        try:
            if not fsync and os.fstat(fd).st_size <= INLINE_WRITE:
                _seal_last_as_final(fd, cipher, upload_id, fsync)  # a small file: inline
            else:
                await in_worker(_seal_last_as_final, fd, cipher, upload_id, fsync)
        finally:
            os.close(fd)

    async def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        cipher = self._cipher(upload_id)
        fd = self._open_fd(upload_id, os.O_RDONLY)
        try:
            stored = os.fstat(fd).st_size
            unit = cipher.segment_size + OVERHEAD
            whole, rest = divmod(stored, unit)
            held = whole * cipher.segment_size + max(rest - OVERHEAD, 0)
            if start + length > held:
                raise StorageError(f"upload {upload_id} is shorter than expected")
            last = (stored - 1) // unit if stored else -1
            blocks = open_file(fd, cipher, start, start + length, stored, last, upload=True)
            async with closing(blocks):
                async for block in blocks:
                    yield block
        finally:
            os.close(fd)

    @full_disk_is_storage_full
    async def copy_into(
        self,
        upload_id: str,
        objects: object,
        key: str,
        *,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        """Commit into an encrypted local object store without re-encrypting the file.

        An upload's segments are already what the object's segments must be (same data key,
        same index in the associated data), except the last one, which an object marks final.
        The data key is wrapped again, bound to the object key, and:

        - a finished upload (:meth:`finish`: its last segment is final) is the object: its
          file is renamed into place after the metadata with the envelope, as
          LocalObjectStore.put_file does for a plaintext upload (a copy where the rename
          crosses filesystems). A crash leaves either the upload or the object, whole;
        - otherwise (an empty upload, or one finished before the store re-sealed at finish)
          the sealed file is copied in the kernel (copy_file_range) into a temporary file
          beside the destination, its last segment re-sealed there as final (the last full
          one when the size is a multiple of the segment size; one empty segment for an
          empty file), then the metadata and the rename; the upload's file is left as it is.

        The pipeline deletes what is left of the upload once the commit is recorded.
        False (the caller then streams the bytes) unless ``objects`` is an
        EncryptedObjectStore on local disk writing segments of this upload's size.
        """
        if not isinstance(objects, EncryptedObjectStore):
            return False
        inner = objects.inner
        if not isinstance(inner, LocalObjectStore):
            return False
        env = self._envelope(upload_id)
        if env.segment_size != objects.segment_size:
            return False
        data_key = self._keys.unwrap(env, upload_id)
        cipher = SegmentCipher(data_key, env.segment_size)
        src = self._open_fd(upload_id, os.O_RDONLY)
        try:
            if os.fstat(src).st_size <= INLINE_WRITE:  # a small file: checked inline
                size, final = _whole_upload(src, cipher, upload_id)
            else:
                size, final = await in_worker(_whole_upload, src, cipher, upload_id)
            sealed = Envelope(
                objects.keys.active_id,
                objects.keys.wrap(data_key, key),
                env.segment_size,
                size,
            )
            meta = {**strip_envelope(metadata), **sealed.to_metadata()}
            if final and size:
                await inner.put_file(
                    key,
                    self._files.path(upload_id),
                    content_type=content_type,
                    metadata=meta,
                    consume=True,
                )
                return True
            last = (await in_worker(_final_segment, src, cipher, upload_id))[1]
            await inner.put_built(
                key,
                lambda dst: _build_object(src, dst, cipher, size, last),
                content_type=content_type,
                metadata=meta,
            )
        finally:
            os.close(src)
        return True

    async def delete(self, upload_id: str) -> None:
        await self._files.delete(upload_id)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, self._key_path(upload_id))

    def list_uploads(self, *, modified_before: dt.datetime) -> AsyncGenerator[StoredUpload, None]:
        """The upload files (key sidecars included: a crash between the sidecar and the
        data file leaves a sidecar alone) not modified since ``modified_before``, a page of
        the directory at a time in a worker thread."""
        return list_upload_files(self.root, self.PIECES, modified_before=modified_before)

    async def remove_orphan(self, upload_id: str) -> None:
        """As :meth:`delete`: the data file, a staged chunk and the key sidecar."""
        await self.delete(upload_id)

    @full_disk_is_storage_full
    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        key_path = self._key_path(upload_id)
        if not await asyncio.to_thread(key_path.exists):
            _, env = self._keys.new_envelope(upload_id, self._segment)
            doc = _envelope_to_json(env)
            await asyncio.to_thread(write_atomic, key_path, doc, durable=fsync)
        await asyncio.to_thread(touch, self._files.path(upload_id))
        if fsync:
            await asyncio.to_thread(fsync_dir, self.root)
        total = 0
        for part in parts:
            size = await self.get_offset(part)
            total += await self.write(upload_id, total, self.read(part, 0, size), fsync=fsync)
        return total

    @full_disk_is_storage_full
    async def rotate(self) -> RotationReport:
        """Re-wrap the data key of every upload in progress under the active master key."""
        report = RotationReport()
        for sidecar in sorted(self.root.glob("*.key")):
            upload_id = sidecar.name.removesuffix(".key")
            try:
                env = _envelope_from_json(await asyncio.to_thread(sidecar.read_bytes), upload_id)
            except FileNotFoundError:
                continue  # finished and removed meanwhile
            if env.key_id == self._keys.active_id:
                report.already_current += 1
                continue
            new = self._keys.rewrap(env, upload_id)
            # Durable: the old master key may be retired once the rotation is done.
            await asyncio.to_thread(write_atomic, sidecar, _envelope_to_json(new), durable=True)
            report.rewrapped += 1
        records = {self._keys.active_id: self._keys.check_record(self._keys.active_id)}
        await asyncio.to_thread(write_atomic, self.root / CHECK_NAME, json.dumps(records).encode())
        return report


def _envelope_to_json(env: Envelope) -> bytes:
    return json.dumps(env.to_metadata()).encode()


def _envelope_from_json(raw: bytes, upload_id: str) -> Envelope:
    try:
        doc: Any = json.loads(raw)
        env = Envelope.from_metadata(doc) if isinstance(doc, dict) else None
    except ValueError:
        env = None
    if env is None:
        raise IntegrityError(f"the key sidecar of upload {upload_id} is damaged")
    return env


def _read_last(
    fd: int, cipher: SegmentCipher, index: int, n: int | None = None
) -> tuple[bytes, bool]:
    """(plaintext, sealed as final) of segment ``index`` of an upload, its last one (reading
    ``n`` sealed bytes, or a whole segment's worth); empty if the file ends before it."""
    unit = cipher.segment_size + OVERHEAD
    sealed = os.pread(fd, unit if n is None else n, index * unit)
    if not sealed:
        return b"", False
    return cipher.open_last(index, sealed)


def _upload_state(fd: int, cipher: SegmentCipher) -> tuple[int, bool]:
    """(plaintext bytes held, whether the last segment is sealed as final): whole segments
    plus a last one that authenticates."""
    unit = cipher.segment_size + OVERHEAD
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, False
    last = (size - 1) // unit
    try:
        plain, final = _read_last(fd, cipher, last)
    except IntegrityError:
        # A re-seal interrupted by a crash: count only the segments before it.
        return last * cipher.segment_size, False
    return last * cipher.segment_size + len(plain), final


def _verified_length(fd: int, cipher: SegmentCipher) -> int:
    return _upload_state(fd, cipher)[0]


def _whole_upload(fd: int, cipher: SegmentCipher, upload_id: str) -> tuple[int, bool]:
    """(plaintext size, last segment final) of an upload that must be whole: no damaged
    last segment."""
    size, final = _upload_state(fd, cipher)
    if os.fstat(fd).st_size != sealed_size(size, cipher.segment_size, finished=False):
        raise IntegrityError(f"upload {upload_id} ends with a damaged segment")
    return size, final


def _final_segment(
    fd: int, cipher: SegmentCipher, upload_id: str
) -> tuple[int, tuple[bytes, bytes]]:
    """(plaintext size, the object's last segment) of a finished upload: its last segment
    (the last full one if the size is a multiple of the segment size, an empty one if the
    upload is empty) opened and sealed again as final."""
    seg = cipher.segment_size
    size, _ = _whole_upload(fd, cipher, upload_id)
    last = segment_count(size, seg, finished=True) - 1
    plain = _read_last(fd, cipher, last)[0] if size else b""
    if len(plain) != size - last * seg:
        raise IntegrityError(f"upload {upload_id} does not hold {size} bytes")
    return size, cipher.seal_parts(last, plain, final=True)


def _seal_last_as_final(fd: int, cipher: SegmentCipher, upload_id: str, fsync: bool) -> None:
    """Re-seal the last segment of a whole upload as final, in place (same length, a fresh
    nonce); nothing if it already is, or if the upload is empty (an object's empty final
    segment is written at the commit). A crash during the write leaves a last segment that
    authenticates neither way: it is not counted (_upload_state), and the client re-sends
    it, as after a torn append."""
    size, final = _whole_upload(fd, cipher, upload_id)
    if final or size == 0:
        return
    seg = cipher.segment_size
    last = (size - 1) // seg
    plain = _read_last(fd, cipher, last)[0]
    out = memoryview(bytearray(len(plain) + OVERHEAD))
    cipher.seal_into(last, plain, out, final=True)
    pwritev_all(fd, [out], last * (seg + OVERHEAD))
    if fsync:
        os.fsync(fd)


def _build_object(
    src: int, dst: int, cipher: SegmentCipher, size: int, final: tuple[bytes, bytes]
) -> None:
    """The object's file: the upload's sealed segments but the last, copied in the kernel,
    then its final last segment."""
    unit = cipher.segment_size + OVERHEAD
    last = segment_count(size, cipher.segment_size, finished=True) - 1
    if last:
        copy_range(src, dst, 0, 0, last * unit)
    pwritev_all(dst, list(final), last * unit)


async def _seal_into(
    fd: int,
    pos: int,
    cipher: SegmentCipher,
    index: int,
    prefix: bytes,
    source: ChunkSource,
    fsync: bool,
) -> int:
    """Seal ``prefix`` + the source's bytes as segments from ``index``, written from ``pos``.

    Whole segments are sealed straight from views of the source's blocks; only a segment
    split between blocks (or the last, partial one) is assembled (see Cutter). Each block's
    segments are sealed on the event loop as soon as it arrives, while its bytes are still
    in the CPU's caches, into a staging buffer; a full buffer (about ``BATCH``) goes to a
    worker thread for one pwritev while the next blocks are sealed into a second one. A small
    write without fsync goes straight to the page cache (see storage_backends.fileio).

    Measured (8 uploads of 64 MiB at once, 2 cores; docs/encryption.md): every trip to a
    worker costs GIL hand-offs, and sealing in the worker costs one more (cryptography
    releases the GIL while it works, and the worker must take it back to write), so sealing
    and writing each block in a worker cost a third more server CPU than uploads without
    encryption; sealing and writing on the event loop, 0-5 % (but the loop, which also parses
    HTTP, then limits throughput); sealing there and writing 1 MiB at a time from a worker,
    about 6 %, at nearly the throughput of plaintext uploads. Holding the blocks themselves to
    seal them in bigger batches cost more: their bytes had left the caches.

    The nonces are drawn many per getrandom call. Bytes received before a failing source are
    kept (sealed as a last, partial segment) and the failure propagates. The file is cut
    after the last segment written (a re-seal of a damaged last segment may be shorter than
    it). Returns the source's byte count. Memory per upload: the block being sealed and two
    staging buffers of about ``BATCH`` (pooled), one filling while the other is written.
    """
    loop = asyncio.get_running_loop()
    unit = cipher.segment_size + OVERHEAD
    size = max(1, BATCH // cipher.segment_size) * unit
    cutter = Cutter(cipher.segment_size, prefix)
    nonces = _Nonces()
    received = 0
    taken: list[bytearray] = []  # staging buffers from the pool, given back at the end
    stage: memoryview | None = None  # the buffer being filled ...
    filled = 0  # ... with this many sealed bytes, to be written at pos - filled
    spare: memoryview | None = None  # the other buffer, free once ``pending`` is done
    pending: asyncio.Future[int] | None = None

    async def settle() -> None:
        """Wait for the write in flight. Writes go to the file in order, never two at once:
        a later segment is never on disk while an earlier one is still being written (after
        a crash, only the last segment may be damaged, and _upload_state checks that one)."""
        nonlocal pending
        if pending is not None:
            await asyncio.shield(pending)
            pending = None

    async def submit() -> None:
        """Hand the staged bytes to a worker (after the previous write is done)."""
        nonlocal stage, filled, spare, pending
        await settle()
        assert stage is not None
        bufs: list[Bytes] = [stage[:filled]]
        pending = loop.run_in_executor(None, pwritev_all, fd, bufs, pos - filled)
        stage, spare, filled = spare, stage, 0

    async def seal(parts: list[Bytes]) -> None:
        nonlocal stage, filled, pos, index
        sealed = sum(map(len, parts)) + OVERHEAD * len(parts)
        drawn = nonces.take(len(parts))
        if stage is None and sealed <= INLINE_WRITE and not fsync:
            # A small write (a small upload, or small blocks): into the page cache, here.
            await settle()
            buf = memoryview(bytearray(sealed))
            n = 0
            for i, plain in enumerate(parts):
                nonce = drawn[i * NONCE : (i + 1) * NONCE]
                n += cipher.seal_into(index + i, plain, buf[n:], nonce=nonce)
            pwritev_all(fd, [buf], pos)
            pos += sealed
            index += len(parts)
            return
        for i, plain in enumerate(parts):
            if stage is not None and filled + len(plain) + OVERHEAD > len(stage):
                await submit()
            if stage is None:
                taken.append(POOL.take(size))
                stage = memoryview(taken[-1])
            n = cipher.seal_into(
                index, plain, stage[filled:], nonce=drawn[i * NONCE : (i + 1) * NONCE]
            )
            filled += n
            pos += n
            index += 1
            if len(stage) - filled < unit:  # full: no room for another whole segment
                await submit()

    try:
        try:
            async for block in source:
                received += len(block)
                parts = cutter.cut(block)
                if parts:
                    await seal(parts)
        finally:
            rest = cutter.rest()
            if rest is not None:
                await seal([rest])
            if filled:
                if filled <= INLINE_WRITE and not fsync:
                    await settle()
                    assert stage is not None
                    pwritev_all(fd, [stage[:filled]], pos - filled)
                    filled = 0
                else:
                    await submit()
            await settle()
            if fsync:
                await in_worker(finish_file, fd, pos, fsync)
            else:
                finish_file(fd, pos, fsync)  # metadata calls only
    except BaseException:
        if pending is not None:  # never leave a write behind us, nor its buffer in use
            while not pending.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait([pending])
        raise
    finally:
        for buf in taken:
            POOL.give(buf)
    return received


class _Nonces:
    """Random nonces for the segments of one write, from getrandom, many per call."""

    __slots__ = ("_at", "_buf")

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        need = count * NONCE
        if len(self._buf) - self._at < need:
            # The first draw is exact (a small upload needs one); then 64 at a time.
            self._buf = secrets.token_bytes(need if not self._buf else max(need, 64 * NONCE))
            self._at = 0
        drawn = self._buf[self._at : self._at + need]
        self._at += need
        return drawn


def _splice(src: int, dst: int, pos: int, count: int, fsync: bool) -> None:
    copy_range(src, dst, 0, pos, count)
    finish_file(dst, pos + count, fsync)
