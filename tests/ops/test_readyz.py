"""Liveness and readiness of a real server whose PostgreSQL goes away and comes back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.services import PostgresServer

from .conftest import ServerFactory

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
