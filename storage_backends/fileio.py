"""File I/O shared by the local stores, plaintext (storage_backends.local) and encrypted
(storage_backends.encryption): positional writes that resume after short writes, copies in
the kernel, atomic small files, and the rules for what runs inline.

What runs where: metadata calls (create, stat, open, rename, unlinking a small file), small
reads (a sidecar) and a small write without fsync (at most :data:`INLINE_WRITE` bytes into
the page cache) run inline on the event loop: they take microseconds, and a trip through the
thread pool costs 50-100 us of CPU and a GIL hand-off, which dominated the cost of small
uploads and of Range requests. Big reads and writes, copies and fsync run in worker threads
(:func:`in_worker`, or ``asyncio.to_thread``).

Every file is created with mode 0600 and every directory 0700 (:func:`private_dirs`); the
process umask can only make them stricter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import errno
import functools
import os
import re
import secrets
import stat
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiofiles.os

from .base import StorageError, StorageFull, StoredUpload

__all__ = [
    "COPY_BLOCK",
    "DIR_MODE",
    "FILE_MODE",
    "INLINE_UNLINK",
    "INLINE_WRITE",
    "UPLOAD_ID",
    "Bytes",
    "StrPath",
    "copy_range",
    "create_empty",
    "finish_file",
    "full_disk_is_storage_full",
    "in_worker",
    "is_full",
    "list_upload_files",
    "private_dirs",
    "private_file",
    "pwrite_all",
    "pwritev_all",
    "read_into",
    "read_small",
    "remove",
    "reserve",
    "touch",
    "write_atomic",
    "write_once",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")
#: A path as the os functions take it: the hot paths of the local stores pass strings
#: (building a pathlib.Path costs more than the system call it names).
StrPath = str | os.PathLike[str]
Bytes = bytes | bytearray | memoryview

#: Writes up to this size without fsync go straight to the page cache from the event loop.
INLINE_WRITE = 64 * 1024
#: Bytes per copy_file_range call.
COPY_BLOCK = 8 * 1024 * 1024
#: Unlinking a bigger file frees many extents (milliseconds): that goes to a thread.
INLINE_UNLINK = 1024 * 1024
#: Buffers per pwritev call (Linux IOV_MAX is 1024).
IOV_MAX = 512
#: Every file the stores create: readable and writable by the server's user only.
FILE_MODE = 0o600
#: Every directory they create: the server's user only.
DIR_MODE = 0o700
#: An upload id as the stores take it: one plain name (letters, digits, ``-`` and ``_``: no
#: separator, no dot), so that a local store's file stays inside its directory, and a
#: listing tells an upload's pieces (``<id>.info``, ``<id>.key``...) from anything else.
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Directory entries looked at per trip to a worker thread when a store lists its uploads.
LIST_PAGE = 1000


def private_dirs(path: Path, *, durable: bool = False) -> None:
    """Create ``path`` and its missing parents, each with :data:`DIR_MODE` (os.makedirs
    gives intermediate directories the default mode); inline: metadata calls.
    ``durable``: each new directory's entry is synced to disk (:func:`fsync_dir`)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
            if durable:
                fsync_dir(d.parent)


def fsync_dir(path: StrPath) -> None:
    """Sync a directory: a file created or renamed into it survives a power loss only once
    its directory is synced too (fsync of the file covers its bytes, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    # There is no way to read the umask without setting it; done only at start-up.
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def private_file(path: Path, *, create: bool = False) -> None:
    """Make an existing file (or, with ``create``, a new empty one) private: mode 0600, or
    stricter if the umask says so. Used at start for files other libraries create (SQLite
    gives its -wal and -shm files the mode of the database file)."""
    mode = FILE_MODE & ~_umask()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            return
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        return
    if st.st_mode & 0o777 & ~mode:
        os.chmod(path, st.st_mode & 0o777 & mode)


#: The errors of a full filesystem: no space left, or the user's disk quota exceeded.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def full_disk_is_storage_full(
    fn: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Decorate a store's method: a full filesystem raises :class:`StorageFull` (507 to the
    client) rather than a bare OSError (which would be a 500)."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            if is_full(exc):
                raise StorageFull(f"no space left on the device ({exc.strerror})") from exc
            raise

    return wrapper


async def in_worker(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the default executor (no context copy, unlike asyncio.to_thread).

    If the caller is cancelled, it still waits for ``fn`` to finish before the cancellation
    propagates: the caller then closes the file descriptors ``fn`` is using.
    """
    job = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(job)
    except BaseException:
        while not job.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait([job])
        raise


#: Linux fallocate(2)'s FALLOC_FL_KEEP_SIZE: allocate without changing the file's size.
_FALLOC_FL_KEEP_SIZE = 1


@functools.cache
def _fallocate() -> Callable[..., int] | None:
    """libc's fallocate(2), or None where there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # (fallocate64: the 64-bit offsets on a 32-bit system; the same function elsewhere.)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate the disk space of ``length`` bytes from ``offset`` without changing the
    file's size, so that a write there cannot fail for want of space: ENOSPC (an OSError)
    comes here, before anything is written. A no-op where the system or the filesystem
    cannot (no fallocate, EOPNOTSUPP)."""
    fn = _fallocate()
    if fn is None or length <= 0:
        return
    while fn(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        raise OSError(err, os.strerror(err))


def pwrite_all(fd: int, data: Bytes, pos: int) -> int:
    """Write ``data`` at ``pos``, resuming after short writes."""
    view = memoryview(data)
    total = 0
    while total < len(view):
        n = os.pwrite(fd, view[total:], pos + total)
        if n == 0:
            raise StorageError("short write")
        total += n
    return total


def pwritev_all(fd: int, bufs: list[Bytes], pos: int) -> int:
    """Write the buffers one after the other from ``pos``, resuming after short writes."""
    total = 0
    for at in range(0, len(bufs), IOV_MAX):
        group = bufs[at : at + IOV_MAX]
        left = sum(map(len, group))
        while left:
            n = os.pwritev(fd, group, pos + total)
            if n <= 0:
                raise StorageError("short write")
            total += n
            left -= n
            while group and n >= len(group[0]):
                n -= len(group[0])
                group = group[1:]
            if n:
                group[0] = memoryview(group[0])[n:]
    return total


def read_into(fd: int, view: memoryview, at: int) -> int:
    """Fill ``view`` with the file's bytes from ``at``; fewer only where the file ends."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], at + got)
        if n <= 0:
            break
        got += n
    return got


def copy_range(src_fd: int, dst_fd: int, src_pos: int, dst_pos: int, count: int) -> None:
    """Copy bytes between files in the kernel where possible."""
    done = 0
    while done < count:
        want = min(COPY_BLOCK, count - done)
        try:
            n = os.copy_file_range(src_fd, dst_fd, want, src_pos + done, dst_pos + done)
        except OSError:
            data = os.pread(src_fd, want, src_pos + done)
            n = pwrite_all(dst_fd, data, dst_pos + done) if data else 0
        if n == 0:
            raise StorageError("source ended early while copying")
        done += n


def finish_file(fd: int, end: int, fsync: bool) -> None:
    """Cut the file after ``end`` (if it is longer) and sync it if asked."""
    if os.fstat(fd).st_size > end:
        os.ftruncate(fd, end)
    if fsync:
        os.fsync(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write-then-rename: readers see the old or the new file, never half of one.

    Without ``durable`` no fsync: for sidecars that repeat what the catalog holds (the source
    of truth) or can be rebuilt, so a power loss can at worst cost the copy, not the
    information. ``durable``: the bytes, then the rename, are synced to disk (call it in a
    worker thread then).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(tmp, flags, FILE_MODE)
    except FileNotFoundError:
        private_dirs(path.parent, durable=durable)
        fd = os.open(tmp, flags, FILE_MODE)
    try:
        try:
            pwrite_all(fd, data, 0)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_small(path: Path) -> bytes:
    """The bytes of a small file (a sidecar), read inline."""
    with open(path, "rb") as fh:
        return fh.read()


def create_empty(path: StrPath) -> None:
    """A new, empty file; FileExistsError if there is one."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def touch(path: Path) -> None:
    """The file, created empty if it does not exist."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))


def write_once(path: StrPath, flags: int, data: bytes, offset: int, fsync: bool) -> int:
    """Open, write ``data`` at ``offset``, (sync,) close: one small write in one call."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        written = pwrite_all(fd, data, offset) if data else 0
        if fsync:
            os.fsync(fd)
        return written
    finally:
        os.close(fd)


async def remove(path: StrPath) -> None:
    """Unlink ``path`` if it exists: inline when it is small or missing (metadata calls)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return
    with contextlib.suppress(FileNotFoundError):
        if size <= INLINE_UNLINK:
            os.unlink(path)
        else:
            await aiofiles.os.remove(path)


async def list_upload_files(
    root: StrPath,
    suffixes: Sequence[str],
    *,
    modified_before: dt.datetime,
    page: int | None = None,
) -> AsyncGenerator[StoredUpload, None]:
    """The pieces of uploads in the directory ``root`` last modified before
    ``modified_before``: regular files named ``<id><suffix>`` for one of ``suffixes`` (``""``:
    the id alone), the id an :data:`UPLOAD_ID`; anything else there is not looked at.

    The directory is read ``page`` entries (:data:`LIST_PAGE`) per trip to a worker thread
    (each matching file is stat'ed there for its mtime): memory is bounded by a page, and
    the event loop never waits on the disk, however many files there are. A missing
    directory lists nothing.
    """
    page = page or LIST_PAGE
    cutoff = modified_before.timestamp()
    try:
        entries = await in_worker(os.scandir, root)
    except FileNotFoundError:
        return
    try:
        while True:
            found, done = await in_worker(_scan_page, entries, page, tuple(suffixes), cutoff)
            for upload_id, mtime in found:
                yield StoredUpload(upload_id, dt.datetime.fromtimestamp(mtime, dt.UTC))
            if done:
                return
    finally:
        entries.close()  # (no page is being read: in_worker waits for it, even if cancelled)


def _scan_page(
    entries: Iterator[os.DirEntry[str]], page: int, suffixes: tuple[str, ...], cutoff: float
) -> tuple[list[tuple[str, float]], bool]:
    """The next ``page`` entries of a directory: the (upload id, mtime) of the upload files
    among them modified before ``cutoff``, and whether the directory is done."""
    found: list[tuple[str, float]] = []
    for _ in range(page):
        entry = next(entries, None)
        if entry is None:
            return found, True
        upload_id = _upload_of(entry.name, suffixes)
        if upload_id is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since it was listed
        if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
            found.append((upload_id, st.st_mtime))
    return found, False


def _upload_of(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The upload id of a file named ``<id><suffix>``, or None."""
    for suffix in suffixes:
        if name.endswith(suffix):
            upload_id = name[: len(name) - len(suffix)]
            if UPLOAD_ID.fullmatch(upload_id):
                return upload_id
    return None
