"""Liveness and readiness of a real server whose PostgreSQL goes away and comes back."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services import PostgresServer
from tusserver import TusServerConfig, create_app

from .conftest import ServerFactory
from .helpers import samples

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_ready(url: str, want: int, deadline: float = 20.0) -> tuple[int, Any]:
    end = time.monotonic() + deadline
    while True:
        status, body = _get(url)
        if status == want or time.monotonic() > end:
            return status, body
        time.sleep(0.1)


def test_readyz_follows_the_database(
    server_factory: ServerFactory, private_postgres: PostgresServer
) -> None:
    server = server_factory({"TUSSERVER_DATABASE_URL": private_postgres.url("tus")})
    healthz, readyz = f"{server.url}/healthz", f"{server.url}/readyz"

    assert _get(healthz)[0] == 200
    status, body = _get(readyz)
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "object_store": "ok", "storage": "ok"}

    private_postgres.stop_server()
    status, body = _get(readyz)
    assert status == 503, body
    assert body["status"] == "not ready"
    assert body["checks"]["database"].startswith("unreachable"), body
    assert body["checks"]["object_store"] == "ok", body
    assert _get(healthz)[0] == 200, "liveness must not depend on the database"

    private_postgres.start_server()
    status, body = _wait_ready(readyz, 200)
    assert status == 200, body
    assert body["checks"]["database"] == "ok"
    assert server.running


async def test_a_hung_scanner_is_reported_as_itself_within_the_probe_s_timeout(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """clamd accepts connections and never answers: /readyz says so within its 5-second
    check timeout (it waited 10 s, a ping's own timeout), and /metrics marks the scanner
    down, not the database and the object store (a timeout of all the checks together
    marked those two down instead, firing DependencyDown for the wrong dependency)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = TusServerConfig(
            data_dir=tmp_path / "data",
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
            sweep_interval=0,
            auth="none",
            clamd_url=f"tcp://127.0.0.1:{port}",
            clamd_required=False,
        )
        client = await aiohttp_client(create_app(config))
        started = time.monotonic()
        resp = await client.get("/readyz")
        body = await resp.json()
        assert time.monotonic() - started < 6.0, body
        assert resp.status == 503, body
        assert body["checks"]["scanner"].startswith("unreachable"), body
        assert body["checks"]["database"] == body["checks"]["object_store"] == "ok", body

        text = await (await client.get("/metrics")).text()
        up = {
            dict(labels)["dependency"]: value
            for (name, labels), value in samples(text).items()
            if name == "tusserver_dependency_up"
        }
        assert (up["database"], up["object_store"], up["scanner"]) == (1, 1, 0), up
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
