#!/usr/bin/env python3
"""A local tusserver cluster: PostgreSQL + S3 + N stateless instances behind nginx.

    .venv/bin/python examples/cluster/run_cluster.py [--instances 3] [--port 8080]

Starts, all on 127.0.0.1 and all as children of this process:

  - a throwaway PostgreSQL cluster (unless TUSSERVER_DATABASE_URL is set),
  - a SeaweedFS S3 server (unless TUSSERVER_S3_ENDPOINT is set),
  - N ``tusserver serve`` processes sharing both (chunk_store = object_store = s3, locker on
    PostgreSQL), each on its own port,
  - nginx from Debian, round-robin over the instances (installed with apt-get if missing),

prints the endpoint and waits; Ctrl-C (or SIGTERM) stops everything and removes the
throwaway data. The PostgreSQL and SeaweedFS helpers are the test suite's (tests/services.py);
:func:`find_nginx`, :func:`render_nginx_conf` and :class:`Nginx` are used by tests/cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tusserver.testing import ServerError, free_port, tusserver_process

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TEMPLATE = HERE / "nginx.conf.template"
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# nginx


def find_nginx() -> str | None:
    """The nginx binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    return shutil.which("nginx", path=path)


def install_nginx() -> str:
    """apt-get install nginx-light (or nginx where nginx-light no longer exists).

    A temporary policy-rc.d keeps the package from starting the system's nginx on port 80."""
    if shutil.which("apt-get") is None:
        raise ClusterError("nginx is missing and apt-get is not available: install nginx")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        subprocess.run(
            [*sudo, "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {policy}; chmod 755 {policy}"],
            check=True,
        )
        created = True
    try:
        subprocess.run([*sudo, *env, "apt-get", "update", "-qq"], check=True)
        known = subprocess.run(
            ["apt-cache", "show", "nginx-light"], capture_output=True, check=False
        )
        package = "nginx-light" if known.returncode == 0 else "nginx"
        print(f"installing {package} with apt-get ...", flush=True)
        subprocess.run(
            [*sudo, *env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=True,
        )
    finally:
        if created:
            subprocess.run([*sudo, "rm", "-f", str(policy)], check=False)
    found = find_nginx()
    if found is None:
        raise ClusterError("nginx is still missing after apt-get install")
    return found


def render_nginx_conf(
    template: str, *, prefix: Path, listen_port: int, upstreams: Sequence[str]
) -> str:
    """The template with its {{PLACEHOLDERS}} filled in; ``upstreams`` are ``host:port``."""
    servers = "\n".join(f"        server {addr} max_fails=1 fail_timeout=2s;" for addr in upstreams)
    text = (
        template.replace("{{PREFIX}}", str(prefix))
        .replace("{{LISTEN}}", f"{HOST}:{listen_port}")
        .replace("{{UPSTREAM_SERVERS}}", servers)
    )
    if "{{" in text:
        raise ClusterError("nginx template: unknown placeholder left: " + text[text.index("{{") :])
    return text


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    """nginx as a foreground child (``daemon off``), everything in ``prefix``.

    The prefix must be reachable by nginx's workers: when run as root they drop to the
    compiled-in user (nobody), so the prefix is made world-readable (0755)."""

    def __init__(
        self,
        prefix: Path,
        upstreams: Sequence[str],
        *,
        port: int | None = None,
        template: Path = TEMPLATE,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_nginx()
        if self.binary is None:
            raise ClusterError(
                "nginx not found: apt-get install nginx-light (scripts/setup-test-env.sh does)"
            )
        self.prefix = Path(prefix).resolve()
        self.port = port or free_port()
        self.upstreams = list(upstreams)
        self.template = template
        self.conf = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _args(self) -> list[str]:
        assert self.binary is not None
        return [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.conf),
            "-e",
            str(self.error_log),
            "-g",
            f"daemon off; pid {self.prefix}/nginx.pid;",
        ]

    def start(self, timeout: float = 10.0) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.prefix.chmod(0o755)
        self.conf.write_text(
            render_nginx_conf(
                self.template.read_text(),
                prefix=self.prefix,
                listen_port=self.port,
                upstreams=self.upstreams,
            )
        )
        check = subprocess.run([*self._args(), "-t", "-q"], capture_output=True, check=False)
        if check.returncode != 0:
            raise ClusterError(f"nginx -t failed:\n{check.stderr.decode(errors='replace')}")
        self._out = open(self.prefix / "nginx.out", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self._args(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: master and workers end together
        )
        end = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise ClusterError(f"nginx did not start:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (fast shutdown: the master stops its workers), then SIGKILL the group."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            else:
                # The master is gone; workers it left behind are still in its process group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self._out is not None:
            self._out.close()
            self._out = None

    def log(self, tail: int = 4000) -> str:
        out = []
        for path in (self.prefix / "nginx.out", self.error_log):
            with contextlib.suppress(OSError):
                out.append(f"--- {path}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# tusserver instances


class Instance:
    """One ``tusserver serve`` process on 127.0.0.1:``port`` (tusserver.testing's harness).

    It inherits this process's environment: settings the caller exported win over ``env``.
    """

    def __init__(self, name: str, data_dir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.process = tusserver_process(
            data_dir, {**env, **os.environ}, name=name, inherit_settings=True
        )
        self.log_path = self.process.log_path

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def running(self) -> bool:
        return self.process.running

    def start(self) -> None:
        self.process.spawn()

    def wait_healthy(self, timeout: float = 60.0) -> None:
        try:
            code = self.process.wait_ready(time.monotonic() + timeout)
        except ServerError as exc:
            raise ClusterError(str(exc)) from None
        if code is not None:
            raise ClusterError(f"{self.name} exited ({code}):\n{self.log()}")

    def stop(self, timeout: float = 35.0) -> int | None:
        # graceful: requests in flight end, pipeline leases handed back
        return self.process.terminate(timeout)

    def log(self, tail: int = 4000) -> str:
        return self.process.log(tail)


# --------------------------------------------------------------------------------------------
# the cluster


def _services() -> Any:
    """tests/services.py (throwaway PostgreSQL and SeaweedFS), imported from the checkout."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import services  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return services


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=3, help="tusserver instances (3)")
    parser.add_argument("--port", type=int, default=8080, help="nginx port on 127.0.0.1 (8080)")
    parser.add_argument("--workdir", type=Path, help="keep logs and data here (default: temp)")
    parser.add_argument(
        "--auth",
        choices=("none", "jwt"),
        default=os.environ.get("TUSSERVER_AUTH", "none"),
        help="none (default, local demo) or jwt (one shared generated secret)",
    )
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")

    # Ctrl-C and SIGTERM both end in the cleanup below (even if the shell that started us in
    # the background made it ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="tus-cluster-"))
        # PostgreSQL runs as `postgres` and nginx's workers as `nobody` when we are root
        workdir.chmod(0o755)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    started: list[Any] = []  # each has stop() or close(); stopped in reverse order
    try:
        nginx_bin = find_nginx() or install_nginx()
        env = _cluster_env(args, workdir, started)
        instances = [
            Instance(f"tusserver-{i + 1}", workdir / f"instance-{i + 1}", env)
            for i in range(args.instances)
        ]
        for inst in instances:
            inst.start()
            started.append(inst)
        for inst in instances:  # started together: migrations run once (advisory lock)
            inst.wait_healthy()
        nginx = Nginx(
            workdir / "nginx",
            [f"{HOST}:{inst.port}" for inst in instances],
            port=args.port,
            binary=nginx_bin,
        )
        nginx.start()
        started.append(nginx)

        print()
        print(f"tus endpoint:  {nginx.url}/uploads/")
        print(f"web UI / API:  {nginx.url}/")
        for inst in instances:
            print(f"  {inst.name}: {inst.url}  (log: {inst.log_path})")
        print(f"nginx logs:    {nginx.access_log}, {nginx.error_log}")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for inst in instances:
                if inst.process.proc is not None and not inst.running:
                    code = inst.stop()
                    print(f"{inst.name} exited ({code}); see {inst.log_path}")
            if nginx.proc is None or nginx.proc.poll() is not None:
                print(f"nginx exited:\n{nginx.log()}")
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # a clear message, then the cleanup below
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan anything
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping ...", flush=True)
        for item in reversed(started):
            with contextlib.suppress(Exception):
                # the services' close() also deletes their data; stop() keeps logs
                (item.close if hasattr(item, "close") else item.stop)()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _cluster_env(args: argparse.Namespace, workdir: Path, started: list[Any]) -> dict[str, str]:
    """TUSSERVER_* settings every instance gets (any already in the environment win)."""
    env: dict[str, str] = {}
    if not os.environ.get("TUSSERVER_DATABASE_URL"):
        services = _services()
        pg = services.PostgresServer(base_dir=workdir)
        started.append(pg)
        pg.start()
        env["TUSSERVER_DATABASE_URL"] = pg.create_database("tus")
        print(f"PostgreSQL:    {pg.host}:{pg.port} (throwaway)")
    if not os.environ.get("TUSSERVER_S3_ENDPOINT"):
        services = _services()
        s3 = services.SeaweedS3(base_dir=workdir)
        started.append(s3)
        s3.start()
        env.update(
            TUSSERVER_S3_ENDPOINT=s3.endpoint,
            TUSSERVER_S3_ACCESS_KEY=s3.access_key,
            TUSSERVER_S3_SECRET_KEY=s3.secret_key,
            TUSSERVER_S3_SECURE="false",
            TUSSERVER_S3_BUCKET="tusserver",
            TUSSERVER_S3_PART_SIZE=str(5 * 1024 * 1024),
        )
        print(f"SeaweedFS S3:  {s3.url} (throwaway, bucket 'tusserver')")
    env.update(
        TUSSERVER_CHUNK_STORE="s3",
        TUSSERVER_OBJECT_STORE="s3",
        TUSSERVER_LOCKER="postgres",
        TUSSERVER_TRUST_PROXY_HEADERS="true",
        TUSSERVER_AUTH=args.auth,
        TUSSERVER_PIPELINE_POLL_INTERVAL="1",
        # The S3 chunk store sizes its parts so that max_size fits in 10,000 of them; with no
        # max_size (0) it plans for 5 TiB, i.e. 640 MiB+ parts (see docs/scaling.md).
        TUSSERVER_MAX_SIZE=str(10 * 1024**3),
    )
    if args.auth == "jwt" and not os.environ.get("TUSSERVER_JWT_SECRET"):
        # Without it each instance would generate its own secret in its data_dir, and a token
        # issued by one instance would be refused by the others.
        env["TUSSERVER_JWT_SECRET"] = secrets.token_urlsafe(48)
    # Settings the caller exported win (e.g. TUSSERVER_S3_BUCKET for a real S3).
    return {k: v for k, v in env.items() if k not in os.environ}


if __name__ == "__main__":
    sys.exit(main())
