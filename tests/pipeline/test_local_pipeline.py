"""A finished upload becomes a committed file: local chunk store into the local object store."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import struct
import zlib
from typing import Any

from aiohttp.test_utils import TestClient

from tests.app_fixtures import OCTET, TUS, MakeClient, get_committed
from tests.pipeline.helpers import runtime
from tests.protocol.test_core import create, head, patch
from tusserver.catalog.files import FileStatus
from tusserver.pipeline.keys import object_key

Client = TestClient[Any, Any]


def png_bytes(extra: int = 0) -> bytes:
    """A real, minimal 1x1 PNG (libmagic needs the IHDR chunk), padded after IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\x00\xff\x00\x00")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    return png + b"\x00" * extra


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


async def upload(client: Client, data: bytes, **metadata: str) -> str:
    path = await create(client, len(data), **{"Upload-Metadata": meta(**metadata)})
    if data:
        r = await patch(client, path, 0, data)
        assert r.status == 204, await r.text()
    return path


async def wait_file(client: Client, path: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        h = await head(client, path)
        file_id = h.headers.get("X-File-Id")
        if file_id:
            info = await (await client.get(f"/file/{file_id}")).json()
            if info["status"] not in ("received", "validating"):
                return dict(info)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"file of {path} not done: {h.headers}")
        await asyncio.sleep(0.05)


async def test_finished_upload_is_committed_with_sha256_and_detected_type(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    data = png_bytes(extra=3000)
    path = await upload(client, data, filename="photo.png", filetype="image/png")
    info = await wait_file(client, path)
    assert info["status"] == "committed"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["detected_type"] == "image/png"
    assert info["category"] == "image"
    assert info["type_mismatch"] is False
    assert info["name"] == "photo.png"
    body = await (await client.get(info["content_url"])).read()
    assert body == data
    # The tus URL still serves the bytes, now from the object store.
    assert await (await get_committed(client, path)).read() == data
    v1 = await client.get(f"/api/v1/file/{info['id']}")
    assert v1.status == 200


async def test_detected_type_wins_over_the_declared_one(make_client: MakeClient) -> None:
    client = await make_client()
    path = await upload(client, png_bytes(1000), filename="clip.mp4", filetype="video/mp4")
    info = await wait_file(client, path)
    assert info["detected_type"] == "image/png"
    assert info["declared_type"] == "video/mp4"
    assert info["type_mismatch"] is True
    assert info["category"] == "image"


async def test_forbidden_type_is_refused_at_the_first_patch(make_client: MakeClient) -> None:
    client = await make_client(allowed_categories=("video", "audio"))
    data = png_bytes(extra=5000)
    path = await create(client, len(data) * 2)
    r = await patch(client, path, 0, data)
    assert r.status == 415
    assert "image/png" in await r.text()
    # Nothing more is accepted.
    assert (await patch(client, path, 0, data)).status == 410
    assert (await head(client, path)).status == 410


async def test_forbidden_type_found_at_the_end_is_rejected_and_never_served(
    make_client: MakeClient,
) -> None:
    client = await make_client(allowed_categories=("video",), early_type_check=False)
    path = await upload(client, png_bytes(100), filename="x.png")
    info = await wait_file(client, path)
    assert info["status"] == "rejected"
    assert "image/png" in info["reason"]
    assert (await client.get(info["content_url"])).status == 404
    assert (await get_committed(client, path)).status == 403


async def test_size_policy_per_category(make_client: MakeClient) -> None:
    client = await make_client(max_size_image=2000)
    small = await wait_file(client, await upload(client, png_bytes(1000)))
    assert small["status"] == "committed"
    big = await wait_file(client, await upload(client, png_bytes(3000)))
    assert big["status"] == "rejected"
    assert "at most 2000 bytes" in big["reason"]


async def test_whole_file_checksum_from_metadata(make_client: MakeClient) -> None:
    client = await make_client()
    data = b"some document text\n" * 100
    good = hashlib.sha256(data).hexdigest()
    ok = await wait_file(client, await upload(client, data, sha256=good))
    assert ok["status"] == "committed"
    bad = await wait_file(client, await upload(client, data, sha256="0" * 64))
    assert bad["status"] == "rejected"
    assert "checksum" in bad["reason"]


async def test_zero_byte_file_is_committed(make_client: MakeClient) -> None:
    client = await make_client()
    info = await wait_file(client, await upload(client, b"", filename="empty.txt"))
    assert info["status"] == "committed"
    assert info["size"] == 0
    assert info["sha256"] == hashlib.sha256(b"").hexdigest()
    r = await client.get(info["content_url"])
    assert r.status == 200
    assert await r.read() == b""


async def test_concatenated_upload_becomes_one_file(make_client: MakeClient) -> None:
    client = await make_client()
    a = await create(client, 5, **{"Upload-Concat": "partial"})
    b = await create(client, 6, **{"Upload-Concat": "partial"})
    await patch(client, a, 0, b"hello")
    await patch(client, b, 0, b" world")
    r = await client.post(
        "/uploads/",
        headers={**TUS, "Upload-Concat": f"final;{a} {b}", "Upload-Metadata": meta(filename="hw")},
    )
    final = r.headers["Location"][r.headers["Location"].index("/uploads/") :]
    info = await wait_file(client, final)
    assert info["status"] == "committed"
    assert info["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    # Partials do not become files.
    assert "X-File-Id" not in (await head(client, a)).headers


async def test_files_api_bad_ids_are_404_json(make_client: MakeClient) -> None:
    client = await make_client()
    for fid in ["nope", "0" * 32, "../../etc/passwd", "A" * 32]:
        r = await client.get(f"/file/{fid}")
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"


async def test_content_etag_and_304(make_client: MakeClient) -> None:
    client = await make_client()
    info = await wait_file(client, await upload(client, b"x" * 1000, filename="a.bin"))
    r = await client.get(info["content_url"])
    etag = r.headers["ETag"]
    assert etag == f'"{info["sha256"]}"'
    r2 = await client.get(info["content_url"], headers={"If-None-Match": etag})
    assert r2.status == 304
    r3 = await client.get(info["content_url"], headers={"Range": "bytes=10-19"})
    assert r3.status == 206
    assert await r3.read() == b"x" * 10


__all__ = ["OCTET", "png_bytes", "upload", "wait_file"]


async def test_head_tells_the_file_and_its_current_status(make_client: MakeClient) -> None:
    """HEAD of a finished upload names the file it became and that file's status as it is
    now (read with the upload, never from a cache)."""
    client = await make_client()
    data = png_bytes(extra=100)
    path = await upload(client, data, filename="photo.png")
    info = await wait_file(client, path)
    h = await head(client, path)
    assert h.headers["X-File-Id"] == info["id"]
    assert h.headers["X-File-Status"] == "committed"
    await runtime(client).files.update(info["id"], status=FileStatus.FAILED)
    h = await head(client, path)
    assert h.headers["X-File-Id"] == info["id"]
    assert h.headers["X-File-Status"] == "failed"


async def test_a_long_non_ascii_name_commits_and_keeps_its_name(make_client: MakeClient) -> None:
    """82 CJK characters are 244 bytes: with the file id before them, one more than a file
    name on disk can have. The name in the object key is cut to fit (by bytes, its extension
    kept); the file keeps its whole name."""
    client = await make_client()
    name = "写真" * 40 + ".txt"
    data = b"plain words, no thumbnails\n" * 10
    info = await wait_file(client, await upload(client, data, filename=name))
    assert info["status"] == "committed", info
    assert info["name"] == name
    assert await (await client.get(info["content_url"])).read() == data
    key = object_key(
        "{owner}/{yyyy}/{mm}/{dd}/{file_id}-{name}",
        owner=None, file_id="f" * 32, name=name, category="document",
        when=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    last = key.rsplit("/", 1)[1]
    assert last.endswith(".txt") and len(last.encode()) <= 200, last
    assert last.removeprefix("f" * 32 + "-").removesuffix(".txt") in name


async def test_metadata_with_nul_bytes_still_makes_a_file(client: Client) -> None:
    """A NUL in a metadata value (a file name): no PostgreSQL text takes it, so the file row
    could never be written and the upload never finished. It is shown as U+FFFD."""
    raw = "filename " + base64.b64encode(b"a\x00b.txt").decode()
    raw += ",note " + base64.b64encode(b"x\x00y").decode()
    path = await create(client, 3, **{"Upload-Metadata": raw})
    r = await patch(client, path, 0, b"abc")
    assert r.status == 204, await r.text()
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["name"] == "a\ufffdb.txt"
    assert info["metadata"]["note"] == "x\ufffdy"
