"""S3 / MinIO object store through the ``minio`` SDK.

The SDK is synchronous: every call runs in a bounded thread pool owned by the store, so a
slow S3 never stalls the event loop, and the pool size bounds what one instance asks of S3.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import io
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import aiofiles.os
from minio import Minio
from minio.error import S3Error

from .base import ObjectInfo, StorageError

__all__ = ["S3ObjectStore", "S3Settings"]

T = TypeVar("T")
_READ_BLOCK = 256 * 1024
_MIN_PART = 5 * 1024 * 1024
_MAX_PARTS = 10_000


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
    ) -> None:
        if part_size < _MIN_PART:
            raise ValueError("part_size must be at least 5 MiB")
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region or None
        self.secure = secure
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self.max_workers = max_workers

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


def _encode_meta(metadata: Mapping[str, str]) -> dict[str, str]:
    # S3 user metadata must be ASCII: percent-encode values (names are ours, ASCII).
    return {k: quote(v, safe=" !#$&'()*+,/:;=?@[]~") for k, v in metadata.items()}


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

    async def open(self) -> None:
        if not await self._run(self._client.bucket_exists, self._s.bucket):
            try:
                await self._run(self._client.make_bucket, self._s.bucket)
            except StorageError:
                if not await self._run(self._client.bucket_exists, self._s.bucket):
                    raise

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
        size = (await aiofiles.os.stat(path)).st_size
        await self._run(
            self._client.fput_object,
            self._s.bucket,
            key,
            str(path),
            content_type=content_type,
            metadata=_encode_meta(metadata),
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
        loop = asyncio.get_running_loop()
        reader = _AsyncToSyncReader(source, loop)
        await self._run(
            self._client.put_object,
            self._s.bucket,
            key,
            reader,
            size,
            content_type=content_type,
            metadata=_encode_meta(metadata),
            part_size=part_size_for(size, self._s.part_size),
            num_parallel_uploads=1,
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = await self._run(self._client.stat_object, self._s.bucket, key)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise
        meta = {}
        for k, v in (st.metadata or {}).items():
            low = k.lower()
            if low.startswith("x-amz-meta-"):
                meta[low[len("x-amz-meta-") :]] = unquote(v)
        return ObjectInfo(
            key=key,
            size=st.size or 0,
            content_type=st.content_type or "application/octet-stream",
            metadata=meta,
        )

    async def get(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        kwargs: dict[str, Any] = {"offset": start}
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
        headers = {}
        if filename is not None:
            headers["response-content-disposition"] = filename
        url: str = await self._run(
            self._client.presigned_get_object,
            self._s.bucket,
            key,
            expires=expires,
            response_headers=headers or None,
        )
        return url


class _AsyncToSyncReader(io.RawIOBase):
    """A blocking file-like over an async byte source, for the SDK's worker thread."""

    def __init__(self, source: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._it = source.__aiter__()
        self._loop = loop
        self._buf = b""
        self._eof = False

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
                break
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        if size < 0:
            self._buf = b""
            return data
        self._buf = data[size:]
        return data[:size]

    async def _next(self) -> bytes | None:
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            return None
