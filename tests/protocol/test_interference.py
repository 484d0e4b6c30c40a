"""Hostile or broken clients cannot disturb uploads (#16 items 10, 11, 12), through HTTP.

- another user's HEAD/PATCH/DELETE on an upload answers 404 without making its PATCH let go;
- a body with a Content-Encoding is refused (415) on every upload route, so compressed bytes
  never slip past a byte limit;
- a body that stalls ends its request after ``body_idle_timeout`` (408), what arrived kept.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import FormData

from tests.app_fixtures import OCTET, TUS, MakeClient
from tests.auth.helpers import auth_client, bearer, create_upload, make_users
from tusserver.app import RUNTIME

DRAFT = {"Upload-Draft-Interop-Version": "8"}


async def _head_offset(client: Any, path: str, token: str | None = None) -> int:
    resp = await client.head(path, headers={**TUS, **bearer(token)})
    assert resp.status == 200, resp.status
    return int(resp.headers["Upload-Offset"])


async def _until_received(client: Any, count: int) -> None:
    """Wait until the server has read ``count`` bytes of a body (it then holds the lock)."""
    service = client.server.app[RUNTIME].uploads
    deadline = asyncio.get_running_loop().time() + 20
    while not any(r.received >= count for r in service._receiving):
        assert asyncio.get_running_loop().time() < deadline, "the body never arrived"
        await asyncio.sleep(0.02)


async def test_another_user_cannot_make_a_patch_let_go(make_client: MakeClient) -> None:
    client = await auth_client(make_client, lock_timeout=3.0)
    users = await make_users(client, a="user", b="user")
    a, b = users["a"].access, users["b"].access
    path = await create_upload(client, a, 200_000)
    first_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 100_000
        first_sent.set()
        await go_on.wait()
        yield b"a" * 100_000

    patch = asyncio.ensure_future(
        client.patch(path, data=body(), headers={**TUS, **OCTET, **bearer(a), "Upload-Offset": "0"})
    )
    await asyncio.wait_for(first_sent.wait(), 10)
    await _until_received(client, 100_000)  # the PATCH holds the upload's lock, reading
    assert not patch.done()
    # B: every method on A's upload is a 404, and none of them makes A's PATCH let go.
    resp = await client.head(path, headers={**TUS, **bearer(b)})
    assert resp.status == 404
    resp = await client.patch(
        path, data=b"x", headers={**TUS, **OCTET, **bearer(b), "Upload-Offset": "0"}
    )
    assert resp.status == 404, await resp.text()
    resp = await client.delete(path, headers={**TUS, **bearer(b)})
    assert resp.status == 404
    resp = await client.head(path, headers={**DRAFT, **bearer(b)})
    assert resp.status == 404
    await asyncio.sleep(0.2)
    assert not patch.done()
    go_on.set()
    resp = await asyncio.wait_for(patch, 20)
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == "200000"
    assert await _head_offset(client, path, a) == 200_000


async def test_the_owner_can_still_make_a_stale_patch_let_go(make_client: MakeClient) -> None:
    client = await auth_client(make_client, lock_timeout=3.0)
    a = (await make_users(client, a="user"))["a"].access
    path = await create_upload(client, a, 200_000)
    first_sent = asyncio.Event()
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 50_000
        first_sent.set()
        await never.wait()
        yield b"a"

    patch = asyncio.ensure_future(
        client.patch(path, data=body(), headers={**TUS, **OCTET, **bearer(a), "Upload-Offset": "0"})
    )
    await asyncio.wait_for(first_sent.wait(), 10)
    await _until_received(client, 50_000)
    assert await _head_offset(client, path, a) == 50_000
    resp = await asyncio.wait_for(patch, 10)
    assert resp.status == 400
    assert resp.headers["Upload-Offset"] == "50000"
    never.set()


async def test_refused_compressed_bodies_are_never_inflated(make_client: MakeClient) -> None:
    """aiohttp discards a refused body after the answer: were it inflated on the way, a small
    gzip body of zeros would cost seconds of CPU on any route, and a body that is not gzip
    at all would end the connection under the client's next request."""
    client = await make_client(rate_limit_creations=0, rate_limit_api=0)
    runner_handler = client.server.runner.server
    assert runner_handler is not None and runner_handler._kwargs["auto_decompress"] is False
    gz = {"Content-Encoding": "gzip"}
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "100000"})
    path = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    for _ in range(3):  # each request on the connection the last one used
        resp = await client.patch(
            path,
            data=b"not gzip at all" * 5000,
            headers={**TUS, **OCTET, **gz, "Upload-Offset": "0"},
        )
        assert resp.status == 415, await resp.text()
        await resp.read()
        resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "3"})
        assert resp.status == 201
    assert await _head_offset(client, path) == 0


async def test_compressed_bodies_are_refused_on_upload_routes(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_creations=0, rate_limit_api=0)
    inflated = b"\0" * (1024 * 1024)
    packed = gzip.compress(inflated)
    gz = {"Content-Encoding": "gzip"}

    # tus PATCH
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": str(len(inflated))})
    assert resp.status == 201
    path = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    resp = await client.patch(
        path, data=packed, headers={**TUS, **OCTET, **gz, "Upload-Offset": "0"}
    )
    assert resp.status == 415, await resp.text()
    assert "Content-Encoding" in await resp.text()
    assert await _head_offset(client, path) == 0
    # identity is what every body is anyway
    resp = await client.patch(
        path,
        data=b"abc",
        headers={**TUS, **OCTET, "Content-Encoding": "identity", "Upload-Offset": "0"},
    )
    assert resp.status == 204, await resp.text()

    # tus creation with upload
    resp = await client.post(
        "/uploads/",
        data=packed,
        headers={**TUS, **OCTET, **gz, "Upload-Length": str(len(inflated))},
    )
    assert resp.status == 415, await resp.text()

    # IETF draft: creation with content, as a problem document
    resp = await client.post(
        "/uploads/", data=packed, headers={**DRAFT, **gz, "Upload-Complete": "?1"}
    )
    assert resp.status == 415, await resp.text()
    assert resp.content_type == "application/problem+json"
    problem = json.loads(await resp.text())
    assert problem["status"] == 415 and "Content-Encoding" in problem["detail"]

    # POST /upload: a raw body and a form
    resp = await client.post(
        "/api/v1/upload", params={"filename": "z.bin"}, data=packed, headers=gz
    )
    assert resp.status == 415, await resp.text()
    assert (await resp.json())["error"] == "unsupported_content_encoding"
    fd = FormData()
    fd.add_field("file", io.BytesIO(b"plain"), filename="f.bin")
    resp = await client.post("/api/v1/upload", data=fd, headers=gz)
    assert resp.status == 415, await resp.text()


async def test_a_stalled_body_ends_its_request_and_keeps_its_bytes(
    make_client: MakeClient,
) -> None:
    client = await make_client(body_idle_timeout=1, lock_timeout=3.0)
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "100"})
    assert resp.status == 201
    path = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    stalled = asyncio.Event()
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        stalled.set()
        await done.wait()  # sends nothing more until the test ends

    loop = asyncio.get_running_loop()
    started = loop.time()
    patch = asyncio.ensure_future(
        client.patch(path, data=body(), headers={**TUS, **OCTET, "Upload-Offset": "0"})
    )
    try:
        resp = await asyncio.wait_for(patch, 30)
        assert resp.status == 408, await resp.text()
        assert resp.headers["Upload-Offset"] == "3"
        assert loop.time() - started < 20
    finally:
        done.set()
    # What arrived is stored, and the upload goes on from there.
    assert await _head_offset(client, path) == 3
    resp = await client.patch(path, data=b"d" * 97, headers={**TUS, **OCTET, "Upload-Offset": "3"})
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == "100"


async def test_a_compressed_json_body_is_a_415(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_creations=0, rate_limit_api=0)
    resp = await client.post(
        "/api/v1/folders",
        data=gzip.compress(json.dumps({"path": "/a/"}).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 415, await resp.text()
    assert (await resp.json())["error"] == "unsupported_content_encoding"
