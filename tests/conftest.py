"""Session infrastructure: real PostgreSQL, SeaweedFS (S3) and clamd for the whole test run.

With pytest-xdist the services start ONCE, in the controller process (pytest_configure, before
the workers are spawned), and reach the workers through TUSSERVER_TEST_* environment
variables. Each worker then uses its own database (tus_<worker>) and its own bucket
(tus-<worker>). Without xdist the single pytest process plays the controller.

Fixtures:
    pg_url         session: postgresql+asyncpg URL of this worker's fresh database
    s3_server      session: S3Info(endpoint, access_key, secret_key, bucket, ...), bucket created
    clamd_server   session: ClamdInfo(tcp_url, unix_url, ...)
    fresh_database_url
                   function, parametrized sqlite / postgres: a database of the test's own
    private_postgres / private_s3 / private_clamd
                   function: a PRIVATE instance (tests/services.py) that the test may stop and
                   start again (service-down tests) without disturbing the shared ones
    stalling_postgres
                   function, parametrized held / dropped: the shared PostgreSQL (this worker's
                   database) behind a StallingProxy (tests/stalling.py) that the test stalls

Environment:
    TUSSERVER_TEST_NO_SERVICES=1    start nothing; tests that need a service error clearly
    TUSSERVER_TEST_SERVICES=pg,s3   start only these (names: pg, s3, clamd; default: all)
    TUSSERVER_TEST_PG_HOST/PORT, TUSSERVER_TEST_S3_ENDPOINT/ACCESS_KEY/SECRET_KEY,
    TUSSERVER_TEST_CLAMD_TCP/UNIX   set by the controller; if already set when pytest starts,
                                    those services are used instead of starting new ones
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tusserver.catalog.db import Database, create_database
from tusserver.catalog.migrate import upgrade

pytest_plugins = ["tests.app_fixtures"]

if __package__:  # tests/ is a package (has __init__.py)
    from . import services
    from .services import ClamdServer, PostgresServer, SeaweedS3, ServiceError
    from .stalling import StalledPostgres, StallingProxy
else:  # no tests/__init__.py: pytest put tests/ itself on sys.path
    import services
    from services import ClamdServer, PostgresServer, SeaweedS3, ServiceError
    from stalling import StalledPostgres, StallingProxy

ENV_PREFIX = "TUSSERVER_TEST_"
ALL_SERVICES = ("pg", "s3", "clamd")
# env vars that say where each shared service is
SERVICE_ENV = {
    "pg": ("PG_HOST", "PG_PORT"),
    "s3": ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"),
    "clamd": ("CLAMD_TCP", "CLAMD_UNIX"),
}
LABELS = {"pg": "PostgreSQL", "s3": "SeaweedFS S3", "clamd": "clamd"}

_started: dict[str, services._Service] = {}


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name)


def _wanted() -> list[str]:
    if _env("NO_SERVICES") in ("1", "true", "yes"):
        return []
    raw = _env("SERVICES")
    if raw is None or not raw.strip():
        return list(ALL_SERVICES)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = set(names) - set(ALL_SERVICES)
    if unknown:
        raise pytest.UsageError(f"{ENV_PREFIX}SERVICES: unknown {sorted(unknown)}")
    return names


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _export(values: dict[str, str]) -> None:
    for key, value in values.items():
        os.environ[ENV_PREFIX + key] = value


def _start_shared() -> None:
    wanted = [
        name for name in _wanted() if not all(_env(k) for k in SERVICE_ENV[name])
    ]  # the others were handed to us already
    if not wanted:
        return
    services.install_signal_cleanup()
    pending: list[tuple[str, services._Service]] = []
    errors: dict[str, str] = {}

    # launch the slow-to-be-ready ones first, PostgreSQL's initdb runs meanwhile
    for name in ("s3", "clamd"):
        if name not in wanted:
            continue
        try:
            svc: services._Service = SeaweedS3() if name == "s3" else ClamdServer()
            _started[name] = svc
            pending.append((name, svc.launch()))
        except ServiceError as exc:
            errors[name] = str(exc)
    if "pg" in wanted:
        try:
            pg = PostgresServer()
            _started["pg"] = pg
            pending.append(("pg", pg.launch()))
        except ServiceError as exc:
            errors["pg"] = str(exc)
    for name, svc in pending:
        try:
            svc.wait_ready(60)
        except ServiceError as exc:
            errors[name] = str(exc)

    for name, message in errors.items():
        _started.pop(name, None)
        os.environ[f"{ENV_PREFIX}{name.upper()}_ERROR"] = message
    if isinstance(pg := _started.get("pg"), PostgresServer):
        _export({"PG_HOST": pg.host, "PG_PORT": str(pg.port)})
    if isinstance(s3 := _started.get("s3"), SeaweedS3):
        _export(
            {
                "S3_ENDPOINT": s3.endpoint,
                "S3_ACCESS_KEY": s3.access_key,
                "S3_SECRET_KEY": s3.secret_key,
            }
        )
    if isinstance(clamd := _started.get("clamd"), ClamdServer):
        _export({"CLAMD_TCP": clamd.tcp_url, "CLAMD_UNIX": clamd.unix_url})


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not _is_controller(config):
        return
    if config.option.help or config.option.version:
        return
    _start_shared()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _is_controller(config):
        return
    while _started:
        _, svc = _started.popitem()
        svc.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name in ALL_SERVICES:
        if error := _env(f"{name.upper()}_ERROR"):
            lines.append(f"{LABELS[name]}: FAILED TO START: {error.splitlines()[0]}")
        elif all(_env(k) for k in SERVICE_ENV[name]):
            where = (
                _env(SERVICE_ENV[name][0])
                if name != "pg"
                else (f"{_env('PG_HOST')}:{_env('PG_PORT')}")
            )
            lines.append(f"{LABELS[name]}: {where}")
        else:
            lines.append(f"{LABELS[name]}: not started")
    return ["services: " + "; ".join(lines)]


def _require(name: str) -> dict[str, str]:
    keys = SERVICE_ENV[name]
    values = {k: _env(k) for k in keys}
    if all(values.values()):
        return {k: v for k, v in values.items() if v is not None}
    if error := _env(f"{name.upper()}_ERROR"):
        pytest.fail(f"{LABELS[name]} failed to start for this run:\n{error}", pytrace=False)
    why = (
        f"{ENV_PREFIX}NO_SERVICES is set"
        if name not in _wanted()
        else "it was not started by the controller"
    )
    pytest.fail(
        f"this test needs the shared {LABELS[name]} but {why} "
        f"(missing {', '.join(ENV_PREFIX + k for k in keys)})",
        pytrace=False,
    )


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


# --------------------------------------------------------------------------------------------
# shared services, one database / bucket per worker


@pytest.fixture(scope="session")
def pg_url() -> str:
    """postgresql+asyncpg://postgres@127.0.0.1:PORT/tus_<worker>: a fresh database."""
    env = _require("pg")
    host, port = env["PG_HOST"], int(env["PG_PORT"])
    name = "tus_" + re.sub(r"\W", "_", _worker()).lower()
    services.create_database(host, port, name)
    return f"postgresql+asyncpg://postgres@{host}:{port}/{name}"


@dataclass(frozen=True)
class S3Info:
    endpoint: str  # "127.0.0.1:PORT", as the minio SDK wants it
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    secure: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def client(self, secret_key: str | None = None) -> Any:
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=self.secure,
            region=self.region,
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A catalog of this test's own, on SQLite and on PostgreSQL (a new database on the
    shared server, dropped afterwards): for tests that count rows or whole-service numbers."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}"
        return
    env = _require("pg")
    host, port = env["PG_HOST"], int(env["PG_PORT"])
    name = f"tus_fresh_{os.urandom(6).hex()}"
    services.create_database(host, port, name)
    try:
        yield f"postgresql+asyncpg://postgres@{host}:{port}/{name}"
    finally:
        services.drop_database(host, port, name)


@pytest.fixture
async def fresh_catalog(fresh_database_url: str) -> AsyncIterator[Database]:
    """A catalog of this test's own (``fresh_database_url``), not migrated yet: migration
    tests start it at the revision they need."""
    database = create_database(fresh_database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def migrated_catalog(fresh_catalog: Database) -> Database:
    """``fresh_catalog`` migrated to the head revision."""
    await upgrade(fresh_catalog)
    return fresh_catalog


@pytest.fixture(scope="session")
def s3_server() -> S3Info:
    """The shared SeaweedFS S3 server, with this worker's bucket (tus-<worker>) created."""
    env = _require("s3")
    info = S3Info(
        endpoint=env["S3_ENDPOINT"],
        access_key=env["S3_ACCESS_KEY"],
        secret_key=env["S3_SECRET_KEY"],
        bucket="tus-" + re.sub(r"[^a-z0-9-]", "-", _worker().lower()),
    )
    client = info.client()
    if not client.bucket_exists(info.bucket):
        client.make_bucket(info.bucket)
    return info


@dataclass(frozen=True)
class ClamdInfo:
    tcp_url: str  # tcp://127.0.0.1:PORT
    unix_url: str  # unix:///path/clamd.sock

    @property
    def host(self) -> str:
        return self.tcp_url.removeprefix("tcp://").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.tcp_url.rsplit(":", 1)[1])

    @property
    def socket_path(self) -> str:
        return self.unix_url.removeprefix("unix://")


@pytest.fixture(scope="session")
def clamd_server() -> ClamdInfo:
    env = _require("clamd")
    return ClamdInfo(tcp_url=env["CLAMD_TCP"], unix_url=env["CLAMD_UNIX"])


# --------------------------------------------------------------------------------------------
# private instances, for tests that stop a service


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster with an empty database `tus` (url: .url("tus"));
    stop_server()/start_server() take it down and back up on the same port."""
    server = PostgresServer()
    try:
        server.start()
        server.create_database("tus")
        yield server
    finally:
        server.close()


@pytest.fixture(params=["held", "dropped"])
async def stalling_postgres(
    request: pytest.FixtureRequest, pg_url: str
) -> AsyncIterator[StalledPostgres]:
    """This worker's PostgreSQL database behind a :class:`StallingProxy`. ``held``: what is
    sent during a stall arrives once it ends (a partition that heals, a frozen host that
    resumes); ``dropped``: it never does (the proxy swallows it)."""
    env = _require("pg")
    proxy = StallingProxy(f"{env['PG_HOST']}:{env['PG_PORT']}", swallow=request.param == "dropped")
    await proxy.start()
    try:
        yield StalledPostgres(proxy, pg_url.rsplit("/", 1)[1])
    finally:
        proxy.stalled = False
        await proxy.close()


@pytest.fixture
def private_s3() -> Iterator[SeaweedS3]:
    """A private SeaweedFS S3 server with the bucket `tus-private` created;
    stop()/start() take it down and back up on the same port and data."""
    server = SeaweedS3()
    try:
        server.start()
        server.ensure_bucket("tus-private")
        yield server
    finally:
        server.close()


@pytest.fixture
def private_clamd() -> Iterator[ClamdServer]:
    """A private clamd (tcp_url, unix_url); stop()/start() take it down and back up."""
    server = ClamdServer()
    try:
        server.start()
        yield server
    finally:
        server.close()
