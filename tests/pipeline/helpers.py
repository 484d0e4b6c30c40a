"""Helpers shared by the pipeline tests: the file row as the pipeline sees it, and waiting on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from tests.protocol.test_core import head
from tusserver.app import RUNTIME, Runtime
from tusserver.catalog.schema import files as files_table

Client = TestClient[Any, Any]

__all__ = ["file_id_of", "file_state", "runtime", "upload_id_of", "wait_state"]


def runtime(client: Client) -> Runtime:
    return client.server.app[RUNTIME]


def upload_id_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[1]


async def file_state(client: Client, file_id: str) -> dict[str, Any]:
    """The file's row (attempts and lease are not in the API)."""
    async with runtime(client).db.engine.connect() as conn:
        row = (
            (await conn.execute(select(files_table).where(files_table.c.id == file_id)))
            .mappings()
            .one()
        )
    return dict(row)


async def file_id_of(client: Client, path: str) -> str:
    for _ in range(200):
        file_id = (await head(client, path)).headers.get("X-File-Id")
        if file_id:
            return file_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no file for {path}")


async def wait_state(
    client: Client, file_id: str, check: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await file_state(client, file_id)
        if check(state):
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"file {file_id} never reached the state: {state}")
        await asyncio.sleep(0.05)
