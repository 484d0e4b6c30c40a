"""``tusserver serve --workers N``: N server processes on one port, under one parent.

The parent binds the port (without listening: it reserves the port and learns its number)
and forks N children; each child listens on a socket of its own bound to the same port with
``SO_REUSEPORT``, and the kernel spreads new connections evenly over the children's sockets.
(One socket shared by all children balances badly: the child that wakes first accepts a
whole burst of new connections, up to 100 at a time, and a client's keep-alive connections
then stay on it - measured: 82-89 % of the requests on one of two processes, and
``--workers 2`` slower than 1.) A connection still waiting in the queue of a child that dies
is reset, as if the child had died a moment later; on Linux 5.14+ the sysctl
``net.ipv4.tcp_migrate_req = 1`` hands such connections to the other children instead. The
parent serves nothing itself; it

- restarts a child that dies (at once, or after a growing pause, up to 10 s, when children
  keep dying young: a crash loop must not spin);
- forwards SIGTERM and SIGINT to every child, waits for their graceful stop (in-flight
  requests finish, uploads are left resumable), kills what is left after the shutdown
  timeout, and exits 0;
- collects the metrics of all children in one directory (see :mod:`tusserver.multiproc`),
  so ``/metrics`` on any child shows the whole.

A child dies with its parent (``PR_SET_PDEATHSIG``): a SIGKILLed parent leaves no orphan
serving on its own. Only child 0 runs the periodic sweeper (expiry, quarantine, retention);
every child runs pipeline workers, which share the work through the catalog's leases. On
SQLite the children's server-side cache is off (an invalidation would reach only the process
that made the change); rate limits count per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from . import multiproc
from .config import TusServerConfig

__all__ = ["Supervisor"]

_log = structlog.get_logger("tusserver.supervisor")

#: A child that lived less than this died young: the next start waits, longer each time.
_YOUNG = 5.0
_MAX_PAUSE = 10.0
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


@dataclass
class _Slot:
    index: int
    pid: int | None = None
    started: float = 0.0
    pause: float = 0.0
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        config: TusServerConfig,
        *,
        processes: int,
        port: int,
        app_factory: Callable[[TusServerConfig], web.Application],
        ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._processes = processes
        self._port = port
        self._app_factory = app_factory
        self._ssl = ssl_context
        self._shutdown_timeout = shutdown_timeout
        self._slots = [_Slot(i) for i in range(processes)]
        self._sock: socket.socket | None = None
        self._metrics_dir: Path | None = None

    # --- parent ---------------------------------------------------------------------------

    def run(self) -> int:
        host = self._config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = _bind(host, self._port, family)
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="tusserver-metrics-"))
        multiproc.enable(self._metrics_dir)
        self._prepare_shared_state()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        _log.info("supervisor started", processes=self._processes, host=host, port=self._port)
        try:
            for slot in self._slots:
                self._spawn(slot)
            self._loop()
        finally:
            self._sock.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        _log.info("supervisor stopped")
        return 0

    def _prepare_shared_state(self) -> None:
        """What the children would otherwise race to create: the generated JWT secret."""
        c = self._config
        if c.auth == "jwt" and c.jwt_algorithm == "HS256" and not c.jwt_secret and not c.jwks_url:
            from .app import _generated_secret

            _generated_secret(c)

    def _loop(self) -> None:
        stopping_since: float | None = None
        while True:
            now = time.monotonic()
            waits = [s.restart_at - now for s in self._slots if s.restart_at is not None]
            timeout = max(0.05, min([1.0, *waits]))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            stop = info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT)
            if stop and stopping_since is None:
                stopping_since = time.monotonic()
                _log.info("stopping the server processes")
                for slot in self._slots:
                    slot.restart_at = None
                    self._signal(slot, signal.SIGTERM)
            self._reap(restart=stopping_since is None)
            if stopping_since is not None:
                if all(s.pid is None for s in self._slots):
                    return
                if time.monotonic() - stopping_since > self._shutdown_timeout + 5:
                    for slot in self._slots:
                        self._signal(slot, signal.SIGKILL)
                continue
            now = time.monotonic()
            for slot in self._slots:
                if slot.pid is None and slot.restart_at is not None and slot.restart_at <= now:
                    self._spawn(slot)

    def _reap(self, *, restart: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self._slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            if self._metrics_dir is not None:
                with contextlib.suppress(OSError):
                    multiproc.process_gone(pid, self._metrics_dir)
            lived = time.monotonic() - slot.started
            if not restart:
                _log.info("server process stopped", pid=pid, slot=slot.index, status=status)
                continue
            slot.pause = min(max(slot.pause * 2, 0.5), _MAX_PAUSE) if lived < _YOUNG else 0.0
            slot.restart_at = time.monotonic() + slot.pause
            _log.warning(
                "server process died; restarting it",
                pid=pid,
                slot=slot.index,
                status=_describe(status),
                lived_seconds=round(lived, 1),
                restart_in=slot.pause,
            )

    @staticmethod
    def _signal(slot: _Slot, sig: signal.Signals) -> None:
        if slot.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)

    def _spawn(self, slot: _Slot) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(slot.index, parent)  # never returns
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None
        _log.info("server process started", pid=pid, slot=slot.index)

    # --- child ----------------------------------------------------------------------------

    def _child(self, index: int, parent: int) -> None:
        code = 1
        try:
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            _die_with_parent()
            if os.getppid() != parent:
                os._exit(1)  # the parent died before the line above
            assert self._sock is not None
            host, port = self._sock.getsockname()[:2]
            sock = _bind(host, port, self._sock.family)
            self._sock.close()
            sock.listen(1024)
            # A signal reaches a child twice (Ctrl-C: the terminal's to the whole group and
            # the relayed one; systemd's to every process, then the supervisor's): the
            # shutdown starts once.
            loop = asyncio.new_event_loop()
            stop_once_on_signals(loop)
            web.run_app(
                self._app_factory(self.child_config(index)),
                sock=sock,
                ssl_context=self._ssl,
                print=lambda *_: None,
                access_log=None,
                shutdown_timeout=self._shutdown_timeout,
                handle_signals=False,
                loop=loop,
            )
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def child_config(self, index: int) -> TusServerConfig:
        """The configuration of child ``index``: child 0 alone sweeps; no cache on SQLite."""
        changes: dict[str, object] = {}
        if index > 0:
            changes["sweep_interval"] = 0.0
        sqlite = not self._config.effective_database_url.startswith("postgresql")
        if sqlite and self._config.cache_ttl > 0:
            changes["cache_ttl"] = 0.0
        return self._config.replace(**changes) if changes else self._config


def bind_problem(host: str, port: int) -> str | None:
    """Why (host, port) cannot be listened on, if it cannot: in use (by another server, a
    ``serve --workers`` one included: this probe does not share the port as its processes
    do), not an address of this machine, a privileged port. Asked before anything starts,
    so the answer is one line instead of a traceback after the start-up's work."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"{host}: {exc.strerror}"
    for family, kind, proto, _, address in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # (a family this kernel lacks, IPv6 turned off: the server skips it too)
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return f"{host}:{port}: {exc.strerror}"
    return None


def _bind(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT``, not listening yet."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return str(status)


def stop_once_on_signals(loop: asyncio.AbstractEventLoop) -> None:
    """SIGINT/SIGTERM start the graceful shutdown once; a repeat is logged and ignored.

    Ctrl-C on ``make run`` reaches the server twice (from the terminal and relayed by make),
    as repeated SIGTERMs from supervisors do: a second GracefulExit in the middle of the
    shutdown would abort it with a traceback before requests in flight have finished.
    """
    from aiohttp.web_runner import GracefulExit

    log = structlog.get_logger("tusserver")
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if stopping:
            log.info("tusserver already stopping: finishing requests in flight")
            return
        stopping = True
        raise GracefulExit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(sig, on_signal)
