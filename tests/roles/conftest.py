"""Fixtures of the roles tests: ``serve --role api`` instances and ``tusserver worker``
processes on PostgreSQL + S3, and ``serve --workers N`` on the embedded default.

``roles_env``    the TUSSERVER_* settings of a deployment of this test's own: a fresh
                 PostgreSQL database (dropped at the end) and an S3 key prefix in the session's
                 bucket (chunk_store = object_store = s3, locker = postgres)
``role_factory`` ``role_factory(kind, env)`` starts an ``api`` instance (``serve --role api``),
                 a ``worker`` (``tusserver worker``) or an ``all`` instance (``serve``); all are
                 killed at teardown, their logs attached to a failed test's report
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from yarl import URL

from tusserver.testing import HOST, ServerProcess, clean_environ, tusserver_command

from .. import services
from ..conftest import S3Info
from ..e2e.server import _defaults

__all__ = ["RoleFactory", "RoleProcess", "RolesEnv"]


class RoleProcess(ServerProcess):
    """A ``tusserver serve`` or ``tusserver worker`` process on ``data_dir`` (``extra_args``
    are added to the command, e.g. ``("--role", "api")`` or ``("--workers", "2")``)."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        command: str = "serve",
        extra_args: tuple[str, ...] = (),
        start: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.command = command
        environ = clean_environ()
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(_defaults())
        environ.update(env or {})
        base = tusserver_command()
        data = str(self.data_dir)

        def argv_for(port: int) -> list[str]:
            where = ["--host", HOST, "--port", str(port)]
            return [*base, "--data-dir", data, command, *where, *extra_args]

        super().__init__(
            argv_for,
            log_path=self.data_dir / "server.log",
            env=environ,
            name=f"tusserver {command}",
        )
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        """The tus creation URL."""
        return f"{self.url}/uploads/"


RoleFactory = Callable[..., RoleProcess]


@dataclass(frozen=True)
class RolesEnv:
    settings: dict[str, str]
    dsn: str  # asyncpg DSN of the deployment's database
    s3: S3Info
    object_prefix: str  # S3 key prefix of committed files: <object_prefix><file_id>/<name>


@pytest.fixture
def roles_env(pg_url: str, s3_server: S3Info) -> Iterator[RolesEnv]:
    pg = URL(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    assert pg.host is not None and pg.port is not None
    token = secrets.token_hex(4)
    worker = re.sub(r"\W", "_", os.environ.get("PYTEST_XDIST_WORKER", "master")).lower()
    dbname = f"tus_roles_{worker}_{token}"
    services.create_database(pg.host, pg.port, dbname)
    user = pg.user or "postgres"
    prefix = f"roles-{token}/"
    settings = {
        "TUSSERVER_DATABASE_URL": f"postgresql+asyncpg://{user}@{pg.host}:{pg.port}/{dbname}",
        "TUSSERVER_LOCKER": "postgres",
        "TUSSERVER_CHUNK_STORE": "s3",
        "TUSSERVER_OBJECT_STORE": "s3",
        "TUSSERVER_S3_ENDPOINT": s3_server.endpoint,
        "TUSSERVER_S3_ACCESS_KEY": s3_server.access_key,
        "TUSSERVER_S3_SECRET_KEY": s3_server.secret_key,
        "TUSSERVER_S3_BUCKET": s3_server.bucket,
        "TUSSERVER_S3_REGION": s3_server.region,
        "TUSSERVER_S3_SECURE": "false",
        "TUSSERVER_MAX_SIZE": str(1024**3),
        "TUSSERVER_S3_CHUNK_PREFIX": f"{prefix}tus/",
        "TUSSERVER_OBJECT_KEY_TEMPLATE": prefix + "files/{file_id}/{name}",
        "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2",
        "TUSSERVER_PIPELINE_RETRY_BASE": "0.2",
        "TUSSERVER_SWEEP_INTERVAL": "0",
    }
    try:
        yield RolesEnv(
            settings=settings,
            dsn=f"postgresql://{user}@{pg.host}:{pg.port}/{dbname}",
            s3=s3_server,
            object_prefix=f"{prefix}files/",
        )
    finally:
        services.drop_database(pg.host, pg.port, dbname)


_PROCS = pytest.StashKey[list[RoleProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for i, proc in enumerate(item.stash.get(_PROCS, [])):
            report.sections.append((f"{proc.command} log {i} ({proc.log_path})", proc.log()))
    return report


@pytest.fixture
def role_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoleFactory]:
    started: list[RoleProcess] = []

    def start(
        kind: str,
        env: Mapping[str, str] | None = None,
        *,
        extra_args: tuple[str, ...] = (),
        data_dir: Path | None = None,
    ) -> RoleProcess:
        command, args = ("worker", ()) if kind == "worker" else ("serve", ("--role", kind))
        proc = RoleProcess(
            data_dir or tmp_path / f"{kind}{len(started)}",
            env,
            command=command,
            extra_args=(*args, *extra_args),
            start=False,
        )
        started.append(proc)
        request.node.stash.setdefault(_PROCS, []).append(proc)
        proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.close()
