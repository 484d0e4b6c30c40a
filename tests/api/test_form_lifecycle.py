"""POST /upload goes through the same lifecycle as tus and the IETF draft: it is counted,
audited, pays the patch_bytes budget and is stopped (what arrived kept) at shutdown."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import FormData

from tests.app_fixtures import TUS, MakeClient
from tests.auth.helpers import auth_client, bearer, make_users
from tests.ops.helpers import samples

from .helpers import Client, runtime

BOUNDARY = "lifecycle-boundary-7f3a"


def _form(name: str, data: bytes) -> FormData:
    fd = FormData(quote_fields=False)
    fd.add_field("file", io.BytesIO(data), filename=name, content_type="application/octet-stream")
    return fd


async def _created(client: Client) -> float:
    resp = await client.get("/metrics")
    assert resp.status == 200
    s = samples(await resp.text())
    return s.get(("tusserver_uploads_total", (("event", "created"),)), 0.0)


async def test_form_uploads_are_counted_and_audited(make_client: MakeClient) -> None:
    client = await auth_client(make_client, rate_limit_creations=0, rate_limit_api=0)
    owner = (await make_users(client, owner="user"))["owner"]
    before = await _created(client)
    resp = await client.post(
        "/api/v1/upload",
        data=_form("a.bin", b"a" * 5000),
        headers=bearer(owner.access),
    )
    body = await resp.json()
    assert resp.status == 201, body
    upload_id = body["files"][0]["upload_id"]
    assert await _created(client) == before + 1
    audit = runtime(client).gateway.audit_log
    await audit.flush()
    entries = await audit.recent(1000)
    created = [e for e in entries if e["action"] == "upload.create" and e["target"] == upload_id]
    assert len(created) == 1 and created[0]["actor"] == owner.id, created


async def test_form_uploads_pay_the_patch_bytes_budget(make_client: MakeClient) -> None:
    """A form's file has no length of its own: its bytes are charged once in (into debt),
    and the next body waits, whatever entry path it takes."""
    client = await auth_client(
        make_client, rate_limit_patch_bytes=1000, rate_limit_creations=0, rate_limit_api=0
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    resp = await client.post(
        "/api/v1/upload", data=_form("big.bin", b"b" * 100_000), headers=bearer(owner)
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert body["files"][0]["size"] == 100_000
    resp = await client.post(
        "/api/v1/upload", data=_form("next.bin", b"c" * 10), headers=bearer(owner)
    )
    body = await resp.json()
    assert resp.status == 400, body
    assert body["files"][0]["status_code"] == 429, body
    assert body["files"][0]["error"] == "rate_limited", body


async def test_shutdown_stops_a_form_upload_and_keeps_its_bytes(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_creations=0, rate_limit_api=0)
    sent = 0
    enough = asyncio.Event()
    finish = asyncio.Event()

    async def slow_form() -> AsyncIterator[bytes]:
        nonlocal sent
        yield (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="slow.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(400):
            yield b"s" * 4096
            sent += 4096
            if sent >= 64 * 1024:
                enough.set()
            if finish.is_set():
                break
            await asyncio.sleep(0.01)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    post = asyncio.ensure_future(
        client.post(
            "/api/v1/upload",
            data=slow_form(),
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    )
    await asyncio.wait_for(enough.wait(), 30)
    await asyncio.sleep(0.3)  # let the server store some of it
    runtime(client).uploads.release_all()  # what on_shutdown does
    resp = await asyncio.wait_for(post, 30)
    finish.set()
    body: dict[str, Any] = await resp.json()
    assert resp.status == 400, body
    entry = body["files"][0]
    assert entry["status_code"] == 503, entry
    # What arrived is stored: the upload's offset says how much.
    head = await client.head(f"/uploads/{entry['upload_id']}", headers=TUS)
    assert head.status == 200
    stored = int(head.headers["Upload-Offset"])
    assert 0 < stored <= sent


async def test_a_file_refused_by_a_rate_limit_ends_the_form(make_client: MakeClient) -> None:
    """A 429 ends the form at that file: the files after it are not read (they would be
    refused the same way, and reading them would hold the body for nothing); the answer
    carries the refusal's Retry-After."""
    client = await auth_client(
        make_client, rate_limit_creations=0.001, rate_limit_creations_burst=1, rate_limit_api=0
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    resp = await client.post("/api/v1/upload", data=_form("a.bin", b"a"), headers=bearer(owner))
    assert resp.status == 201, await resp.text()  # the burst
    rest_sent = asyncio.Event()
    go_on = asyncio.Event()

    def part(name: str, data: bytes) -> bytes:
        return (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data

    async def form() -> AsyncIterator[bytes]:
        yield part("b.bin", b"b" * 1000) + b"\r\n"
        await go_on.wait()  # the next file only once told: never, before the answer
        yield part("c.bin", b"c" * 1000) + f"\r\n--{BOUNDARY}--\r\n".encode()
        rest_sent.set()

    resp = await asyncio.wait_for(
        client.post(
            "/api/v1/upload",
            data=form(),
            headers={
                **bearer(owner),
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            },
        ),
        10,
    )
    body = await resp.json()
    assert resp.status == 400, body
    (entry,) = body["files"]
    assert (entry["filename"], entry["status_code"]) == ("b.bin", 429), entry
    assert int(resp.headers["Retry-After"]) >= 1
    assert not rest_sent.is_set()
    go_on.set()
