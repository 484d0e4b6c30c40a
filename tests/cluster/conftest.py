"""A tusserver cluster for the tests of this package: 3 instances behind nginx, round-robin.

``cluster`` (module scope) starts, for each test module:

  - a fresh PostgreSQL database on the session's PostgreSQL server (dropped at the end),
  - 3 ``tusserver serve`` processes (tests/e2e/server.py) sharing it and the session's S3
    bucket (chunk_store = object_store = s3, locker = postgres), under a chunk prefix and an
    object key prefix of their own,
  - nginx from examples/cluster (its template and its ``Nginx`` helper), listening on
    127.0.0.1 and spreading requests over the instances.

Everything is killed at the end of the module. The logs of the instances and of nginx are
attached to the report of a failed test.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from yarl import URL

from .. import services
from ..conftest import S3Info
from ..e2e.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
RUN_CLUSTER = REPO / "examples" / "cluster" / "run_cluster.py"
INSTANCES = 3
PART_SIZE = 5 * 1024 * 1024


def _load_run_cluster() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tus_example_run_cluster", RUN_CLUSTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_cluster = _load_run_cluster()


@dataclass
class Cluster:
    instances: list[ServerProcess]
    nginx: Any  # run_cluster.Nginx
    s3: S3Info
    dsn: str  # asyncpg DSN of the cluster's database
    chunk_prefix: str  # S3 key prefix of uploads in progress
    object_prefix: str  # S3 key prefix of committed files: <object_prefix><file_id>/<name>

    @property
    def url(self) -> str:
        return str(self.nginx.url)

    @property
    def endpoint(self) -> str:
        """The tus creation URL, through nginx."""
        return f"{self.url}/uploads/"

    def on(self, index: int, url: str) -> str:
        """``url`` (of an upload) addressed to instance ``index`` directly, not through nginx."""
        path = URL(url).raw_path
        return f"{self.instances[index].url}{path}"

    def logs(self) -> list[tuple[str, str]]:
        out = [(f"tusserver {i} ({s.log_path})", s.log()) for i, s in enumerate(self.instances)]
        out.append(("nginx", self.nginx.log()))
        return out


_CLUSTERS = pytest.StashKey[list[Cluster]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.extend(cluster.logs())
    return report


@pytest.fixture(scope="module")
def _module_cluster(
    pg_url: str, s3_server: S3Info, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    if run_cluster.find_nginx() is None:
        pytest.fail(
            "nginx is not installed: run scripts/setup-test-env.sh "
            "(or apt-get install nginx-light)",
            pytrace=False,
        )
    pg = URL(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    assert pg.host is not None and pg.port is not None
    token = secrets.token_hex(4)
    worker = re.sub(r"\W", "_", os.environ.get("PYTEST_XDIST_WORKER", "master")).lower()
    dbname = f"tus_cluster_{worker}_{token}"
    services.create_database(pg.host, pg.port, dbname)
    db_url = f"postgresql+asyncpg://{pg.user or 'postgres'}@{pg.host}:{pg.port}/{dbname}"
    dsn = f"postgresql://{pg.user or 'postgres'}@{pg.host}:{pg.port}/{dbname}"

    prefix = f"cluster-{token}/"
    env = {
        "TUSSERVER_DATABASE_URL": db_url,
        "TUSSERVER_LOCKER": "postgres",
        "TUSSERVER_CHUNK_STORE": "s3",
        "TUSSERVER_OBJECT_STORE": "s3",
        "TUSSERVER_S3_ENDPOINT": s3_server.endpoint,
        "TUSSERVER_S3_ACCESS_KEY": s3_server.access_key,
        "TUSSERVER_S3_SECRET_KEY": s3_server.secret_key,
        "TUSSERVER_S3_BUCKET": s3_server.bucket,
        "TUSSERVER_S3_REGION": s3_server.region,
        "TUSSERVER_S3_SECURE": "false",
        "TUSSERVER_S3_PART_SIZE": str(PART_SIZE),
        # With a max_size the chunk store keeps the 5 MiB parts (with none it sizes them for a
        # 5 TiB upload: 640 MiB, so nothing below that would ever be a part)
        "TUSSERVER_MAX_SIZE": str(1024**3),
        "TUSSERVER_S3_CHUNK_PREFIX": f"{prefix}tus/",
        "TUSSERVER_OBJECT_KEY_TEMPLATE": prefix + "files/{file_id}/{name}",
        "TUSSERVER_TRUST_PROXY_HEADERS": "true",
        "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2",
        "TUSSERVER_PIPELINE_RETRY_BASE": "0.2",
        "TUSSERVER_SWEEP_INTERVAL": "0",
    }
    base = tmp_path_factory.mktemp("cluster")
    instances = [ServerProcess(base / f"instance{i}", env, start=False) for i in range(INSTANCES)]
    # nginx's workers run as `nobody` when we are root: its prefix must not be under pytest's
    # private (0700) temp directory.
    nginx_prefix = Path(tempfile.mkdtemp(prefix="tus-cluster-nginx-"))
    nginx = None
    try:
        # Started together, as a deployment does: the migrations must run once.
        with concurrent.futures.ThreadPoolExecutor(INSTANCES) as pool:
            for future in [pool.submit(s.start) for s in instances]:
                future.result()
        nginx = run_cluster.Nginx(nginx_prefix, [f"127.0.0.1:{s.port}" for s in instances])
        nginx.start()
        yield Cluster(
            instances=instances,
            nginx=nginx,
            s3=s3_server,
            dsn=dsn,
            chunk_prefix=f"{prefix}tus/",
            object_prefix=f"{prefix}files/",
        )
    finally:
        if nginx is not None:
            nginx.stop()
        for srv in instances:
            srv.close()
        shutil.rmtree(nginx_prefix, ignore_errors=True)
        services.drop_database(pg.host, pg.port, dbname)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, _module_cluster: Cluster) -> Cluster:
    """The module's cluster; a test that kills an instance must start it again."""
    request.node.stash.setdefault(_CLUSTERS, []).append(_module_cluster)
    down = [i for i, s in enumerate(_module_cluster.instances) if not s.running]
    if down:
        pytest.fail(f"instances {down} of the module's cluster are down")
    return _module_cluster
