"""S3 / MinIO object store through the ``minio`` SDK.

The SDK is synchronous: every call runs in a bounded thread pool owned by the store, so a
slow S3 never stalls the event loop, and the pool size bounds what one instance asks of S3.

Server-side encryption (``S3Settings.sse``): ``"s3"`` asks S3 to encrypt every object with its
own keys (SSE-S3), ``"c"`` with a key this server holds and sends with every request (SSE-C).
Both stores apply it to every call that writes or reads object data. Before a store writes
anything (at ``open()``, or at the first write if ``open()`` failed), it proves with a probe
object that the S3 server really encrypts; until a probe passes, every write is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import io
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import aiofiles.os
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Part
from minio.error import S3Error
from minio.sse import Sse, SseCustomerKey, SseS3

from .base import (
    ChunkSource,
    ObjectInfo,
    StorageError,
    StorageLimitExceeded,
    StoreCapabilities,
    UploadDataMissing,
)

__all__ = ["SSE_MODES", "S3ChunkStore", "S3ObjectStore", "S3Settings", "part_size_for"]

T = TypeVar("T")
_READ_BLOCK = 256 * 1024
_MIN_PART = 5 * 1024 * 1024
_MAX_PARTS = 10_000

#: Server-side encryption modes: none, SSE-S3 (keys managed by S3), SSE-C (our key).
SSE_MODES = {"": "none", "s3": "SSE-S3", "c": "SSE-C"}


class S3Settings:
    """Connection settings shared by the S3 object store and the S3 chunk store."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str | None = None,
        secure: bool = True,
        part_size: int = 16 * 1024 * 1024,
        parallel_parts: int = 4,
        max_workers: int = 16,
        sse: str = "",
        sse_customer_key: bytes | None = None,
    ) -> None:
        if part_size < _MIN_PART:
            raise ValueError("part_size must be at least 5 MiB")
        if sse not in SSE_MODES:
            raise ValueError("sse must be '' (none), 's3' (SSE-S3) or 'c' (SSE-C)")
        if (sse == "c") != (sse_customer_key is not None):
            raise ValueError("sse_customer_key is required with sse='c', and only then")
        self._ssec = SseCustomerKey(sse_customer_key) if sse_customer_key is not None else None
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region or None
        self.secure = secure
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self.max_workers = max_workers
        self.sse = sse

    @property
    def sse_label(self) -> str:
        """The encryption mode for messages: "none", "SSE-S3" or "SSE-C"."""
        return SSE_MODES[self.sse]

    @property
    def write_sse(self) -> Sse | None:
        """What to pass as ``sse=`` when an object (or a multipart upload) is created."""
        if self.sse == "s3":
            return SseS3()
        return self._ssec

    @property
    def ssec(self) -> SseCustomerKey | None:
        """The SSE-C key every read (get, stat, copy source) and part upload must carry."""
        return self._ssec

    def client(self) -> Minio:
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
        )


def part_size_for(size: int, preferred: int) -> int:
    """The smallest part size >= preferred that keeps ``size`` within 10,000 parts."""
    part = max(preferred, _MIN_PART)
    while size > part * _MAX_PARTS:
        part *= 2
    return part


_EMPTY = "%"  # quote() never produces a lone '%': it stands for an empty value


def _encode_meta(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 user metadata must be ASCII, and HTTP trims spaces and drops empty values:
    percent-encode every value (spaces included) and mark empty ones."""
    return {k: quote(v, safe="!#$&'()*+,/:;=?@[]~") or _EMPTY for k, v in metadata.items()}


def _decode_meta(value: str) -> str:
    return "" if value == _EMPTY else unquote(value)


class S3ObjectStore:
    kind = "s3"

    def __init__(
        self,
        settings: S3Settings,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._observe = observe
        self._s = settings
        self._client = settings.client()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="s3"
        )
        #: Where the encryption probe is written (the chunk store sets its prefix).
        self._probe_prefix = ""
        self._sse_proven = not settings.sse
        self._sse_lock = asyncio.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except S3Error as exc:
            raise StorageError(f"S3 {exc.code}: {exc.message}") from exc
        except (OSError, ValueError) as exc:  # connection refused, urllib3 errors, ...
            raise StorageError(f"S3 unreachable: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("urllib3"):
                raise StorageError(f"S3 unreachable: {exc}") from exc
            raise
        finally:
            if self._observe is not None:
                self._observe(getattr(fn, "__name__", "call"), time.perf_counter() - started)

    @property
    def bucket(self) -> str:
        return self._s.bucket

    def same_server(self, other: S3Settings) -> bool:
        return (self._s.endpoint, self._s.access_key, self._s.secure) == (
            other.endpoint,
            other.access_key,
            other.secure,
        )

    async def open(self) -> None:
        if not await self._run(self._client.bucket_exists, self._s.bucket):
            try:
                await self._run(self._client.make_bucket, self._s.bucket)
            except StorageError:
                if not await self._run(self._client.bucket_exists, self._s.bucket):
                    raise
        await self._ensure_sse()

    async def _ensure_sse(self) -> None:
        """Prove the configured encryption works, once, before anything is written.

        The application goes on when the object store fails to open (commits wait and are
        retried), so open() alone could not stop a write to a server that ignores the SSE
        headers: every write path calls this first.
        """
        if self._sse_proven:
            return
        async with self._sse_lock:
            if not self._sse_proven:
                await self._probe_sse()
                self._sse_proven = True

    async def _probe_sse(self) -> None:
        """Write, check and read back a tiny object with the configured encryption.

        Some S3 servers ignore encryption headers they do not implement and store plaintext,
        others refuse them: either way this raises StorageError naming the mode. An S3 that
        cannot be reached raises its usual error (the probe runs again at the next write).
        """
        key = f"{self._probe_prefix}.tusserver-sse-probe-{secrets.token_hex(8)}"
        body = secrets.token_bytes(64)
        mode = f"{self._s.sse_label} (s3_sse = {self._s.sse!r})"
        try:
            await self._run(
                self._client.put_object,
                self._s.bucket,
                key,
                io.BytesIO(body),
                len(body),
                sse=self._s.write_sse,
            )
            st = await self._run(self._client.stat_object, self._s.bucket, key, ssec=self._s.ssec)
            headers = {k.lower(): v for k, v in (st.metadata or {}).items()}
            if self._s.sse == "s3":
                said = headers.get("x-amz-server-side-encryption")
            else:
                said = headers.get("x-amz-server-side-encryption-customer-algorithm")
            if said != "AES256":
                raise StorageError(f"the probe object was stored unencrypted (said {said!r})")
            if await self._read_probe(key, self._s.ssec) != body:
                raise StorageError("the probe object read back differently")
            if self._s.ssec is not None:
                try:
                    await self._read_probe(key, None)
                except StorageError as exc:
                    if not isinstance(exc.__cause__, S3Error):
                        raise  # unreachable, not a refusal
                else:
                    raise StorageError("the probe object could be read without the key")
        except StorageError as exc:
            if exc.__cause__ is not None and not isinstance(exc.__cause__, S3Error):
                raise  # unreachable: says nothing about encryption
            raise StorageError(
                f"the S3 server at {self._s.endpoint} does not support server-side encryption "
                f"{mode}: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(StorageError):
                await self.delete(key)

    async def _read_probe(self, key: str, ssec: SseCustomerKey | None) -> bytes:
        def read() -> bytes:
            resp = self._client.get_object(self._s.bucket, key, ssec=ssec)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        return await self._run(read)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        await self._ensure_sse()
        size = (await aiofiles.os.stat(path)).st_size
        await self._run(
            self._client.fput_object,
            self._s.bucket,
            key,
            str(path),
            content_type=content_type,
            metadata=_encode_meta(metadata),
            sse=self._s.write_sse,
            part_size=part_size_for(size, self._s.part_size),
            num_parallel_uploads=self._s.parallel_parts,
        )

    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        await self._ensure_sse()
        loop = asyncio.get_running_loop()
        reader = _AsyncToSyncReader(source, loop, size)
        await self._run(
            self._client.put_object,
            self._s.bucket,
            key,
            reader,
            size,
            content_type=content_type,
            metadata=_encode_meta(metadata),
            sse=self._s.write_sse,
            part_size=part_size_for(size, self._s.part_size),
            num_parallel_uploads=1,
        )
        if await reader.has_more():
            await self.delete(key)
            raise StorageError("the source has more bytes than its declared size")

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = await self._run(self._client.stat_object, self._s.bucket, key, ssec=self._s.ssec)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        meta = {}
        for k, v in (st.metadata or {}).items():
            low = k.lower()
            if low.startswith("x-amz-meta-"):
                meta[low[len("x-amz-meta-") :]] = _decode_meta(v)
        return ObjectInfo(
            key=key,
            size=st.size or 0,
            content_type=st.content_type or "application/octet-stream",
            metadata=meta,
        )

    async def get(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        kwargs: dict[str, Any] = {"offset": start, "ssec": self._s.ssec}
        if length is not None:
            if length == 0:
                return
            kwargs["length"] = length
        resp = await self._run(self._client.get_object, self._s.bucket, key, **kwargs)
        try:
            while True:
                block = await self._run(resp.read, _READ_BLOCK)
                if not block:
                    break
                yield block
        finally:
            resp.close()
            resp.release_conn()

    async def delete(self, key: str) -> None:
        await self._run(self._client.remove_object, self._s.bucket, key)

    async def presign_get(
        self, key: str, *, expires: dt.timedelta, filename: str | None
    ) -> str | None:
        """A presigned GET URL, or None with SSE-C.

        An SSE-C object can only be read by a request carrying the key in its headers: a
        browser following a URL cannot, and handing it the key would defeat SSE-C. None makes
        the API stream the download through this server instead. (SSE-S3 objects are
        decrypted by S3 for any authorized request, presigned ones included.)
        """
        if self._s.ssec is not None:
            return None
        headers = {}
        if filename is not None:
            ascii_name = filename.encode("ascii", "replace").decode()
            for bad in '?"\\':
                ascii_name = ascii_name.replace(bad, "_")
            headers["response-content-disposition"] = (
                f'attachment; filename="{ascii_name}"; '
                f"filename*=UTF-8''{quote(filename, safe='')}"
            )
        url: str = await self._run(
            self._client.presigned_get_object,
            self._s.bucket,
            key,
            expires=expires,
            response_headers=headers or None,
        )
        return url

    async def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """New user metadata, same bytes: a server-side copy of the object onto itself.

        The bytes never pass through this process (S3 has no other way to change metadata).
        """
        info = await self.stat(key)
        if info is None:
            raise StorageError(f"object {key} is missing")
        await self._run(
            self._client.copy_object,
            self._s.bucket,
            key,
            CopySource(self._s.bucket, key, ssec=self._s.ssec),
            sse=self._s.write_sse,
            metadata={"Content-Type": info.content_type, **_encode_meta(metadata)},
            metadata_directive="REPLACE",
        )

    async def list_keys(self) -> AsyncIterator[str]:
        """Every object key in the bucket, listed a page at a time in a worker thread."""
        listing = iter(self._client.list_objects(self._s.bucket, recursive=True))
        while True:
            page = await self._run(_next_page, listing, 1000)
            for name in page:
                yield name
            if len(page) < 1000:
                return


def _next_page(listing: Any, n: int) -> list[str]:
    out: list[str] = []
    for obj in listing:
        if obj.object_name is not None and not obj.is_dir:
            out.append(obj.object_name)
        if len(out) >= n:
            break
    return out


class _AsyncToSyncReader(io.RawIOBase):
    """A blocking file-like over an async byte source, for the SDK's worker thread."""

    def __init__(
        self, source: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop, size: int
    ) -> None:
        self._it = source.__aiter__()
        self._loop = loop
        self._buf = b""
        self._eof = False
        self._left = size  # bytes the source must still deliver, exactly

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunks = [self._buf]
        have = len(self._buf)
        while not self._eof and (size < 0 or have < size):
            fut = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            block = fut.result()
            if block is None:
                self._eof = True
                if self._left != 0:
                    raise StorageError(f"the source ended {self._left} bytes early")
                break
            self._left -= len(block)
            if self._left < 0:
                raise StorageError("the source has more bytes than its declared size")
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        if size < 0:
            self._buf = b""
            return data
        self._buf = data[size:]
        return data[:size]

    async def has_more(self) -> bool:
        """After the SDK read its ``size`` bytes: does the source still hold any?"""
        if self._buf:
            return True
        if self._eof:
            return False
        while (block := await self._next()) is not None:
            if block:
                return True
        return False

    async def _next(self) -> bytes | None:
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            return None


class S3ChunkStore:
    """Uploads in progress as S3 multipart uploads: no instance keeps local state.

    Layout under ``prefix``: ``<id>`` is the multipart upload (the object once complete),
    ``<id>.info`` records its multipart id, ``<id>.part`` holds a tail shorter than the 5 MiB
    minimum part size, prepended to the next PATCH. The offset is always derived from what S3
    holds (listed parts + tail), so a restart of any instance loses nothing acknowledged.
    The tail object is removed before the parts that include its bytes are uploaded: a crash
    in between makes the offset smaller (the client resends), never larger.

    With server-side encryption all three are encrypted: the multipart upload is created with
    the SSE headers and, with SSE-C, every part is uploaded (and the upload completed) with
    the key too; the tail and info objects are written and read like any other object.
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
        limit = min(max_size or _MAX_OBJECT, _MAX_OBJECT)
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
        info = await self._read_info(upload_id)
        mp = info.get("mp")
        part = info.get("part_size")
        if isinstance(part, int) and part >= _MIN_PART:
            self._part_sizes[upload_id] = part
        if isinstance(mp, str):
            self._info_cache[upload_id] = mp
            return mp
        return None

    def _part_size(self, upload_id: str) -> int:
        return self._part_sizes.get(upload_id, self._deferred_part_size)

    async def _read_info(self, upload_id: str) -> dict[str, Any]:
        try:
            data = b"".join([b async for b in self._objects.get(self._key(upload_id, ".info"))])
        except StorageError as exc:
            if _is_missing(exc):
                raise UploadDataMissing(upload_id) from None
            raise
        try:
            info = json.loads(data)
        except ValueError:
            raise StorageError(f"corrupt info object of upload {upload_id}") from None
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
                if _is_missing(exc):
                    raise UploadDataMissing(upload_id) from None
                raise
            parts.extend(result.parts)
            if not result.is_truncated:
                return _contiguous(parts)
            marker = str(result.next_part_number_marker)

    async def _tail_size(self, upload_id: str) -> int:
        info = await self._objects.stat(self._key(upload_id, ".part"))
        return 0 if info is None else info.size

    # --- the ChunkStore protocol ------------------------------------------------------------

    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        # The part size is chosen per upload: the preferred size, grown only as much as
        # this upload's length needs to stay within 10,000 parts.
        part = part_size_for(length if length is not None else _MAX_OBJECT, self._s.part_size)
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
        self._info_cache[upload_id] = mp
        self._part_sizes[upload_id] = part

    async def append_limit(self, upload_id: str, offset: int) -> int:
        """Bytes this upload may still take before S3's 10,000-part limit."""
        await self._multipart_id(upload_id)
        return max(0, _MAX_PARTS * self._part_size(upload_id) - offset)

    async def get_offset(self, upload_id: str) -> int:
        mp = await self._multipart_id(upload_id)
        if mp is not None:
            try:
                parts = await self._parts(upload_id, mp)
            except UploadDataMissing:
                if self._info_cache.pop(upload_id, None) is None:
                    raise
                # Another instance completed the upload after we cached its multipart id.
                mp = await self._multipart_id(upload_id)
            else:
                return sum(p.size or 0 for p in parts) + await self._tail_size(upload_id)
        if mp is not None:
            parts = await self._parts(upload_id, mp)
            return sum(p.size or 0 for p in parts) + await self._tail_size(upload_id)
        info = await self._objects.stat(self._key(upload_id))
        if info is None:
            raise UploadDataMissing(upload_id)
        return info.size

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
                return await self._append(upload_id, mp, _file_blocks(spool, size))
        return await self._append(upload_id, mp, source)

    async def _append(self, upload_id: str, mp: str, source: ChunkSource) -> int:
        parts = await self._parts(upload_id, mp)
        number = len(parts) + 1
        part_size = self._part_size(upload_id)
        tail = await self._take_tail(upload_id)
        spool = bytearray(tail)
        pending: list[asyncio.Task[None]] = []
        written = 0
        failed = False
        try:
            async for block in source:
                spool += block
                written += len(block)
                while len(spool) >= part_size:
                    if number > _MAX_PARTS:
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
                # Let started parts finish; a part that failed leaves a gap, and only the
                # parts before the first gap count (see _contiguous).
                try:
                    await task
                except Exception:
                    failed = True
            if spool and not failed:
                await self._put_tail(upload_id, bytes(spool))
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

    async def _take_tail(self, upload_id: str) -> bytes:
        key = self._key(upload_id, ".part")
        try:
            data = b"".join([b async for b in self._objects.get(key)])
        except StorageError as exc:
            if _is_missing(exc):
                return b""
            raise
        await self._objects.delete(key)
        return data

    async def _put_tail(self, upload_id: str, data: bytes) -> None:
        await self._run(
            self._client.put_object,
            self._s.bucket,
            self._key(upload_id, ".part"),
            io.BytesIO(data),
            len(data),
            sse=self._s.write_sse,
        )

    async def finish(self, upload_id: str) -> None:
        mp = await self._multipart_id(upload_id)
        if mp is None:
            return
        parts = await self._parts(upload_id, mp)
        tail = await self._take_tail(upload_id)
        if tail:
            await self._upload_part(upload_id, mp, len(parts) + 1, tail)
            parts = await self._parts(upload_id, mp)
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
            done = [Part(p.part_number, p.etag) for p in sorted(parts, key=lambda p: p.part_number)]
            await self._run(
                self._client._complete_multipart_upload,
                self._s.bucket,
                key,
                mp,
                done,
                self._s.ssec,
            )
        await self._write_info(upload_id, {"mp": None})
        self._info_cache.pop(upload_id, None)
        self._part_sizes.pop(upload_id, None)

    async def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        blocks = self._objects.get(self._key(upload_id), start, length)
        try:
            first = await anext(blocks, None)
        except StorageError as exc:
            if _is_missing(exc):
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
        mp = self._info_cache.pop(upload_id, None)
        if mp is None:
            with contextlib.suppress(StorageError):
                info = await self._read_info(upload_id)
                mp = info.get("mp") if isinstance(info.get("mp"), str) else None
        if mp is not None:
            with contextlib.suppress(StorageError):
                await self._run(
                    self._client._abort_multipart_upload, self._s.bucket, self._key(upload_id), mp
                )
        for suffix in ("", ".part", ".info"):
            with contextlib.suppress(StorageError):
                await self._objects.delete(self._key(upload_id, suffix))

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
        if len(parts) > 1 and all(s >= _MIN_PART for s in sizes[:-1]) and sizes[-1] > 0:
            ssec = self._s.ssec
            sources = [ComposeSource(self._s.bucket, self._key(p), ssec=ssec) for p in parts]
            if await self._compose(self._s.bucket, key, sources, sse=self._s.write_sse):
                await self._write_info(upload_id, {"mp": None})
                return total
        await self.create(upload_id, length=total)
        mp = self._info_cache[upload_id]

        async def chained() -> AsyncIterator[bytes]:
            for part in parts:
                async for block in self._objects.get(self._key(part)):
                    yield block

        await self._append(upload_id, mp, chained())
        await self.finish(upload_id)
        return total

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
        meta = {"Content-Type": content_type, **_encode_meta(metadata)}
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
            if with_ssec and _is_not_implemented(exc):
                self._ssec_part_copy = False
                return False
            raise
        return True


_MAX_OBJECT = 5 * 1024**4


def _contiguous(parts: list[Part]) -> list[Part]:
    """Parts 1..k without a gap: bytes after a failed part never count as received."""
    ordered = sorted(parts, key=lambda p: p.part_number)
    result = []
    for expected, part in enumerate(ordered, start=1):
        if part.part_number != expected:
            break
        result.append(part)
    return result


def _is_not_implemented(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code == "NotImplemented"


def _is_missing(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code in (
        "NoSuchKey",
        "NoSuchObject",
        "NoSuchUpload",
        "NotFound",
    )


async def _file_blocks(fh: Any, size: int, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        data = await asyncio.to_thread(fh.read, min(block, left))
        if not data:
            raise StorageError("spool file ended early")
        left -= len(data)
        yield data
