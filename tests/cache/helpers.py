"""Helpers of the cache suites: a committed file row of one owner, cache counters, polling."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from tests.api.helpers import Client, file_row, insert_files, runtime
from tests.auth.helpers import bearer
from tusserver.cache import FILES, MISSING, Namespace

__all__ = ["add_file", "cached_file", "file_hits", "get_file", "until"]

_ANY_TTL: Namespace[Any] = Namespace(FILES, 1.0)


async def add_file(client: Client, owner: str | None, name: str, **extra: Any) -> str:
    """Insert a file row straight into the catalog (as the pipeline leaves it); its id."""
    row = file_row(name=name, owner=owner, created_at=dt.datetime.now(dt.UTC), **extra)
    await insert_files(client, [row])
    file_id: str = row["id"]
    return file_id


async def get_file(client: Client, file_id: str, token: str | None) -> tuple[int, dict[str, Any]]:
    resp = await client.get(f"/api/v1/file/{file_id}", headers=bearer(token))
    body: dict[str, Any] = await resp.json()
    return resp.status, body


def file_hits(client: Client) -> int:
    return runtime(client).cache.hits.get(FILES, 0)


def cached_file(client: Client, file_id: str) -> Any:
    """The cached record of the file, or None (looked at without counting a lookup)."""
    hit = runtime(client).cache.peek(_ANY_TTL, file_id)
    return None if hit is MISSING else hit


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait (bounded) for a state change that is asynchronous by nature."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
