"""The S3 object store: finished files as objects, through the ``minio`` SDK's thread pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import io
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiofiles.os
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.sse import SseCustomerKey

from ..base import ObjectInfo, StorageError, StorageFull
from .settings import (
    READ_BLOCK,
    S3Settings,
    T,
    decode_meta,
    encode_meta,
    is_full,
    part_size_for,
)

__all__ = ["S3ObjectStore"]


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
        started = time.perf_counter()
        try:
            job = self._pool.submit(fn, *args, **kwargs)
            future = asyncio.wrap_future(job)
            # Every thread may be held by calls to an S3 that does not answer (each for its
            # retries' read timeouts): a call that cannot even start within one attempt's
            # time fails then, rather than queueing behind them for minutes.
            done, _ = await asyncio.wait(
                {future}, timeout=self._s.connect_timeout + self._s.read_timeout
            )
            if not done and job.cancel():
                raise StorageError("S3 is not answering: every connection to it is waiting")
            return await future
        except S3Error as exc:
            if is_full(exc):
                raise StorageFull(f"S3 is full: {exc.code}: {exc.message}") from exc
            raise StorageError(f"S3 {exc.code}: {exc.message}") from exc
        except (ServerError, InvalidResponseError) as exc:
            # An answer that is not S3's XML (a proxy's or rate limiter's 429, 413, 503 page),
            # or a status minio has no error for: the store failed, not the client.
            if isinstance(exc, ServerError) and exc.status_code == 507:
                raise StorageFull(f"S3 is full: {exc}") from exc
            raise StorageError(f"S3 error: {exc}") from exc
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
            metadata=encode_meta(metadata),
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
            metadata=encode_meta(metadata),
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
                meta[low[len("x-amz-meta-") :]] = decode_meta(v)
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
                block = await self._run(resp.read, READ_BLOCK)
                if not block:
                    break
                yield block
        finally:
            resp.close()
            resp.release_conn()

    async def delete(self, key: str) -> None:
        await self._run(self._client.remove_object, self._s.bucket, key)

    async def presign_get(
        self,
        key: str,
        *,
        expires: dt.timedelta,
        filename: str | None,
        content_disposition: str | None = None,
    ) -> str | None:
        """A presigned GET URL, or None with SSE-C.

        An SSE-C object can only be read by a request carrying the key in its headers: a
        browser following a URL cannot, and handing it the key would defeat SSE-C. None makes
        the API stream the download through this server instead. (SSE-S3 objects are
        decrypted by S3 for any authorized request, presigned ones included.)
        """
        if self._s.ssec is not None:
            return None
        # What S3 answers with: never the stored type (a browser must not render an upload),
        # always an attachment.
        headers = {"response-content-type": "application/octet-stream"}
        if content_disposition is None and filename is not None:
            plain = "".join("_" if _is_control(ch) else ch for ch in filename)
            ascii_name = plain.encode("ascii", "replace").decode()
            for bad in '?"\\':
                ascii_name = ascii_name.replace(bad, "_")
            content_disposition = (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(plain, safe='')}"
            )
        if content_disposition is not None:
            if any(_is_control(ch) for ch in content_disposition):
                raise ValueError("a Content-Disposition must not hold control characters")
            headers["response-content-disposition"] = content_disposition
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
            metadata={"Content-Type": info.content_type, **encode_meta(metadata)},
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


def _is_control(ch: str) -> bool:
    """CR, LF and the other characters a header value must not carry."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


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
