"""POST /upload with one file as the raw body, named by query parameters (the seed's shape)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator

from tests.app_fixtures import MakeClient

from .helpers import api_client, api_error
from .test_form_upload import TEXT, wait_done


async def test_a_raw_body_is_one_file(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    resp = await client.post(
        "/api/v1/upload",
        params={"filename": "notes 2024.txt", "mimetype": "text/plain", "folder": "/docs/"},
        data=TEXT,
        headers={"Content-Type": "application/octet-stream"},
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert body["filename"] == "notes 2024.txt"
    assert body["mimetype"] == "text/plain"
    assert body["size"] == len(TEXT)
    file_id = body["file_id"]
    assert isinstance(file_id, str) and len(file_id) == 32
    assert body["url"] == f"/api/v1/file/{file_id}"
    assert body["upload_id"]
    info = await wait_done(client, file_id)
    assert info["status"] == "committed"
    assert info["folder"] == "/docs/"
    assert info["declared_type"] == "text/plain"
    assert info["sha256"] == hashlib.sha256(TEXT).hexdigest()
    content = await client.get(f"/api/v1/file/{file_id}/content")
    assert await content.read() == TEXT


async def test_a_chunked_raw_body_takes_its_type_from_content_type(
    make_client: MakeClient,
) -> None:
    client = await api_client(make_client)
    data = random.Random(5).randbytes(300_000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    resp = await client.post(
        "/upload",
        params={"filename": "blob.bin"},
        data=chunks(),
        headers={"Content-Type": "application/x-custom"},
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert "Content-Length" not in resp.request_info.headers
    assert body["mimetype"] == "application/x-custom"
    assert body["size"] == len(data)
    info = await wait_done(client, body["file_id"])
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


async def test_raw_body_errors(make_client: MakeClient) -> None:
    client = await api_client(make_client, max_size=1000)
    # No file name: neither a form nor a named body.
    await api_error(await client.post("/api/v1/upload", data=b"abc"), 400)
    await api_error(
        await client.post("/api/v1/upload", params={"filename": "a", "nope": "1"}, data=b"a"),
        400,
    )
    await api_error(
        await client.post(
            "/api/v1/upload", params={"filename": "a", "mimetype": "not a type"}, data=b"a"
        ),
        400,
    )
    # Over max_size, refused from Content-Length before a byte is stored.
    body = await api_error(
        await client.post("/api/v1/upload", params={"filename": "big"}, data=b"x" * 5000), 413
    )
    assert body["error"] == "too_large"
