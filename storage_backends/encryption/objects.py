"""The encrypted object store: any object store, every object sealed before it leaves.

:class:`EncryptedObjectStore` wraps any :class:`ObjectStore` (local disk, or S3 as
client-side encryption). An object's envelope travels in its metadata; a Range read opens
only the segments it touches (from the local file itself, or from a ranged S3 read).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..base import Lifecycle, ObjectInfo, ObjectStore, StorageError
from ..local import LocalObjectStore
from .keys import (
    CHECK_NAME,
    EncryptionKeyError,
    Envelope,
    IntegrityError,
    KeyRing,
    RotationReport,
    strip_envelope,
)
from .segments import (
    DEFAULT_SEGMENT_SIZE,
    SegmentCipher,
    closing,
    open_file,
    open_range,
    seal_stream,
    sealed_size,
    segment_count,
)

__all__ = ["EncryptedObjectStore", "MetadataRewriter"]


@runtime_checkable
class MetadataRewriter(Protocol):
    """Optional capability of an object store, used by key rotation."""

    async def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """Replace the object's metadata without touching its bytes."""

    def list_keys(self) -> AsyncIterator[str]:
        """Every object key in the store."""


class EncryptedObjectStore:
    """Any object store, with every object sealed before it leaves the process.

    An object without an envelope is an integrity error when read: whoever can write to the
    store could otherwise substitute plaintext unnoticed. Only with ``allow_plaintext`` (a
    migration setting) are objects written before encryption was turned on read as they are.
    Presigned URLs are never handed out: the client could not decrypt what it fetched.
    """

    def __init__(
        self,
        inner: ObjectStore,
        keys: KeyRing,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        check_key: str = CHECK_NAME,
        allow_plaintext: bool = False,
    ) -> None:
        self._inner = inner
        self._allow_plaintext = allow_plaintext
        self._keys = keys
        self._segment = segment_size
        self._check_key = check_key
        self.kind = inner.kind

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment of the objects this store writes."""
        return self._segment

    async def open(self) -> None:
        await self._inner.open()
        records = await self._read_check()
        self._keys.verify_records(records, f"the {self.kind} object store")
        if self._keys.active_id not in records:
            records[self._keys.active_id] = self._keys.check_record(self._keys.active_id)
            await self._write_check(records)

    async def close(self) -> None:
        if isinstance(self._inner, Lifecycle):
            await self._inner.close()

    async def _read_check(self) -> dict[str, str]:
        if await self._inner.stat(self._check_key) is None:
            return {}
        raw = b"".join([b async for b in self._inner.get(self._check_key)])
        try:
            doc = json.loads(raw)
        except ValueError:
            raise EncryptionKeyError("the store's key check record is damaged") from None
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    async def _write_check(self, records: Mapping[str, str]) -> None:
        data = json.dumps(dict(records)).encode()

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._inner.put_stream(
            self._check_key,
            one(),
            size=len(data),
            content_type="application/json",
            metadata={},
        )

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        size = (await asyncio.to_thread(os.stat, path)).st_size
        await self.put_stream(
            key, _file_blocks(path), size=size, content_type=content_type, metadata=metadata
        )
        if consume:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, path)

    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        data_key, env = self._keys.new_envelope(key, self._segment, size)
        cipher = SegmentCipher(data_key, self._segment)
        await self._inner.put_stream(
            key,
            seal_stream(cipher, source, size),
            size=sealed_size(size, self._segment, finished=True),
            content_type=content_type,
            metadata={**strip_envelope(metadata), **env.to_metadata()},
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        info = await self._inner.stat(key)
        if info is None:
            return None
        env = Envelope.from_metadata(info.metadata)
        if env is None:
            return info
        return ObjectInfo(
            key=key,
            size=env.size if env.size is not None else 0,
            content_type=info.content_type,
            metadata=strip_envelope(info.metadata),
        )

    async def get(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        inner = self._inner
        blocks = (
            self._get_local(inner, key, start, length)
            if isinstance(inner, LocalObjectStore)
            else self._get_generic(key, start, length)
        )
        async with closing(blocks):
            async for block in blocks:
                yield block

    def _plaintext(self, key: str) -> None:
        """An object without an envelope is about to be read: allowed only when configured."""
        if not self._allow_plaintext:
            raise IntegrityError(
                f"object {key} has no encryption envelope (set encryption_allow_plaintext "
                "only to read objects stored before encryption was turned on)"
            )

    def _opener(self, key: str, env: Envelope, stored_size: int) -> tuple[SegmentCipher, int]:
        """(cipher, plaintext size) of an object, once its envelope is checked."""
        if env.size is None:
            raise IntegrityError(f"object {key} has no recorded size")
        if stored_size != sealed_size(env.size, env.segment_size, finished=True):
            raise IntegrityError(f"object {key} has the wrong length for its envelope")
        return SegmentCipher(self._keys.unwrap(env, key), env.segment_size), env.size

    async def _get_local(
        self, inner: LocalObjectStore, key: str, start: int, length: int | None
    ) -> AsyncIterator[bytes]:
        """The object's file itself, read in whole sealed segments (see open_file).

        The open, fstat and metadata read (the envelope: the open file's extended attribute,
        else its sidecar) are inline, as storage_backends.fileio does metadata calls: a Range
        request costs one trip to a worker thread, for the read.
        """
        path = inner.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"object {key} is missing") from None
        try:
            stored = os.fstat(fd).st_size
            env = Envelope.from_metadata(inner.read_meta(key, fd)[1])
            if env is not None:
                cipher, size = self._opener(key, env, stored)
                end = size if length is None else min(size, start + length)
                final = segment_count(size, cipher.segment_size, finished=True) - 1
                async with closing(open_file(fd, cipher, start, end, stored, final)) as blocks:
                    async for block in blocks:
                        yield block
                return
        finally:
            os.close(fd)
        self._plaintext(key)
        async with closing(inner.get(key, start, length)) as plain:  # from before encryption
            async for block in plain:
                yield block

    async def _get_generic(self, key: str, start: int, length: int | None) -> AsyncIterator[bytes]:
        info = await self._inner.stat(key)
        if info is None:
            raise StorageError(f"object {key} is missing")
        env = Envelope.from_metadata(info.metadata)
        if env is None:
            self._plaintext(key)
            async with closing(self._inner.get(key, start, length)) as plain:
                async for block in plain:
                    yield block
            return
        cipher, size = self._opener(key, env, info.size)

        def fetch(at: int, n: int) -> AsyncIterator[bytes]:
            return self._inner.get(key, at, n)

        async with closing(open_range(cipher, size, start, length, fetch)) as blocks:
            async for block in blocks:
                yield block

    async def delete(self, key: str) -> None:
        await self._inner.delete(key)

    async def presign_get(
        self,
        key: str,
        *,
        expires: dt.timedelta,
        filename: str | None,
        content_disposition: str | None = None,
    ) -> str | None:
        return None

    async def rotate(self) -> RotationReport:
        """Re-wrap every object's data key under the active master key (idempotent)."""
        inner = self._inner
        if not isinstance(inner, MetadataRewriter):
            raise StorageError(f"the {self.kind} object store cannot rewrite metadata")
        report = RotationReport()
        async for key in inner.list_keys():
            if key == self._check_key:
                continue
            info = await inner.stat(key)
            env = Envelope.from_metadata(info.metadata) if info is not None else None
            if info is None or env is None:
                report.plaintext += info is not None
                continue
            if env.key_id == self._keys.active_id:
                report.already_current += 1
                continue
            new = self._keys.rewrap(env, key)
            await inner.replace_metadata(
                key, {**strip_envelope(info.metadata), **new.to_metadata()}
            )
            report.rewrapped += 1
        await self._write_check(
            {self._keys.active_id: self._keys.check_record(self._keys.active_id)}
        )
        return report


async def _file_blocks(path: Path, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        pos = 0
        while data := await asyncio.to_thread(os.pread, fd, block, pos):
            pos += len(data)
            yield data
    finally:
        await asyncio.to_thread(os.close, fd)
