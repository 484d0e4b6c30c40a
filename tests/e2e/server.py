"""A real ``tusserver serve`` process for the end-to-end tests.

``ServerProcess(data_dir)`` starts the server on a free port of 127.0.0.1 with SQLite and the
local store under ``data_dir``, waits until ``/healthz`` answers, and can be killed (SIGKILL),
terminated (SIGTERM) and restarted on the same data directory and port. The server's output
goes to ``data_dir/server.log`` (appended across restarts), which the e2e conftest attaches to
the report of a failed test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

__all__ = ["ServerError", "ServerProcess", "free_port"]

HOST = "127.0.0.1"
#: Seconds a start may take before it is a failure (a cold start takes about one).
START_DEADLINE = 30.0


class ServerError(RuntimeError):
    """The server did not start (the message includes the end of its log)."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the listening socket of 127.0.0.1:``port`` (Linux /proc;
    elsewhere assumed)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return not Path("/proc/net/tcp").exists()
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    inodes = {
        f"socket:[{cols[9]}]"
        for cols in (line.split() for line in lines)
        if len(cols) > 9 and cols[1] in wanted and cols[3] == "0A"  # 0A: LISTEN
    }
    if not inodes:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


#: Settings every e2e server gets unless the test overrides them, each only if this server
#: version has the key (unknown TUSSERVER_* variables are a configuration error). The e2e
#: tests speak tus as anonymous clients do (tuspy, tus-js-client, raw requests) and create
#: many uploads from one IP: authentication and rate limits are off. A test that wants them
#: passes e.g. ``TUSSERVER_AUTH=jwt`` in ``env``.
DEFAULT_SETTINGS = {
    "log_format": "console",
    "log_level": "info",
    "auth": "none",
    "rate_limit_creations": "0",
    "rate_limit_api": "0",
}


def _defaults() -> dict[str, str]:
    import dataclasses

    from tusserver.config import TusServerConfig

    fields = {f.name for f in dataclasses.fields(TusServerConfig)}
    return {
        f"TUSSERVER_{key.upper()}": value
        for key, value in DEFAULT_SETTINGS.items()
        if key in fields
    }


def _command() -> list[str]:
    script = Path(sys.executable).with_name("tusserver")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tusserver.cli"]


class ServerProcess:
    """One ``tusserver serve`` subprocess on ``data_dir``; ``env`` adds TUSSERVER_* settings."""

    def __init__(
        self,
        data_dir: Path | str,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        start: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "server.log"
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port_fixed = port is not None
        if start:
            self.start()

    # --- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's root, without a trailing slash: ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The tus creation URL."""
        return f"{self.url}/uploads/"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- life cycle -----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # The server must see only the settings of this test, not the caller's TUSSERVER_*.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(_defaults())
        env.update(self.extra_env)
        return env

    def start(self, *, deadline: float = START_DEADLINE) -> None:
        """Start the server (same port as before) and wait until /healthz answers 200."""
        if self.running:
            raise ServerError("the server is already running")
        self._close_log()
        end = time.monotonic() + deadline
        while True:
            self._spawn()
            exit_code = self._wait_healthy(end)
            if exit_code is None:
                return
            # The process died: most likely the port was taken. Try again until the deadline,
            # on another port if clients do not know this one yet.
            if time.monotonic() >= end:
                raise ServerError(
                    f"tusserver exited with code {exit_code} on port {self.port}\n" + self.log()
                )
            if not self._port_fixed:
                self.port = free_port()
            time.sleep(0.2)

    def _spawn(self) -> None:
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        self._log.write(f"--- starting tusserver on port {self.port} ---\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [
                *_command(),
                "--data-dir",
                str(self.data_dir),
                "serve",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,
        )

    def _wait_healthy(self, end: float) -> int | None:
        """None once /healthz answers; the exit code if the process died first."""
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                return code
            # The port must be ours: another process may have taken it since free_port().
            if _listens(self.proc.pid, self.port):
                try:
                    with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:
                        if resp.status == 200:
                            self._port_fixed = True  # clients know it now: keep it
                            return None
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
            if time.monotonic() >= end:
                self.kill()
                raise ServerError(f"tusserver did not answer /healthz in time\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up (a crash)."""
        self._stop(signal.SIGKILL, timeout=10)

    def terminate(self, timeout: float = 35.0) -> int | None:
        """SIGTERM and wait for a graceful exit (SIGKILL after ``timeout``); the exit code."""
        return self._stop(signal.SIGTERM, timeout=timeout)

    def _stop(self, sig: signal.Signals, *, timeout: float) -> int | None:
        proc = self.proc
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
        self.proc = None
        self._close_log()
        return proc.returncode

    def restart(self) -> None:
        """Stop (SIGTERM) if running, then start again on the same data dir and port."""
        self.terminate()
        self.start()

    def close(self) -> None:
        """Kill the process if it still runs (test teardown)."""
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
        return f"ServerProcess({str(self.data_dir)!r}, port={self.port}, pid={self.pid})"
