"""POST /upload: plain multipart/form-data uploads, several files at once, same pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from typing import Any

from aiohttp import FormData

from tests.app_fixtures import MakeClient
from tests.auth.helpers import bearer, make_users
from tests.pipeline.test_local_pipeline import png_bytes

from .helpers import Client, api_client, api_error, jwt_client, token

TEXT = b"plain text and nothing else in here\n" * 60  # > 512 bytes: sniffed at the first bytes
SMALL_TEXT = b"tiny text file\n"  # < 512 bytes: only the pipeline sees its type


def form(*files: tuple[str, bytes, str], folder: str | None = None) -> FormData:
    # Names as browsers send them (raw UTF-8), not percent-encoded as aiohttp does by default.
    fd = FormData(quote_fields=False)
    if folder is not None:
        fd.add_field("folder", folder)
    for name, data, ctype in files:
        fd.add_field("file", io.BytesIO(data), filename=name, content_type=ctype)
    return fd


async def wait_done(client: Client, file_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(f"/api/v1/file/{file_id}")
        assert resp.status == 200, await resp.text()
        info: dict[str, Any] = await resp.json()
        if info["status"] not in ("received", "validating"):
            return info
        assert asyncio.get_running_loop().time() < deadline, info
        await asyncio.sleep(0.05)


async def post_form(client: Client, fd: FormData, status: int = 201, **kw: Any) -> list[Any]:
    resp = await client.post("/api/v1/upload", data=fd, **kw)
    body = await resp.json()
    assert resp.status == status, body
    entries: list[Any] = body["files"]
    return entries


async def test_three_files_in_one_request_are_committed(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("form")
    blob = random.Random(7).randbytes(70_000)
    files = [
        (f"{mark} photo.png", png_bytes(4000), "image/png"),
        (f"{mark} notes.txt", TEXT, "text/plain"),
        (f"{mark} Ünï 🎉.bin", blob, "application/octet-stream"),
    ]
    entries = await post_form(client, form(*files))
    assert len(entries) == 3
    ids = []
    for entry, (name, data, _) in zip(entries, files, strict=True):
        assert "error" not in entry, entry
        assert entry["filename"] == name
        assert entry["size"] == len(data)
        assert entry["file_id"] and entry["upload_id"]
        assert entry["url"] == f"/api/v1/file/{entry['file_id']}"
        info = await wait_done(client, entry["file_id"])
        assert info["status"] == "committed", info
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["size"] == len(data)
        assert info["name"] == name
        assert info["folder"] == "/"
        content = await client.get(f"/api/v1/file/{entry['file_id']}/content")
        assert await content.read() == data
        ids.append(entry["file_id"])
    assert len(set(ids)) == 3
    types = {(await wait_done(client, i))["detected_type"] for i in ids}
    assert {"image/png", "text/plain"} <= types
    # The seed path answers too, with its own URLs.
    resp = await client.post("/upload", data=form((f"{mark}.txt", b"x" * 10, "text/plain")))
    assert resp.status == 201
    (entry,) = (await resp.json())["files"]
    assert entry["url"] == f"/file/{entry['file_id']}"
    assert set(await _search(client, q=mark)) == {*ids, entry["file_id"]}


async def _search(client: Client, **params: Any) -> list[str]:
    resp = await client.get("/api/v1/files", params={"limit": 200, **params})
    return [i["id"] for i in (await resp.json())["files"]]


async def test_policy_violations_are_reported_per_file(make_client: MakeClient) -> None:
    client = await api_client(make_client, allowed_categories=("image",))
    good1, good2 = png_bytes(100), png_bytes(3000)
    entries = await post_form(
        client,
        form(
            ("a.png", good1, "image/png"),
            ("b.txt", TEXT, "text/plain"),  # refused early (415) or rejected later
            ("c.txt", SMALL_TEXT, "image/png"),  # too small to sniff early: rejected later
            ("d.png", good2, "image/png"),
        ),
    )
    assert [e["filename"] for e in entries] == ["a.png", "b.txt", "c.txt", "d.png"]
    for entry, data in ((entries[0], good1), (entries[3], good2)):
        info = await wait_done(client, entry["file_id"])
        assert info["status"] == "committed"
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
    for entry in entries[1:3]:
        if "error" in entry:
            assert entry["status_code"] == 415, entry
            assert "text/" in entry["message"]
            assert not entry.get("file_id")
        else:
            info = await wait_done(client, entry["file_id"])
            assert info["status"] == "rejected", info
            assert "text/" in info["reason"]
            assert (await client.get(f"/api/v1/file/{entry['file_id']}/content")).status == 404
    assert "error" not in entries[2]  # the pipeline, not the first bytes, caught this one

    # When every file fails, the request fails.
    entries = await post_form(client, form(("only.txt", TEXT, "text/plain")), status=400)
    assert entries[0]["status_code"] == 415


async def test_folder_field_puts_the_files_in_that_folder(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("dir")
    entries = await post_form(
        client,
        form(("1.png", png_bytes(10), "image/png"), ("2.png", png_bytes(20), "image/png"),
             folder=f"{mark}//2024/trip"),
    )  # fmt: skip
    folder = f"/{mark}/2024/trip/"
    for entry in entries:
        info = await wait_done(client, entry["file_id"])
        assert info["status"] == "committed"
        assert info["folder"] == folder
    assert set(await _search(client, folder=folder)) == {e["file_id"] for e in entries}
    listed = (await (await client.get("/api/v1/folders")).json())["folders"]
    assert {f"/{mark}/", f"/{mark}/2024/", folder} <= set(listed)
    # A bad folder is a clean 400.
    resp = await client.post(
        "/api/v1/upload", data=form(("x.png", png_bytes(), "image/png"), folder="/a/../b")
    )
    await api_error(resp, 400)


async def test_not_multipart_is_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    await api_error(await client.post("/api/v1/upload", json={"file": "x"}), 400)
    await api_error(
        await client.post("/api/v1/upload", data=b"raw", headers={"Content-Type": "text/plain"}),
        400,
    )
    await api_error(await client.post("/api/v1/upload"), 400)
    fd = FormData()  # fields, but no file among them
    fd.add_field("note", "no files here")
    fd.add_field("folder", "/docs/")
    fd.add_field("other", "text/plain", content_type="text/plain")
    await api_error(await client.post("/api/v1/upload", data=fd), 400)


async def test_a_20_mib_file_streams_through(make_client: MakeClient) -> None:
    client = await api_client(make_client, write_buffer_size=256 * 1024)
    data = random.Random(20).randbytes(20 * 1024 * 1024)
    entries = await post_form(
        client,
        form(("big.bin", data, "application/octet-stream"), ("small.txt", TEXT, "text/plain")),
    )
    assert entries[0]["size"] == len(data)
    info = await wait_done(client, entries[0]["file_id"], timeout=60)
    assert info["status"] == "committed"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert (await wait_done(client, entries[1]["file_id"]))["status"] == "committed"


async def test_form_uploads_belong_to_the_caller(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    users = await make_users(client, alice="user", bob="user")
    alice, bob = users["alice"], users["bob"]
    resp = await client.post("/api/v1/upload", data=form(("a.png", png_bytes(), "image/png")))
    await api_error(resp, 401)
    entries = await post_form(
        client, form(("a.png", png_bytes(), "image/png")), headers=bearer(alice.access)
    )
    fid = entries[0]["file_id"]
    resp = await client.get(f"/api/v1/file/{fid}", headers=bearer(alice.access))
    assert (await resp.json())["owner"] == alice.id
    assert (await client.get(f"/api/v1/file/{fid}", headers=bearer(bob.access))).status == 404
