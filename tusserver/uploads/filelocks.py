"""Upload locks shared by the processes of one host: ``flock`` on a lock file per upload.

For ``tusserver serve --workers N`` on the embedded default (SQLite + local disk), where the
processes share one data directory. The layout, under ``<data_dir>/locks``:

- ``uploads/<key>.lock``: held (``flock(LOCK_EX)``) by the process writing the upload. The
  kernel drops it when the process dies, so a crashed process never leaves an upload stuck.
- ``peers/<random>.sock``: a datagram socket per process, for lock breaking. A request
  that finds the upload held by another process sends ``release <upload id>`` to every peer;
  the holder asks its request to let go (a PATCH stops reading its body, stores what it has
  and unlocks), exactly as within one process. A socket whose process is gone is removed by
  the first sender that finds nobody listening. The name is random, not the PID: containers
  sharing a data volume are all PID 1, and a name by PID let each new one take the socket
  name of another that was still running.

Within the process an :class:`InProcessLocker` orders requests first (``flock`` locks belong
to an open file, not to a request), and breaks locks between requests of this process.

A lock file is removed by its holder before it unlocks; a waiter that then gets the lock of
a removed file (its path now names another file, or none) opens the path again, so two
processes never hold "the" lock of one upload through two different files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from storage_backends.fileio import private_dirs

from ..errors import LockTimeout
from .locks import InProcessLocker, ReleaseCallback

__all__ = ["DataDirInUse", "FileLocker", "claim_data_dir"]

_log = structlog.get_logger("tusserver.locks")
#: How often a waiter tries the lock again while another process holds it.
_POLL = 0.02
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _fresh_socket_path(peers: Path) -> Path:
    """A name no other process's socket has. Random, not the PID: containers sharing a data
    volume are all PID 1. Short: a Unix socket's whole path must fit in 108 bytes, and the
    data directory takes most of them. (asyncio would replace a socket already there.)"""
    while True:
        path = peers / f"{secrets.token_hex(3)}.sock"
        if not os.path.lexists(path):
            return path


def _lock_name(upload_id: str) -> str:
    if _SAFE_ID.match(upload_id):
        return f"{upload_id}.lock"
    return hashlib.sha256(upload_id.encode()).hexdigest() + ".lock"


class FileLocker:
    """Cross-process upload locks on one host (see the module docstring).

    The lock-file operations are a few system calls on a local directory (open, flock,
    unlink): they run on the event loop, like the SQLite catalog's point units, because a
    thread hop costs more than they do; a waiter never blocks (``LOCK_NB`` and a short sleep).
    """

    def __init__(
        self,
        directory: Path,
        *,
        timeout: float,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._dir = directory / "uploads"
        self._peers = directory / "peers"
        self._timeout = timeout
        self._observe = observe_wait
        self._local = InProcessLocker(timeout=timeout)
        self._held: dict[str, ReleaseCallback | None] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sock_path: Path | None = None
        self._sender: socket.socket | None = None

    # --- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._transport is not None:
            return
        self._dir.mkdir(parents=True, exist_ok=True)
        self._peers.mkdir(parents=True, exist_ok=True)
        path = _fresh_socket_path(self._peers)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ReleaseProtocol(self._on_release_request),
            local_addr=str(path),
            family=socket.AF_UNIX,
        )
        self._transport = transport
        self._sock_path = path
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._sock_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._sock_path.unlink()
            self._sock_path = None

    # --- lock breaking --------------------------------------------------------------------

    def _on_release_request(self, upload_id: str) -> None:
        if upload_id in self._held:
            callback = self._held[upload_id]
            if callback is not None:
                _log.debug("lock release asked by another process", upload_id=upload_id)
                callback()

    def _ask_release(self, upload_id: str) -> None:
        """Send ``release <id>`` to every other process (only the holder acts on it)."""
        if self._sender is None:
            return
        message = f"release {upload_id}".encode()
        try:
            peers = list(self._peers.iterdir())
        except OSError:
            return
        for peer in peers:
            if peer == self._sock_path or peer.suffix != ".sock":
                continue
            try:
                self._sender.sendto(message, str(peer))
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody listens there any more: a process that died without cleaning up.
                with contextlib.suppress(OSError):
                    peer.unlink()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    _log.warning("lock release request failed", peer=peer.name, error=str(exc))

    # --- locking --------------------------------------------------------------------------

    def _try_flock(self, path: Path) -> int | None:
        """The fd of ``path`` locked by this process, or None if another process holds it."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder may have removed the file between our open and our lock:
            # then this lock guards nothing; take the file the path names now.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    @staticmethod
    def _release(path: Path, fd: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before unlocking: see the module docstring
        os.close(fd)  # drops the flock

    @contextlib.asynccontextmanager
    async def lock(
        self,
        upload_id: str,
        *,
        on_release: ReleaseCallback | None = None,
        take_over: bool = True,
    ) -> AsyncIterator[None]:
        started = time.monotonic()
        async with self._local.lock(upload_id, on_release=on_release, take_over=take_over):
            if self._transport is None:
                await self.open()
            path = self._dir / _lock_name(upload_id)
            deadline = started + self._timeout
            asked = False
            while (fd := self._try_flock(path)) is None:
                if not take_over:
                    raise LockTimeout("the upload is in use", headers={"Retry-After": "1"})
                if not asked:
                    self._ask_release(upload_id)
                    asked = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        "the upload is in use by another request; try again shortly",
                        headers={"Retry-After": "1"},
                    )
                await asyncio.sleep(_POLL)
            if self._observe is not None:
                self._observe(time.monotonic() - started)
            self._held[upload_id] = on_release
            try:
                yield
            finally:
                self._held.pop(upload_id, None)
                self._release(path, fd)


#: Under ``<data_dir>/locks``: held by every process using the data directory, shared
#: (``flock(LOCK_SH)``) by those that lock uploads with lock files, exclusively by a lone
#: process whose upload locks are in its memory.
INSTANCES_LOCK = "instances.lock"


class DataDirInUse(Exception):
    """Another process uses the data directory in a way this one cannot share."""


def claim_data_dir(directory: Path, *, alone: bool, wait: float = 0.0) -> int:
    """Claim the data directory whose lock directory is ``directory`` for this process's
    life; returns the file descriptor that holds the claim (closing it gives it up, and the
    kernel does when the process dies).

    ``alone``: this process keeps its upload locks in memory (a lone ``serve``), so no
    other process may write the directory's uploads beside it: an exclusive claim. Processes
    that lock with lock files (:class:`FileLocker`) claim it shared, together. A claim that
    cannot be had within ``wait`` seconds raises :class:`DataDirInUse` (a ``tusserver sweep``
    holds a shared claim for the few seconds it runs: a server started meanwhile waits for
    it). A forked child (``serve --workers N``) shares the claim of its parent.
    """
    private_dirs(directory)
    fd = os.open(directory / INSTANCES_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if alone else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_POLL * 5)
    except BlockingIOError:
        os.close(fd)
        if alone:
            raise DataDirInUse(
                "another tusserver process uses it; a lone `serve` keeps its upload locks in "
                "memory and cannot share it: run the processes as `serve --workers N`, or as "
                "`serve --role api` beside `tusserver worker` (they share it with lock files)"
            ) from None
        raise DataDirInUse(
            "a lone `tusserver serve` uses it, with its upload locks in memory: it cannot be "
            "shared; stop it, or run it as `serve --workers N` or `serve --role api`"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _ReleaseProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_release: Callable[[str], None]) -> None:
        self._on_release = on_release

    def datagram_received(self, data: bytes, addr: object) -> None:
        text = data.decode("utf-8", "replace")
        if text.startswith("release "):
            self._on_release(text[len("release ") :])
