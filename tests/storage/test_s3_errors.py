"""An S3 endpoint that answers with something other than S3's XML (a proxy's or a rate
limiter's page, a status minio has no error for) is a storage error to the service, never an
exception it does not know (which became a 500)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from storage_backends.base import StorageError
from storage_backends.s3 import S3ChunkStore, S3ObjectStore, S3Settings


async def _drain(blocks: Any) -> None:
    async for _ in blocks:
        pass


@pytest.mark.parametrize("status", [413, 429, 502, 507])
async def test_answers_that_are_not_s3_xml_are_storage_errors(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]], status: int
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text="<html>slow down</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app)
    settings = S3Settings(
        endpoint=f"127.0.0.1:{server.port}", access_key="a", secret_key="b",
        bucket="bkt", region="us-east-1", secure=False,
    )  # fmt: skip
    objects = S3ObjectStore(settings)
    chunks = S3ChunkStore(settings, prefix="p/")
    try:
        for call in (
            lambda: objects.stat("k"),
            lambda: _drain(objects.get("k")),
            lambda: chunks.get_offset("u"),
        ):
            with pytest.raises(StorageError):
                await call()
    finally:
        await objects.close()
        await chunks.close()
