"""Local-disk chunk store: one file per upload, named by its server-generated id only.

Writes go through a fixed-size buffer handed to a worker thread (``os.pwrite``), with one
write in flight while the next block is read from the network: memory per upload is bounded
by two blocks, and the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiofiles.os

from .base import ChunkSource, StorageError, StoreCapabilities, UploadDataMissing

__all__ = ["LocalChunkStore"]

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_READ_BLOCK = 256 * 1024
_COPY_BLOCK = 8 * 1024 * 1024


class LocalChunkStore:
    """Uploads in progress as files under one directory."""

    def __init__(self, root: Path, *, max_size: int | None = None) -> None:
        self._root = Path(root).resolve()
        self.capabilities = StoreCapabilities(max_size=max_size)

    @property
    def root(self) -> Path:
        return self._root

    async def open(self) -> None:
        await aiofiles.os.makedirs(self._root, exist_ok=True)

    def path(self, upload_id: str) -> Path:
        """The file of an upload; ids are ours, and the path is checked to stay inside root."""
        if not _SAFE_ID.fullmatch(upload_id):
            raise StorageError(f"invalid upload id {upload_id!r}")
        p = self._root / upload_id
        if p.parent != self._root:
            raise StorageError("upload path escapes the store")
        return p

    async def create(self, upload_id: str) -> None:
        path = self.path(upload_id)
        await asyncio.to_thread(_create_empty, path)

    async def get_offset(self, upload_id: str) -> int:
        try:
            st = await aiofiles.os.stat(self.path(upload_id))
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None
        return st.st_size

    async def write(
        self,
        upload_id: str,
        offset: int,
        source: ChunkSource,
        *,
        verify: Callable[[], None] | None = None,
        fsync: bool = False,
    ) -> int:
        path = self.path(upload_id)
        if verify is None:
            return await self._write_at(path, offset, source, fsync=fsync, create=False)
        stage = path.with_name(upload_id + ".stage")
        try:
            written = await self._write_at(stage, 0, source, fsync=False, create=True)
            verify()
            # The chunk is verified: append it to the upload.
            await asyncio.to_thread(_append_file, stage, path, offset, written, fsync)
            return written
        finally:
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(stage)

    async def _write_at(
        self, path: Path, offset: int, source: ChunkSource, *, fsync: bool, create: bool
    ) -> int:
        loop = asyncio.get_running_loop()
        flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if create else 0)
        try:
            fd = await asyncio.to_thread(os.open, path, flags, 0o600)
        except FileNotFoundError:
            raise UploadDataMissing(path.name) from None
        written = 0
        pending: asyncio.Future[int] | None = None
        try:
            async for block in source:
                if pending is not None:
                    written += await asyncio.shield(pending)
                    pending = None
                pending = loop.run_in_executor(None, _pwrite_all, fd, block, offset + written)
            if pending is not None:
                written += await asyncio.shield(pending)
                pending = None
            if fsync:
                await asyncio.to_thread(os.fsync, fd)
        finally:
            # Never leave a write in flight behind us: the caller releases the upload's lock
            # when we return, and the next writer must see every byte we started.
            if pending is not None:
                with contextlib.suppress(Exception):
                    written += await asyncio.shield(pending)
            await asyncio.to_thread(os.close, fd)
        return written

    async def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        path = self.path(upload_id)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None
        try:
            pos, end = start, start + length
            while pos < end:
                block = await asyncio.to_thread(os.pread, fd, min(_READ_BLOCK, end - pos), pos)
                if not block:
                    raise StorageError(f"upload {upload_id} is shorter than expected")
                pos += len(block)
                yield block
        finally:
            await asyncio.to_thread(os.close, fd)

    async def delete(self, upload_id: str) -> None:
        path = self.path(upload_id)
        for p in (path, path.with_name(upload_id + ".stage")):
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(p)

    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        target = self.path(upload_id)
        sources = [self.path(p) for p in parts]
        try:
            return await asyncio.to_thread(_concat_files, target, sources, fsync)
        except FileNotFoundError as exc:
            raise UploadDataMissing(str(exc.filename)) from None


def _create_empty(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def _pwrite_all(fd: int, data: bytes, pos: int) -> int:
    view = memoryview(data)
    total = 0
    while total < len(view):
        n = os.pwrite(fd, view[total:], pos + total)
        if n == 0:
            raise StorageError("short write")
        total += n
    return total


def _copy_range(src_fd: int, dst_fd: int, src_pos: int, dst_pos: int, count: int) -> None:
    """Copy bytes between files in the kernel where possible."""
    done = 0
    while done < count:
        want = min(_COPY_BLOCK, count - done)
        try:
            n = os.copy_file_range(src_fd, dst_fd, want, src_pos + done, dst_pos + done)
        except OSError:
            data = os.pread(src_fd, want, src_pos + done)
            n = _pwrite_all(dst_fd, data, dst_pos + done) if data else 0
        if n == 0:
            raise StorageError("source ended early while copying")
        done += n


def _append_file(stage: Path, target: Path, offset: int, count: int, fsync: bool) -> None:
    src = os.open(stage, os.O_RDONLY)
    try:
        try:
            dst = os.open(target, os.O_WRONLY)
        except FileNotFoundError:
            raise UploadDataMissing(target.name) from None
        try:
            _copy_range(src, dst, 0, offset, count)
            if fsync:
                os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _concat_files(target: Path, sources: list[Path], fsync: bool) -> int:
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pos = 0
        for src_path in sources:
            src = os.open(src_path, os.O_RDONLY)
            try:
                size = os.fstat(src).st_size
                _copy_range(src, dst, 0, pos, size)
                pos += size
            finally:
                os.close(src)
        if fsync:
            os.fsync(dst)
        return pos
    finally:
        os.close(dst)
