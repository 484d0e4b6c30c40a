"""Local-disk chunk store: one file per upload, named by its server-generated id only.

Writes go through a fixed-size buffer handed to a worker thread (``os.pwrite``), with one
write in flight while the next block is read from the network: memory per upload is bounded
by two blocks, and the event loop never waits on a large write or an fsync.
Metadata calls, small reads and small writes without fsync run inline, the rest in worker
threads, by the rules of :mod:`storage_backends.fileio` (the file I/O this module shares
with the encrypted stores).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import json
import os
import re
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Mapping,
    Sequence,
)
from pathlib import Path

import aiofiles.os

from .base import (
    ChunkSource,
    ObjectInfo,
    StorageError,
    StoreCapabilities,
    StoredUpload,
    UploadDataMissing,
)
from .fileio import (
    FILE_MODE,
    INLINE_WRITE,
    UPLOAD_ID,
    StrPath,
    copy_range,
    create_empty,
    fsync_dir,
    full_disk_is_storage_full,
    in_worker,
    list_upload_files,
    private_dirs,
    pwrite_all,
    remove,
    write_atomic,
    write_once,
)

__all__ = ["LocalChunkStore", "LocalObjectStore"]

_READ_BLOCK = 256 * 1024


class LocalChunkStore:
    """Uploads in progress as files under one directory: ``<id>``, and ``<id>.stage`` while
    a chunk with a checksum is verified (see :meth:`write`).

    ``fsync``: a new upload's file is made durable as it is created (its directory is
    synced), as its bytes are by the writes asked to sync them.
    """

    #: The files of an upload: its bytes, and a chunk being verified.
    PIECES = ("", ".stage")

    def __init__(self, root: Path, *, max_size: int | None = None, fsync: bool = False) -> None:
        self._root = Path(root).resolve()
        self._root_s = str(self._root)
        self.capabilities = StoreCapabilities(max_size=max_size)
        self._fsync = fsync

    @property
    def root(self) -> Path:
        return self._root

    async def open(self) -> None:
        private_dirs(self._root)  # inline: metadata calls

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own file."""

    def path(self, upload_id: str) -> Path:
        """The file of an upload; ids are ours, and checked to be one plain name (letters,
        digits, ``-`` and ``_``: no separator, no dot), so the path stays inside root."""
        return Path(self._file(upload_id))

    def _file(self, upload_id: str) -> str:
        """:meth:`path` as a string, for the calls of every request (a ``Path`` is built
        by parsing: more CPU than the system call it is for)."""
        if not UPLOAD_ID.fullmatch(upload_id):
            raise StorageError(f"invalid upload id {upload_id!r}")
        return f"{self._root_s}/{upload_id}"

    def local_path(self, upload_id: str) -> Path:
        return self.path(upload_id)

    @full_disk_is_storage_full
    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        # Inline: creating an empty file is a metadata operation of microseconds, and a
        # thread hop costs more CPU than it (see the module docstring).
        create_empty(self._file(upload_id))
        if self._fsync:
            await asyncio.to_thread(fsync_dir, self._root_s)

    async def get_offset(self, upload_id: str) -> int:
        try:
            return os.stat(self._file(upload_id)).st_size
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None

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
        path = self._file(upload_id)
        if verify is None:
            return await self._write_at(path, offset, source, fsync=fsync, create=False)
        stage = path + ".stage"
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
        self, path: str, offset: int, source: ChunkSource, *, fsync: bool, create: bool
    ) -> int:
        loop = asyncio.get_running_loop()
        flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if create else 0)
        blocks = aiter(source)
        first = await anext(blocks, None)
        second = await anext(blocks, None) if first is not None else None
        if second is None:
            # The common small chunk: open, write, (sync,) close in one trip to a thread,
            # or inline when it is a small write into the page cache.
            data = first or b""
            try:
                if not fsync and len(data) <= INLINE_WRITE:
                    return write_once(path, flags, data, offset, False)
                return await asyncio.to_thread(write_once, path, flags, data, offset, fsync)
            except FileNotFoundError:
                raise UploadDataMissing(os.path.basename(path)) from None
        try:
            fd = await asyncio.to_thread(os.open, path, flags, FILE_MODE)
        except FileNotFoundError:
            raise UploadDataMissing(os.path.basename(path)) from None
        written = 0
        pending: asyncio.Future[int] | None = None
        # A block is referenced here only until it is handed to its write: it lives as long
        # as that write, so an upload holds the block being written and the one being read
        # (the two read ahead included), whatever the length of its body.
        assert first is not None
        ahead = [first, second]
        del first, second

        try:
            while (block := ahead.pop(0) if ahead else await anext(blocks, None)) is not None:
                if pending is not None:
                    written += await asyncio.shield(pending)
                    pending = None
                pending = loop.run_in_executor(None, pwrite_all, fd, block, offset + written)
                del block
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
        path = self._file(upload_id)
        try:
            fd = os.open(path, os.O_RDONLY)  # inline: a metadata call (module docstring)
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None
        try:
            pos, end = start, start + length
            while pos < end:
                want = min(_READ_BLOCK, end - pos)
                if length <= INLINE_WRITE:
                    block = os.pread(fd, want, pos)  # a small file: one page-cache read
                else:
                    block = await asyncio.to_thread(os.pread, fd, want, pos)
                if not block:
                    raise StorageError(f"upload {upload_id} is shorter than expected")
                pos += len(block)
                yield block
        finally:
            os.close(fd)

    async def delete(self, upload_id: str) -> None:
        path = self._file(upload_id)
        for p in (path, path + ".stage"):
            await remove(p)

    def list_uploads(self, *, modified_before: dt.datetime) -> AsyncGenerator[StoredUpload, None]:
        """The upload files not modified since ``modified_before`` (a file's mtime moves
        with every write to it), a page of the directory at a time in a worker thread."""
        return list_upload_files(self._root_s, self.PIECES, modified_before=modified_before)

    async def remove_orphan(self, upload_id: str) -> None:
        """As :meth:`delete`: an upload is its files, whatever wrote them."""
        await self.delete(upload_id)

    @full_disk_is_storage_full
    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        target = self.path(upload_id)
        sources = [self.path(p) for p in parts]
        try:
            # A cancellation waits for the copy (a thread cannot be stopped): the caller holds
            # the final's lock until its file is no longer being written.
            size = await in_worker(_concat_files, target, sources, fsync)
        except FileNotFoundError as exc:
            raise UploadDataMissing(str(exc.filename)) from None
        if fsync:
            await asyncio.to_thread(fsync_dir, self._root_s)
        return size


_KEY_SEGMENT = re.compile(r"[^/\x00]{1,255}")

#: The extended attribute holding an object's metadata (JSON: content type and metadata).
META_XATTR = "user.tusserver.meta"
#: setxattr errors meaning the filesystem has no user xattrs: the sidecar from then on.
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
#: setxattr errors meaning this value does not fit (ext4: ENOSPC past one block; the VFS:
#: E2BIG past 64 KiB; ERANGE on some others): the sidecar for this object. A really full
#: disk fails the sidecar's write too, with ENOSPC, which the caller reports as full.
_TOO_BIG = frozenset({errno.E2BIG, errno.ENOSPC, errno.ERANGE})
#: getxattr errors after which the sidecar is read: no such attribute, or no user xattrs.
_NOT_IN_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})

#: Where to set or read an object's metadata: the path of its file, or an open descriptor.
_Target = Path | int


class LocalObjectStore:
    """Finished files under one directory, keyed by relative paths; the metadata of each in
    an extended attribute of its own file (:data:`META_XATTR`), else in a sidecar.

    Objects appear atomically (written to a temporary name, then renamed), and the metadata
    is set on that file before the rename: extended attributes belong to the inode, so an
    object appears with its metadata, in one step, as OpenStack Swift keeps them. That costs
    one setxattr where a sidecar cost a file per object (an inode, a write, a rename; and its
    own directory under the former default key template).

    The sidecar ``.meta/<key>.json`` is written instead when the filesystem has no user
    extended attributes (remembered after the first refusal) or the metadata does not fit in
    one (ext4: about 4 KiB); it is written before the object's rename, and that object then
    carries no attribute. Reads take the attribute first and fall back to the sidecar, which
    is where objects stored by earlier versions keep their metadata.
    """

    kind = "local"

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = Path(root).resolve()
        self._meta_root = self._root / ".meta"
        # As strings too: an object's paths are built by concatenation (pathlib's parsing
        # of a path five segments deep was most of a small commit's Python time).
        self._root_s = str(self._root)
        self._meta_root_s = str(self._meta_root)
        #: fsync an object's bytes before it is renamed into place (off: the operator chose
        #: speed over surviving a power loss, as with ``fsync = false`` for uploads).
        self._fsync = fsync
        #: False once the filesystem refused a user xattr: metadata goes to sidecars.
        self._xattrs = True

    async def open(self) -> None:
        private_dirs(self._root)

    async def close(self) -> None:
        """Nothing to release: every call opens and closes its own file."""

    def path(self, key: str) -> Path:
        """The object's file: each segment of the key is a plain name (no separator, no NUL,
        not empty, not ``.`` or ``..``), so the path stays under the root."""
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        """:meth:`path` as a string, for the commit of every file (see LocalChunkStore)."""
        self._check_key(key)
        return f"{self._root_s}/{key}"

    @staticmethod
    def _check_key(key: str) -> None:
        segments = key.split("/")
        if not all(_KEY_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
            raise StorageError(f"invalid object key {key!r}")
        if segments[0] == ".meta":
            raise StorageError("reserved object key")

    def _meta_path(self, key: str) -> Path:
        return Path(self._meta_path_s(key))

    def _meta_path_s(self, key: str) -> str:
        """The sidecar of an object: ``.meta/<key>.json``."""
        self._check_key(key)
        return f"{self._meta_root_s}/{key}.json"

    @full_disk_is_storage_full
    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        dest = self._file(key)
        doc = _meta_doc(content_type, metadata)
        if consume:
            # The usual commit of a local upload: the metadata onto the upload's file, then
            # a rename, inline (metadata calls); a copy where the rename crosses filesystems.
            try:
                if self._fsync:  # made durable: in a thread (it syncs)
                    in_xattr = await asyncio.to_thread(self._attach_and_move, path, key, doc, dest)
                else:
                    in_xattr = self._attach(path, key, doc)
                    _rename_into(path, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                if in_xattr:
                    self._drop_sidecar(key)
                return
        attach = functools.partial(self._attach, key=key, doc=doc)
        if await asyncio.to_thread(_copy_file, path, Path(dest), consume, self._fsync, attach):
            self._drop_sidecar(key)

    @full_disk_is_storage_full
    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        dest = self.path(key)
        doc = _meta_doc(content_type, metadata)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        fd = await asyncio.to_thread(_create_beside, tmp, self._fsync)
        try:
            pos = 0
            async for block in source:
                pos += await asyncio.to_thread(pwrite_all, fd, block, pos)
            if pos != size:
                raise StorageError(f"expected {size} bytes, got {pos}")
            if self._fsync:  # the metadata before the fsync, which then covers it
                in_xattr = await asyncio.to_thread(self._attach_and_sync, fd, key, doc)
            else:
                in_xattr = self._attach(fd, key, doc)
        except BaseException:
            await asyncio.to_thread(os.close, fd)
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.remove(tmp)
            raise
        await asyncio.to_thread(os.close, fd)
        await aiofiles.os.replace(tmp, dest)
        if self._fsync:
            await asyncio.to_thread(fsync_dir, dest.parent)
        if in_xattr:
            self._drop_sidecar(key)

    @full_disk_is_storage_full
    async def put_built(
        self,
        key: str,
        build: Callable[[int], object],
        *,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        """Store an object whose bytes ``build(fd)`` writes, in a worker thread, into a new
        temporary file beside its destination; then, as :meth:`put_file`: the metadata,
        fsync (if on), and the rename. Nothing is left behind if ``build`` raises.
        """
        dest = self.path(key)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        attach = functools.partial(self._attach, key=key, doc=_meta_doc(content_type, metadata))
        job = asyncio.get_running_loop().run_in_executor(
            None, _build_file, tmp, build, self._fsync, attach
        )
        try:
            in_xattr = await asyncio.shield(job)
            os.replace(tmp, dest)  # inline: a rename is a metadata call
            if self._fsync:
                await asyncio.to_thread(fsync_dir, dest.parent)
        except BaseException:
            while not job.done():  # never remove the file under a build still writing it
                with contextlib.suppress(BaseException):
                    await asyncio.wait([job])
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        if in_xattr:
            self._drop_sidecar(key)

    def _attach(self, target: _Target, key: str, doc: bytes) -> bool:
        """Give the file about to become object ``key`` its metadata, before its rename: in
        its extended attribute (True), else in the sidecar, the file then carrying no
        attribute that would shadow it (False). Inline: one setxattr (a metadata call)."""
        if self._xattrs:
            try:
                os.setxattr(target, META_XATTR, doc)
                return True
            except OSError as exc:
                if exc.errno in _NO_XATTRS:
                    self._xattrs = False
                elif exc.errno not in _TOO_BIG:
                    raise
        # Inline: a small file and a rename (with fsync on, callers run this in a thread).
        write_atomic(self._meta_path(key), doc, durable=self._fsync)
        _drop_xattr(target)
        return False

    def _attach_and_move(self, path: Path, key: str, doc: bytes, dest: str) -> bool:
        in_xattr = self._attach(path, key, doc)
        _rename_into(path, dest, durable=True)
        return in_xattr

    def _attach_and_sync(self, fd: int, key: str, doc: bytes) -> bool:
        in_xattr = self._attach(fd, key, doc)
        os.fsync(fd)
        return in_xattr

    def _drop_sidecar(self, key: str) -> None:
        """Remove the sidecar a former object at ``key`` may have left: the metadata is in
        the new object's attribute (one failed unlink in the usual case: no sidecar)."""
        try:
            os.unlink(self._meta_path_s(key))
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:  # no sidecar can have such a name
                raise

    def read_meta(self, key: str, fd: int | None = None) -> tuple[str, dict[str, str]]:
        """The object's (content type, metadata): from its extended attribute, else from its
        sidecar (objects of earlier versions; filesystems without user xattrs; metadata too
        big for one). Read inline (metadata calls). With ``fd`` (the object's open file),
        the attribute is that file's, whatever has been renamed over its path since.
        """
        return self._read_meta(key, self.path(key) if fd is None else fd)

    def _read_meta(self, key: str, target: _Target) -> tuple[str, dict[str, str]]:
        raw = _get_xattr(target)
        if raw is None:
            try:
                with open(self._meta_path(key), "rb") as fh:
                    raw = fh.read()
            except (FileNotFoundError, NotADirectoryError):
                # No attribute and no sidecar: either there is no metadata, or a
                # replace_metadata moved an older object's sidecar into the attribute
                # between the two reads (it sets the attribute, then removes the sidecar):
                # the attribute is read once more.
                raw = _get_xattr(target) or b""
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        return doc.get("content_type", "application/octet-stream"), doc.get("metadata", {})

    #: The name before metadata moved into extended attributes (still read there too).
    read_sidecar = read_meta

    async def stat(self, key: str) -> ObjectInfo | None:
        # Inline, as the module docstring says for metadata calls: a stat and a getxattr (or
        # the read of a sidecar of a few hundred bytes) take microseconds, where the two
        # trips through the thread pool they used to take cost ~100 us of CPU each and were
        # most of the price of a Range request on an encrypted object (its envelope lives in
        # the metadata). Reading the metadata each time rather than caching envelopes keeps
        # every process right without invalidation: `tusserver keys rotate` rewrites them
        # from another process, and several instances may share the directory.
        path = self.path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        content_type, metadata = self._read_meta(key, path)
        return ObjectInfo(key=key, size=st.st_size, content_type=content_type, metadata=metadata)

    async def get(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"object {key} is missing") from None
        try:
            end = (await asyncio.to_thread(os.fstat, fd)).st_size
            if length is not None:
                end = min(end, start + length)
            pos = start
            while pos < end:
                block = await asyncio.to_thread(os.pread, fd, min(_READ_BLOCK, end - pos), pos)
                if not block:
                    raise StorageError(f"object {key} is shorter than expected")
                pos += len(block)
                yield block
        finally:
            await asyncio.to_thread(os.close, fd)

    async def delete(self, key: str) -> None:
        """The object, and its sidecar if it has one (the attribute goes with the file)."""
        for p in (self.path(key), self._meta_path(key)):
            await remove(p)

    async def presign_get(
        self,
        key: str,
        *,
        expires: dt.timedelta,
        filename: str | None,
        content_disposition: str | None = None,
    ) -> str | None:
        return None

    @full_disk_is_storage_full
    async def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """Replace the metadata, atomically, and leave the object's bytes alone.

        Readers see the old metadata or the new, never a mix or none: one setxattr replaces
        the attribute's value whole (and, for an object whose metadata was in a sidecar,
        the attribute shadows the sidecar from that call on; the sidecar is then removed).
        Where the attribute cannot be used, the sidecar is written (a write and a rename)
        and only then the object's attribute, if it has one, removed.
        """
        path = self.path(key)
        info = await self.stat(key)
        if info is None:
            raise StorageError(f"object {key} is missing")
        doc = _meta_doc(info.content_type, metadata)
        attached = (
            await asyncio.to_thread(self._attach, path, key, doc)  # it syncs a sidecar
            if self._fsync
            else self._attach(path, key, doc)
        )
        if attached:
            self._drop_sidecar(key)

    async def list_keys(self) -> AsyncIterator[str]:
        """Every object key, skipping the metadata tree and in-flight temporary files."""
        keys = await asyncio.to_thread(_walk_keys, self._root)
        for key in keys:
            yield key


def _meta_doc(content_type: str, metadata: Mapping[str, str]) -> bytes:
    return json.dumps({"content_type": content_type, "metadata": dict(metadata)}).encode()


def _get_xattr(target: _Target) -> bytes | None:
    """The metadata attribute of a file, or None (no attribute, no user xattrs, no file)."""
    try:
        return os.getxattr(target, META_XATTR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NOT_IN_XATTR:
            raise
        return None


def _drop_xattr(target: _Target) -> None:
    """Remove the metadata attribute from a file, if it has one."""
    try:
        os.removexattr(target, META_XATTR)
    except OSError as exc:
        if exc.errno not in _NOT_IN_XATTR:
            raise


def _rename_into(src: StrPath, dest: str, *, durable: bool = False) -> None:
    """Rename ``src`` to ``dest``, creating the directories of ``dest`` when they are missing
    (the first object of a day under the default key template): the rename is tried first.
    ``durable``: the new directories and the rename are synced to disk."""
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        # If ``src`` is what is missing, the rename says so.
        private_dirs(Path(dest).parent, durable=durable)
        os.replace(src, dest)
    if durable:
        fsync_dir(os.path.dirname(dest))


def _create_beside(tmp: Path, durable: bool = False) -> int:
    """A new file ``tmp`` (its directories created when missing, and synced if
    ``durable``), open for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(tmp, flags, FILE_MODE)
    except FileNotFoundError:
        private_dirs(tmp.parent, durable=durable)
        return os.open(tmp, flags, FILE_MODE)


def _walk_keys(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != ".meta"]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            out.append((rel / name).as_posix())
    return sorted(out)


def _build_file(
    tmp: Path, build: Callable[[int], object], fsync: bool, attach: Callable[[int], bool]
) -> bool:
    """``build`` into a new file, its metadata attached (before the fsync, which then covers
    both); what ``attach`` returned (whether the metadata is in the file's attribute)."""
    fd = _create_beside(tmp, fsync)
    try:
        build(fd)
        in_xattr = attach(fd)
        if fsync:
            os.fsync(fd)
        return in_xattr
    finally:
        os.close(fd)


def _copy_file(
    src: Path, dest: Path, consume: bool, fsync: bool, attach: Callable[[_Target], bool]
) -> bool:
    """Copy ``src`` to ``dest`` atomically (a temporary file beside it, given its metadata by
    ``attach``, synced if asked, renamed into place), then remove ``src`` if ``consume``.
    What ``attach`` returned."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    s = os.open(src, os.O_RDONLY)
    try:
        d = _create_beside(tmp, fsync)
        try:
            copy_range(s, d, 0, 0, os.fstat(s).st_size)
            in_xattr = attach(d)
            if fsync:
                os.fsync(d)
        except BaseException:
            os.close(d)
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        os.close(d)
    finally:
        os.close(s)
    os.replace(tmp, dest)
    if fsync:
        fsync_dir(dest.parent)
    if consume:
        os.remove(src)
    return in_xattr


def _append_file(stage: str, target: str, offset: int, count: int, fsync: bool) -> None:
    src = os.open(stage, os.O_RDONLY)
    try:
        try:
            dst = os.open(target, os.O_WRONLY)
        except FileNotFoundError:
            raise UploadDataMissing(os.path.basename(target)) from None
        try:
            copy_range(src, dst, 0, offset, count)
            if fsync:
                os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _concat_files(target: Path, sources: list[Path], fsync: bool) -> int:
    dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        pos = 0
        for src_path in sources:
            src = os.open(src_path, os.O_RDONLY)
            try:
                size = os.fstat(src).st_size
                copy_range(src, dst, 0, pos, size)
                pos += size
            finally:
                os.close(src)
        if fsync:
            os.fsync(dst)
        return pos
    finally:
        os.close(dst)
