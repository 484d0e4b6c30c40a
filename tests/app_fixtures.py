"""App fixtures for the protocol suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from tusserver import TusServerConfig, create_app
from tusserver.events import Hooks

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {"Content-Type": "application/offset+octet-stream"}

MakeClient = Callable[..., Awaitable[TestClient[Any, web.Application]]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def storage_settings() -> dict[str, Any]:
    """Storage config of the app under test; tests/protocol adds the S3 chunk store."""
    return {}


@pytest.fixture
def make_client(
    aiohttp_client: Any, tmp_path: Path, database_url: str, storage_settings: dict[str, Any]
) -> MakeClient:
    """Build a server with config overrides (and optional hooks), return its test client."""

    async def make(*, hooks: Hooks | None = None, **overrides: Any) -> TestClient[Any, Any]:
        settings: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "sweep_interval": 0,
            "lock_timeout": 3.0,
            "auth": "none",
            "pipeline_poll_interval": 0.2,
            **storage_settings,
        }
        settings.update(overrides)
        config = TusServerConfig(**settings)
        client: TestClient[Any, Any] = await aiohttp_client(create_app(config, hooks=hooks))
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client(max_size=10 * 1024 * 1024)


async def get_committed(
    client: TestClient[Any, Any], path: str, *, timeout: float = 15.0, **kwargs: Any
) -> ClientResponse:
    """tus GET of a finished upload once its file is committed: until the pipeline has
    validated it the answer is 409 with Retry-After, whoever asks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        resp = await client.get(path, **kwargs)
        if resp.status != 409 or "Retry-After" not in resp.headers or loop.time() > deadline:
            return resp
        resp.release()
        await asyncio.sleep(0.05)
