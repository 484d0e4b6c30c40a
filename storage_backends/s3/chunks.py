"""The S3 chunk store: uploads in progress as S3 multipart uploads."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Object, Part, Upload
from minio.sse import Sse

from ..base import (
    ChunkSource,
    ListingRefused,
    StorageError,
    StorageLimitExceeded,
    StoreCapabilities,
    StoredUpload,
    UploadDataMissing,
)
from ..fileio import UPLOAD_ID, full_disk_is_storage_full
from .objects import S3ObjectStore
from .settings import (
    MAX_OBJECT,
    MAX_PARTS,
    MIN_PART,
    S3Settings,
    T,
    encode_meta,
    is_missing,
    is_not_implemented,
    part_size_for,
)

__all__ = ["S3ChunkStore"]


class S3ChunkStore:
    """Uploads in progress as S3 multipart uploads: no instance keeps local state.

    Layout under ``prefix``: ``<id>`` is the multipart upload (the object once complete),
    ``<id>.info`` records its multipart id, ``<id>.part`` holds a tail shorter than the 5 MiB
    minimum part size, prepended to the next PATCH. The offset is always derived from what S3
    holds (listed parts + tail), so a restart of any instance loses nothing acknowledged.
    The tail object stays until its bytes are stored again, in a part or in the next tail
    (which replaces it): a part upload that fails, or a crash, loses nothing acknowledged.

    Every part but the last has the upload's part size, so part ``n`` always holds the
    upload's bytes ``(n-1)*size`` to ``n*size``, whichever request stored it. Parts go up a
    few at a time, so a PATCH that fails (or a crash) can leave a part stored after one that
    is missing, and a failed part's request can reach S3 late: such a part holds the bytes of
    its place all the same, and counts once the parts before it are there (the parts from 1
    without a gap count). The tail records the offset it starts at: a tail that no longer
    starts where the parts end (they grew past it) holds bytes they hold too, and is dropped.

    With server-side encryption all three are encrypted: the multipart upload is created with
    the SSE headers and, with SSE-C, every part is uploaded (and the upload completed) with
    the key too; the tail and info objects are written and read like any other object.

    The ``.info`` is what marks an upload as this store's: it is written right after the
    multipart upload is created, and deleted last. A crash between the multipart upload's
    creation and its ``.info`` leaves a multipart upload no ``.info`` names: the listing
    for the orphan sweep (:meth:`list_uploads`) lists multipart uploads too.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        prefix: str = "tus/",
        max_size: int | None = None,
        parts_in_flight: int = 2,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._objects = S3ObjectStore(settings, observe=observe)
        self._objects._probe_prefix = prefix
        self._s = settings
        self._client = self._objects._client
        self._prefix = prefix
        limit = min(max_size or MAX_OBJECT, MAX_OBJECT)
        #: Uploads of deferred length: parts large enough for the configured maximum size, or
        #: the preferred size without one (then such an upload may grow to 10,000 parts; a
        #: PATCH past that is refused with 413 before any byte is stored).
        self._deferred_part_size = (
            part_size_for(limit, settings.part_size) if max_size else settings.part_size
        )
        self.capabilities = StoreCapabilities(max_size=limit)
        self._part_sizes: dict[str, int] = {}
        self._in_flight = parts_in_flight
        self._info_cache: dict[str, str] = {}
        #: False once the server answered NotImplemented to UploadPartCopy with an SSE-C
        #: source (SeaweedFS 4.48 does): compose is then not tried again.
        self._ssec_part_copy = True

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._objects._run(fn, *args, **kwargs)

    def _key(self, upload_id: str, suffix: str = "") -> str:
        return f"{self._prefix}{upload_id}{suffix}"

    async def open(self) -> None:
        await self._objects.open()

    async def close(self) -> None:
        await self._objects.close()

    # --- state ------------------------------------------------------------------------------

    async def _multipart_id(self, upload_id: str) -> str | None:
        """The multipart id, or None once the upload is a complete object."""
        cached = self._info_cache.get(upload_id)
        if cached is not None:
            return cached
        return await self._load_info(upload_id)

    async def _load_info(self, upload_id: str) -> str | None:
        """Read the ``.info`` into the caches; its multipart id (None: complete)."""
        info = await self._read_info(upload_id)
        mp = info.get("mp")
        part = info.get("part_size")
        if isinstance(part, int) and part >= MIN_PART:
            self._part_sizes[upload_id] = part
        if isinstance(mp, str):
            self._info_cache[upload_id] = mp
            return mp
        self._info_cache.pop(upload_id, None)
        return None

    def _forget(self, upload_id: str) -> None:
        self._info_cache.pop(upload_id, None)
        self._part_sizes.pop(upload_id, None)

    def _part_size(self, upload_id: str) -> int:
        return self._part_sizes.get(upload_id, self._deferred_part_size)

    async def _read_info(self, upload_id: str) -> dict[str, Any]:
        try:
            data = b"".join([b async for b in self._objects.get(self._key(upload_id, ".info"))])
        except StorageError as exc:
            if is_missing(exc):
                raise UploadDataMissing(upload_id) from None
            raise
        try:
            info = json.loads(data)
        except ValueError:
            raise _CorruptInfo(f"corrupt info object of upload {upload_id}") from None
        return info if isinstance(info, dict) else {}

    async def _write_info(self, upload_id: str, info: dict[str, Any]) -> None:
        body = json.dumps(info).encode()
        await self._run(
            self._client.put_object,
            self._s.bucket,
            self._key(upload_id, ".info"),
            io.BytesIO(body),
            len(body),
            content_type="application/json",
            sse=self._s.write_sse,
        )

    async def _parts(self, upload_id: str, mp: str) -> list[Part]:
        parts: list[Part] = []
        marker: str | None = None
        while True:
            try:
                result = await self._run(
                    self._client._list_parts,
                    self._s.bucket,
                    self._key(upload_id),
                    mp,
                    max_parts=1000,
                    part_number_marker=marker,
                )
            except StorageError as exc:
                if is_missing(exc):
                    raise UploadDataMissing(upload_id) from None
                raise
            parts.extend(result.parts)
            if not result.is_truncated:
                return parts
            marker = str(result.next_part_number_marker)

    async def _live_parts(self, upload_id: str, mp: str) -> list[Part]:
        """The parts that hold the upload's bytes, in order (see the class)."""
        return _live(await self._parts(upload_id, mp))

    async def _tail_size(self, upload_id: str, parts_end: int) -> int:
        """The tail's size, if it starts where the parts end (else it is stale: 0)."""
        info = await self._objects.stat(self._key(upload_id, ".part"))
        if info is None or not _tail_fits(info.metadata.get(_TAIL_START), parts_end):
            return 0
        return info.size

    # --- the ChunkStore protocol ------------------------------------------------------------

    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        # The part size is chosen per upload: the preferred size, grown only as much as
        # this upload's length needs to stay within 10,000 parts.
        part = part_size_for(length if length is not None else MAX_OBJECT, self._s.part_size)
        if length is None:
            part = self._deferred_part_size
        await self._objects._ensure_sse()
        headers = {"Content-Type": "application/octet-stream"}
        sse = self._s.write_sse
        if sse is not None:
            headers.update(sse.headers())  # SSE-S3 or SSE-C: asked for when the upload starts
        mp = await self._run(
            self._client._create_multipart_upload, self._s.bucket, self._key(upload_id), headers
        )
        await self._write_info(upload_id, {"mp": mp, "part_size": part})
        self._forget(upload_id)
        self._info_cache[upload_id] = mp
        self._part_sizes[upload_id] = part

    async def append_limit(self, upload_id: str, offset: int) -> int:
        """Bytes this upload may still take before S3's 10,000-part limit."""
        await self._multipart_id(upload_id)
        return max(0, MAX_PARTS * self._part_size(upload_id) - offset)

    async def get_offset(self, upload_id: str) -> int:
        mp = await self._multipart_id(upload_id)
        if mp is not None:
            try:
                parts = await self._live_parts(upload_id, mp)
            except UploadDataMissing:
                if self._info_cache.pop(upload_id, None) is None:
                    raise
                # Another instance completed the upload after we cached its multipart id.
                mp = await self._multipart_id(upload_id)
            else:
                end = sum(p.size or 0 for p in parts)
                return end + await self._tail_size(upload_id, end)
        if mp is not None:
            try:
                parts = await self._live_parts(upload_id, mp)
            except UploadDataMissing:
                size = await self._completed_before_its_info(upload_id)
                if size is None:
                    raise
                return size
            end = sum(p.size or 0 for p in parts)
            return end + await self._tail_size(upload_id, end)
        info = await self._objects.stat(self._key(upload_id))
        if info is None:
            raise UploadDataMissing(upload_id)
        return info.size

    async def _completed_before_its_info(self, upload_id: str) -> int | None:
        """The size of the upload's object when its multipart upload, still named by its
        ``.info``, is gone because it was completed: a finish that stopped (a crash, S3
        unreachable) between the completion and the ``.info`` that says so. The ``.info`` is
        written now; None when there is no object either (the bytes are really gone)."""
        info = await self._objects.stat(self._key(upload_id))
        if info is None:
            return None
        await self._write_info(upload_id, {"mp": None})
        self._forget(upload_id)
        return info.size

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
        mp = await self._multipart_id(upload_id)
        if mp is None:
            async for block in source:
                if block:
                    raise StorageError("the upload is already complete")
            return 0
        if verify is not None:
            # Nothing may reach S3 before the chunk is verified: spool it to a temp file.
            with tempfile.TemporaryFile(prefix="tus-chunk-") as spool:
                size = 0
                async for block in source:
                    await asyncio.to_thread(spool.write, block)
                    size += len(block)
                verify()
                await asyncio.to_thread(spool.seek, 0)
                return await self._append(upload_id, mp, _file_blocks(spool, size), offset)
        return await self._append(upload_id, mp, source, offset)

    async def _append(self, upload_id: str, mp: str, source: ChunkSource, offset: int) -> int:
        """Append at ``offset``, which must still be the upload's: a part that reached S3
        late since the caller read it moves the offset, and nothing is written then."""
        parts = await self._live_parts(upload_id, mp)
        number = len(parts) + 1
        part_size = self._part_size(upload_id)
        end = sum(p.size or 0 for p in parts)
        # The tail stays in S3 until its bytes are stored again (in a part, or in the next
        # tail): a part upload that fails loses nothing that was acknowledged.
        tail, had_tail = await self._read_tail(upload_id, end, expect=offset)
        spool = bytearray(tail)
        first = number
        pending: list[asyncio.Task[None]] = []
        written = 0
        failed = False
        try:
            async for block in source:
                spool += block
                written += len(block)
                while len(spool) >= part_size:
                    if number > MAX_PARTS:
                        raise StorageLimitExceeded("the upload would exceed 10,000 S3 parts")
                    data = bytes(spool[:part_size])
                    del spool[:part_size]
                    while len(pending) >= self._in_flight:
                        await pending.pop(0)
                    pending.append(
                        asyncio.ensure_future(self._upload_part(upload_id, mp, number, data))
                    )
                    number += 1
            for task in pending:
                await task
            pending.clear()
        except BaseException:
            failed = True
            raise
        finally:
            for task in pending:
                # Let started parts finish; a part that failed leaves a gap, and the parts
                # stored after it never count (see the class).
                try:
                    await task
                except Exception:
                    failed = True
            if not failed:
                if spool:
                    start = end + (number - first) * part_size
                    await self._put_tail(upload_id, bytes(spool), start)
                elif had_tail:
                    await self._drop_tail(upload_id)  # its bytes are in a part now
        return written

    async def _upload_part(self, upload_id: str, mp: str, number: int, data: bytes) -> None:
        # SSE-C: every part carries the key (S3 encrypts each part with it; SeaweedFS 4.48
        # accepts a part without it and the completed object is then unreadable). SSE-S3
        # needs nothing here: it was set when the upload was created.
        ssec = self._s.ssec
        headers = ssec.headers() if ssec is not None else None
        await self._run(
            self._client._upload_part,
            self._s.bucket,
            self._key(upload_id),
            data,
            headers,
            mp,
            number,
        )

    async def _read_tail(
        self, upload_id: str, parts_end: int, *, expect: int | None = None
    ) -> tuple[bytes, bool]:
        """The tail's bytes (nothing if it is stale: it does not start at ``parts_end``, the
        parts hold its bytes), and whether there is a tail object. ``expect``: the offset
        the parts and the tail must end at, else StorageError."""
        key = self._key(upload_id, ".part")
        try:
            resp = await self._run(self._client.get_object, self._s.bucket, key, ssec=self._s.ssec)
        except StorageError as exc:
            if not is_missing(exc):
                raise
            resp = None
        data, start = b"", None
        if resp is not None:
            try:
                start = resp.headers.get(f"x-amz-meta-{_TAIL_START}")
                data = await self._run(resp.read)
            finally:
                resp.close()
                resp.release_conn()
        kept = data if _tail_fits(start, parts_end) else b""
        if expect is not None and parts_end + len(kept) != expect:
            raise StorageError(
                f"upload {upload_id} holds {parts_end + len(kept)} bytes, not {expect}: a part "
                "reached S3 late; resume from the offset HEAD reports"
            )
        return kept, resp is not None

    async def _drop_tail(self, upload_id: str) -> None:
        try:
            await self._objects.delete(self._key(upload_id, ".part"))
        except StorageError as exc:
            if not is_missing(exc):
                raise

    async def _put_tail(self, upload_id: str, data: bytes, start: int) -> None:
        await self._run(
            self._client.put_object,
            self._s.bucket,
            self._key(upload_id, ".part"),
            io.BytesIO(data),
            len(data),
            sse=self._s.write_sse,
            metadata={_TAIL_START: str(start)},
        )

    async def finish(self, upload_id: str) -> None:
        mp = await self._multipart_id(upload_id)
        if mp is None:
            return
        try:
            parts = await self._live_parts(upload_id, mp)
        except UploadDataMissing:
            if await self._completed_before_its_info(upload_id) is None:
                raise
            return
        tail, had_tail = await self._read_tail(upload_id, sum(p.size or 0 for p in parts))
        if tail:
            last = len(parts) + 1
            await self._upload_part(upload_id, mp, last, tail)
            # Parts listed past the tail's (left by a failed request) are not the upload's.
            parts = [p for p in await self._live_parts(upload_id, mp) if p.part_number <= last]
        key = self._key(upload_id)
        if not parts:
            # S3 cannot complete an empty multipart upload: a zero-byte object instead.
            with contextlib.suppress(StorageError):
                await self._run(self._client._abort_multipart_upload, self._s.bucket, key, mp)
            await self._run(
                self._client.put_object,
                self._s.bucket,
                key,
                io.BytesIO(b""),
                0,
                sse=self._s.write_sse,
            )
        else:
            # Only these parts: S3 drops the others (stored after a failed part).
            done = [Part(p.part_number, p.etag) for p in parts]
            await self._run(
                self._client._complete_multipart_upload,
                self._s.bucket,
                key,
                mp,
                done,
                self._s.ssec,
            )
        await self._write_info(upload_id, {"mp": None})
        self._forget(upload_id)
        if had_tail:
            # Its bytes are in the object now; one left behind goes with the upload's delete.
            with contextlib.suppress(StorageError):
                await self._drop_tail(upload_id)

    async def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        blocks = self._objects.get(self._key(upload_id), start, length)
        try:
            first = await anext(blocks, None)
        except StorageError as exc:
            if is_missing(exc):
                raise UploadDataMissing(upload_id) from None
            raise
        got = 0
        if first is not None:
            got += len(first)
            yield first
            async for block in blocks:
                got += len(block)
                yield block
        if got < length:
            # As the other chunk stores: a short read is an error, never a silent truncation.
            raise StorageError(f"upload {upload_id} is shorter than expected")

    async def delete(self, upload_id: str) -> None:
        """Everything of the upload: its multipart upload, its objects. What is gone already
        is fine; any other failure (S3 unreachable) is raised, and nothing is forgotten: the
        multipart upload is aborted before the ``.info`` naming it goes, so a later delete
        finds it again."""
        mp = self._info_cache.pop(upload_id, None)
        self._forget(upload_id)
        if mp is None:
            try:
                info = await self._read_info(upload_id)
            except (UploadDataMissing, _CorruptInfo):
                info = {}
            except StorageError as exc:
                if not is_missing(exc):
                    raise
                info = {}
            mp = info.get("mp") if isinstance(info.get("mp"), str) else None
        if mp is not None:
            try:
                await self._run(
                    self._client._abort_multipart_upload, self._s.bucket, self._key(upload_id), mp
                )
            except StorageError as exc:
                if not is_missing(exc):
                    self._info_cache[upload_id] = mp
                    raise
        for suffix in ("", ".part", ".info"):
            try:
                await self._objects.delete(self._key(upload_id, suffix))
            except StorageError as exc:
                if not is_missing(exc):
                    raise

    # --- what the orphan sweep asks (storage_backends.base.UploadLister) ---------------------

    async def list_uploads(
        self, *, modified_before: dt.datetime
    ) -> AsyncGenerator[StoredUpload, None]:
        """Each ``<id>.info`` last written before ``modified_before`` (S3's LastModified: the
        upload's creation, or its completion), then each multipart upload on ``<id>``
        initiated before it, by the S3 server's clock; a thousand keys per S3 request,
        through the store's thread pool.

        Only keys right under the prefix whose name is an upload id (and suffix) are
        looked at, never what lies deeper (a delimiter). Without a prefix, or with one that
        does not end in ``/``, the store refuses (:class:`ListingRefused`): the bucket's other
        objects, a committed file or a neighbouring prefix's among them, could carry such
        names.
        """
        if not self._prefix.endswith("/"):
            # Empty: the whole bucket; not ending in "/": "tus" would list "tus-b<id>.info"
            # of a neighbour's prefix "tus-b" as upload "-b<id>".
            raise ListingRefused(
                "the S3 chunk store lists its uploads only under a key prefix of its own, "
                "a folder ending in '/' (s3_chunk_prefix is "
                f"{self._prefix!r})"
            )
        listing = iter(
            self._client.list_objects(self._s.bucket, prefix=self._prefix, recursive=False)
        )
        while True:
            page = await self._run(_next_objects, listing, _LIST_PAGE)
            for obj in page:
                upload_id = self._upload_of(obj.object_name, ".info")
                modified = obj.last_modified
                if upload_id is not None and modified is not None and modified < modified_before:
                    yield StoredUpload(upload_id, modified)
            if len(page) < _LIST_PAGE:
                break
        async with contextlib.aclosing(self._multiparts(self._prefix, delimiter="/")) as mps:
            async for mp in mps:
                upload_id = self._upload_of(mp.object_name, "")
                started = mp.initiated_time
                if upload_id is not None and started is not None and started < modified_before:
                    yield StoredUpload(upload_id, started)

    async def remove_orphan(self, upload_id: str) -> None:
        """What :meth:`delete` removes (when the ``.info`` is this store's: a ``.info`` that
        is not is left alone, with an error), then every multipart upload on the upload's
        key: one no ``.info`` names is found only by listing them."""
        try:
            await self._read_info(upload_id)
        except UploadDataMissing:
            pass  # a multipart upload alone, or gone already
        else:
            await self.delete(upload_id)
        key = self._key(upload_id)
        async for mp in self._multiparts(key):
            if mp.object_name != key or mp.upload_id is None:
                continue
            try:
                await self._run(
                    self._client._abort_multipart_upload, self._s.bucket, key, mp.upload_id
                )
            except StorageError as exc:
                if not is_missing(exc):
                    raise

    def _upload_of(self, key: str | None, suffix: str) -> str | None:
        """The upload id of ``<prefix><id><suffix>``, or None."""
        if key is None or not key.startswith(self._prefix) or not key.endswith(suffix):
            return None
        upload_id = key[len(self._prefix) : len(key) - len(suffix)]
        return upload_id if UPLOAD_ID.fullmatch(upload_id) else None

    async def _multiparts(
        self, prefix: str, *, delimiter: str | None = None
    ) -> AsyncGenerator[Upload, None]:
        """The multipart uploads on keys under ``prefix``, a page (a request) at a time."""
        key_marker: str | None = None
        id_marker: str | None = None
        while True:
            result = await self._run(
                self._client._list_multipart_uploads,
                self._s.bucket,
                delimiter=delimiter,
                key_marker=key_marker,
                max_uploads=_LIST_PAGE,
                prefix=prefix,
                upload_id_marker=id_marker,
            )
            for mp in result.uploads:
                yield mp
            if not result.is_truncated:
                return
            # Where the next page starts: NextKeyMarker (S3, MinIO; SeaweedFS sends none and
            # goes on from the upload id alone), and NextUploadIdMarker, which is the page's
            # last upload (minio 7.2 does not read that element).
            next_key = result.next_key_marker
            next_id = result.uploads[-1].upload_id if result.uploads else None
            if (next_key, next_id) in ((None, None), (key_marker, id_marker)):
                raise StorageError("S3 listed multipart uploads without a way to go on")
            key_marker, id_marker = next_key, next_id

    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        """Server-side copy (UploadPartCopy) when every part but the last has 5 MiB.

        Otherwise, or when the server cannot copy SSE-C parts, the bytes are read and
        uploaded again through this process.
        """
        await self._objects._ensure_sse()
        sizes = []
        for part in parts:
            info = await self._objects.stat(self._key(part))
            if info is None:
                raise UploadDataMissing(part)
            sizes.append(info.size)
        key = self._key(upload_id)
        total = sum(sizes)
        if len(parts) > 1 and all(s >= MIN_PART for s in sizes[:-1]) and sizes[-1] > 0:
            ssec = self._s.ssec
            sources = [ComposeSource(self._s.bucket, self._key(p), ssec=ssec) for p in parts]
            if await self._compose(self._s.bucket, key, sources, sse=self._s.write_sse):
                await self._write_info(upload_id, {"mp": None})
                return total
        # An attempt before this one (failed, or stopped by a crash) may have left its
        # multipart upload: aborted, or nothing would ever remove it.
        await self._abort_left_over(upload_id)
        await self.create(upload_id, length=total)
        mp = self._info_cache[upload_id]

        async def chained() -> AsyncIterator[bytes]:
            for part in parts:
                async for block in self._objects.get(self._key(part)):
                    yield block

        try:
            await self._append(upload_id, mp, chained(), 0)
            await self.finish(upload_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._abort_left_over(upload_id)
            raise
        return total

    async def _abort_left_over(self, upload_id: str) -> None:
        """Abort the multipart upload the upload's ``.info`` names, if any, and remove its
        tail (gone: fine): the next attempt starts from nothing."""
        self._forget(upload_id)
        try:
            await self._objects.delete(self._key(upload_id, ".part"))
        except StorageError as exc:
            if not is_missing(exc):
                raise
        try:
            info = await self._read_info(upload_id)
        except (UploadDataMissing, _CorruptInfo):
            return
        mp = info.get("mp")
        if not isinstance(mp, str):
            return
        try:
            await self._run(
                self._client._abort_multipart_upload, self._s.bucket, self._key(upload_id), mp
            )
        except StorageError as exc:
            if not is_missing(exc):
                raise

    async def copy_into(
        self,
        upload_id: str,
        objects: object,
        key: str,
        *,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        """Commit by a server-side copy into the same S3 server's object store, if it is one.

        The source is read with this store's SSE-C key (if any), the copy is written with the
        object store's encryption. False (the caller then streams the bytes) when the stores
        are on different servers, or the server cannot copy a large SSE-C object in parts.
        """
        if not isinstance(objects, S3ObjectStore) or not objects.same_server(self._s):
            return False
        await objects._ensure_sse()
        ssec = self._s.ssec
        meta = {"Content-Type": content_type, **encode_meta(metadata)}
        size_info = await self._objects.stat(self._key(upload_id))
        if size_info is None:
            raise UploadDataMissing(upload_id)
        dest_sse = objects._s.write_sse
        if size_info.size >= 5 * 1024**3:
            compose = [ComposeSource(self._s.bucket, self._key(upload_id), ssec=ssec)]
            return await self._compose(objects.bucket, key, compose, sse=dest_sse, metadata=meta)
        await self._run(
            self._client.copy_object,
            objects.bucket,
            key,
            CopySource(self._s.bucket, self._key(upload_id), ssec=ssec),
            sse=dest_sse,
            metadata=meta,
            metadata_directive="REPLACE",
        )
        return True

    async def _compose(
        self,
        bucket: str,
        key: str,
        sources: list[ComposeSource],
        *,
        sse: Sse | None,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """compose_object (UploadPartCopy); False if the server cannot with SSE-C sources."""
        with_ssec = any(src.ssec is not None for src in sources)
        if with_ssec and not self._ssec_part_copy:
            return False
        try:
            await self._run(
                self._client.compose_object, bucket, key, sources, sse=sse, metadata=metadata
            )
        except StorageError as exc:
            if with_ssec and is_not_implemented(exc):
                self._ssec_part_copy = False
                return False
            raise
        return True


#: The tail's metadata key: the upload offset its first byte is at.
_TAIL_START = "tail-start"
#: Keys per listing request (S3's most).
_LIST_PAGE = 1000


def _next_objects(listing: Iterator[Object], n: int) -> list[Object]:
    """The next ``n`` entries of an object listing (the SDK requests pages as it goes)."""
    out: list[Object] = []
    for obj in listing:
        out.append(obj)
        if len(out) >= n:
            break
    return out


def _tail_fits(start: str | None, parts_end: int) -> bool:
    """Whether a tail that starts at ``start`` continues parts ending at ``parts_end``. A tail
    written before tails recorded their start (None) is taken as it was then."""
    return start is None or start == str(parts_end)


def _live(parts: list[Part]) -> list[Part]:
    """The parts that count, in order: from part 1 up to the first gap. A part number listed
    twice (a server may list a part uploaded again twice) counts once, as its latest upload."""
    by_number: dict[int, Part] = {}
    for part in parts:
        seen = by_number.get(part.part_number)
        if seen is None or _not_older(part, seen):
            by_number[part.part_number] = part
    live: list[Part] = []
    while len(live) + 1 in by_number:
        live.append(by_number[len(live) + 1])
    return live


def _not_older(part: Part, than: Part) -> bool:
    if part.last_modified is None or than.last_modified is None:
        return True
    return bool(part.last_modified >= than.last_modified)


async def _file_blocks(fh: Any, size: int, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        data = await asyncio.to_thread(fh.read, min(block, left))
        if not data:
            raise StorageError("spool file ended early")
        left -= len(data)
        yield data


class _CorruptInfo(StorageError):
    """The ``.info`` object of an upload is not this store's JSON."""
