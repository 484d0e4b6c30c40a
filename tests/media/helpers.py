"""Uploading a fixture through the real HTTP API and waiting for the pipeline's verdict."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image

from tests.api.helpers import NO_LIMITS
from tests.app_fixtures import MakeClient

Client = TestClient[Any, Any]

__all__ = ["Client", "media_client", "thumbnail", "upload_file", "wait_done"]


async def media_client(make_client: MakeClient, **overrides: Any) -> Client:
    return await make_client(**{**NO_LIMITS, "pipeline_poll_interval": 0.1, **overrides})


async def upload_file(
    client: Client,
    path: Path,
    *,
    content_type: str = "application/octet-stream",
    name: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """POST /upload (a multipart form): returns the new file's id."""
    form = FormData()
    form.add_field("file", path.read_bytes(), filename=name or path.name,
                   content_type=content_type)  # fmt: skip
    resp = await client.post("/api/v1/upload", data=form, headers=headers or {})
    body = await resp.json()
    assert resp.status == 201, body
    file_id: str = body["files"][0]["file_id"]
    return file_id


async def wait_done(
    client: Client, file_id: str, *, headers: dict[str, str] | None = None, timeout: float = 60
) -> dict[str, Any]:
    """The file object once the pipeline has decided (committed, rejected or failed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(f"/api/v1/file/{file_id}", headers=headers or {})
        info: dict[str, Any] = await resp.json()
        if info["status"] in ("committed", "rejected", "failed"):
            return info
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"file {file_id} still {info['status']}: {info.get('reason')}")
        await asyncio.sleep(0.05)


async def thumbnail(
    client: Client, file_id: str, size: int, headers: dict[str, str] | None = None
) -> Image.Image:
    resp = await client.get(f"/api/v1/file/{file_id}/thumbnail?size={size}", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "image/webp"
    im = Image.open(io.BytesIO(await resp.read()))
    im.load()
    assert im.format == "WEBP"
    return im
