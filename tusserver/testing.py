"""A server in a child process, for end-to-end tests, benchmarks and local clusters.

:class:`ServerProcess` starts a command that listens on a TCP port of 127.0.0.1 (a
``tusserver serve``, or a peer such as a bare aiohttp sink or @tus/server), waits until it
answers, and stops it: SIGTERM for a graceful stop, SIGKILL for a crash, always of the whole
process group so that nothing it started outlives it. Its output is appended to one log file
across restarts, and :meth:`ServerProcess.log` shows the end of it when something fails.

:func:`tusserver_process` builds the usual ``tusserver --data-dir DIR serve`` command with a
clean environment (a developer's own ``TUSSERVER_*`` variables never leak into a test or a
measurement). :func:`tree_cpu_seconds` and :func:`tree_peak_rss_mib` read a process tree's CPU
time and memory from ``/proc`` (what the benchmarks report next to each peer).

The module uses the standard library only: it is imported by the test suite, the benchmarks
and ``examples/cluster`` without loading the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "HOST",
    "ServerError",
    "ServerProcess",
    "clean_environ",
    "free_port",
    "process_tree",
    "tree_cpu_seconds",
    "tree_cpu_split",
    "tree_memory_mib",
    "tusserver_command",
    "tusserver_process",
]

HOST = "127.0.0.1"
#: Seconds a start may take before it is a failure (a cold tusserver start takes about one).
START_DEADLINE = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerError(RuntimeError):
    """The server did not start or answer (the message includes the end of its log)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tusserver_command() -> list[str]:
    """The ``tusserver`` console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("tusserver")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tusserver.cli"]


def clean_environ() -> dict[str, str]:
    """This process's environment without any ``TUSSERVER_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}


#: Builds the command for a port: a server started again after its port was taken elsewhere
#: gets a new one.
ArgvFor = Callable[[int], Sequence[str]]


class ServerProcess:
    """One server command in its own process group, on ``port`` of 127.0.0.1.

    ``argv_for(port)`` is the command; ``env`` its whole environment; output goes to
    ``log_path``. Ready when ``ready_path`` answers a status for which ``ready(status)`` is
    true (default: 200). Without a fixed ``port`` a free one is chosen, and a start that
    fails because another process took it in the meantime is retried on another port until
    clients have seen one that worked.
    """

    def __init__(
        self,
        argv_for: ArgvFor,
        *,
        log_path: Path | str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        cwd: Path | str | None = None,
        ready_path: str = "/healthz",
        ready: Callable[[int], bool] = lambda status: status == 200,
        name: str = "server",
    ) -> None:
        self.name = name
        self.argv_for = argv_for
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = None if cwd is None else Path(cwd)
        self.ready_path = ready_path
        self._ready = ready
        self.port = port or free_port()
        self._port_fixed = port is not None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # --- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root, without a trailing slash: ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- life cycle -----------------------------------------------------------------------

    def start(self, *, deadline: float = START_DEADLINE) -> None:
        """Start (on the same port as before, once it worked) and wait until it is ready."""
        if self.running:
            raise ServerError(f"{self.name} is already running")
        end = time.monotonic() + deadline
        while True:
            self.spawn()
            exit_code = self.wait_ready(end)
            if exit_code is None:
                return
            # The process died: most likely the port was taken. Try again until the deadline,
            # on another port if clients do not know this one yet.
            if time.monotonic() >= end:
                raise ServerError(
                    f"{self.name} exited with code {exit_code} on port {self.port}\n" + self.log()
                )
            if not self._port_fixed:
                self.port = free_port()
            time.sleep(0.2)

    async def astart(self, *, deadline: float = START_DEADLINE) -> None:
        """:meth:`start` from async code (the wait runs in a thread, not on the loop)."""
        await asyncio.to_thread(self.start, deadline=deadline)

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        self._log.write(f"--- starting {self.name} on port {self.port} ---\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            list(self.argv_for(self.port)),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: children end with it
        )

    def wait_ready(self, end: float) -> int | None:
        """None once the server answers; its exit code if it died first (monotonic ``end``)."""
        proc = self.proc
        assert proc is not None
        while True:
            code = proc.poll()
            if code is not None:
                self.proc = None
                return code
            # The port must be this process's: another one may have taken it meanwhile.
            if listens(proc.pid, self.port) and self._answers():
                self._port_fixed = True  # clients know it now: keep it
                return None
            if time.monotonic() >= end:
                self.kill()
                raise ServerError(
                    f"{self.name} did not answer {self.ready_path} in time\n" + self.log()
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        # Always http://127.0.0.1:PORT/...: never a scheme from outside.
        request = urllib.request.Request(self.url + self.ready_path, method="GET")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 - loopback
                return self._ready(resp.status)
        except urllib.error.HTTPError as exc:
            return self._ready(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def kill(self) -> int | None:
        """SIGKILL: the server gets no chance to clean up (a crash)."""
        return self._stop(signal.SIGKILL, timeout=10)

    def terminate(self, timeout: float = 35.0) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL after ``timeout``); the exit code."""
        return self._stop(signal.SIGTERM, timeout=timeout)

    def _stop(self, sig: signal.Signals, *, timeout: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Anything it left behind in its process group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._close_log()
        return proc.returncode

    def restart(self) -> None:
        """Stop (SIGTERM) if running, then start again on the same port."""
        self.terminate()
        self.start()

    def close(self) -> None:
        """Kill the process if it still runs (teardown)."""
        self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, tail: int = 20_000) -> str:
        """The end of the server's log (all starts)."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        return data[-tail:].decode("utf-8", "replace")

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServerProcess({self.name!r}, port={self.port}, pid={self.pid})"


def tusserver_process(
    data_dir: Path | str,
    settings: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    log_path: Path | str | None = None,
    args: Sequence[str] = (),
    name: str = "tusserver",
    inherit_settings: bool = False,
) -> ServerProcess:
    """``tusserver --data-dir DATA_DIR serve`` on 127.0.0.1 (not started yet).

    ``settings`` are ``TUSSERVER_*`` variables; the caller's own are dropped first unless
    ``inherit_settings`` (then they are the defaults ``settings`` add to). ``args`` go after
    ``serve`` (for example ``("--role", "api")``).
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) if inherit_settings else clean_environ()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings or {})
    command = tusserver_command()

    def argv_for(p: int) -> list[str]:
        return [
            *command,
            "--data-dir",
            str(data),
            "serve",
            "--host",
            HOST,
            "--port",
            str(p),
            *args,
        ]

    return ServerProcess(
        argv_for,
        log_path=log_path or data / "server.log",
        env=env,
        port=port,
        name=name,
    )


# --- /proc ----------------------------------------------------------------------------------


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket of 127.0.0.1:``port``.

    Linux only (``/proc``); elsewhere it is assumed. A server that hands its socket to
    children (several workers) is found through its descendants.
    """
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    inodes = {
        f"socket:[{cols[9]}]"
        for cols in (line.split() for line in lines)
        if len(cols) > 9 and cols[1] in wanted and cols[3] == "0A"  # 0A: LISTEN
    }
    if not inodes:
        return False
    for p in process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{p}/fd/{fd}") in inodes:
                    return True
    return False


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux ``/proc``)."""
    kids = _children_map() if Path("/proc").is_dir() else {}
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mib(pid: int, key: str = "VmHWM") -> float:
    """Sum of ``key`` over the process tree (``VmHWM``: peak RSS, ``VmRSS``: current), MiB."""
    return round(sum(_status_kib(p, key) for p in process_tree(pid)) / 1024, 1)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process tree (live processes; reaped children are in
    their parent's cutime/cstime, which is counted too)."""
    user, system = tree_cpu_split(pid)
    return user + system


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process tree, as :func:`tree_cpu_seconds` counts
    them. Apart because on a shared VM the system time of file creation varies by a factor
    of several from minute to minute, while user time stays within a few percent."""
    user = system = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK
