"""GET /file/{id}/content: byte ranges, 416, conditional requests, and a 100 MiB download."""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import pytest

from tests.app_fixtures import OCTET, TUS, MakeClient
from tests.pipeline.test_local_pipeline import upload, wait_file
from tests.protocol.test_core import create

from .helpers import Client, api_client, api_error

SIZE = 10_000
DATA = random.Random(5).randbytes(SIZE)


@pytest.fixture
async def stored(make_client: MakeClient) -> tuple[Client, dict[str, Any]]:
    client = await api_client(make_client)
    info = await wait_file(client, await upload(client, DATA, filename="data.bin"))
    assert info["status"] == "committed"
    return client, info


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),  # first byte
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1),  # last byte
        ("bytes=-1", SIZE - 1, SIZE - 1),  # suffix: last byte
        ("bytes=-500", SIZE - 500, SIZE - 1),  # suffix
        (f"bytes=-{SIZE + 100}", 0, SIZE - 1),  # suffix longer than the file
        ("bytes=100-", 100, SIZE - 1),  # open-ended
        (f"bytes={SIZE - 1}-", SIZE - 1, SIZE - 1),
        ("bytes=0-", 0, SIZE - 1),
        ("bytes=1000-1999", 1000, 1999),
        (f"bytes=9000-{SIZE * 5}", 9000, SIZE - 1),  # end clamped to the size
    ],
)
async def test_single_ranges_are_206(
    stored: tuple[Client, dict[str, Any]], header: str, start: int, end: int
) -> None:
    client, info = stored
    for url in (info["content_url"], f"/api/v1/file/{info['id']}/content"):
        resp = await client.get(url, headers={"Range": header})
        assert resp.status == 206, header
        assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
        assert int(resp.headers["Content-Length"]) == end - start + 1
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"] == f'"{info["sha256"]}"'
        assert await resp.read() == DATA[start : end + 1]


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-6", "bytes=0-0, -1", "bytes=5-2", "items=0-5", "bytes=abc", "bytes=-", "bytes"],
)
async def test_multiple_and_unusable_ranges_get_the_whole_file(
    stored: tuple[Client, dict[str, Any]], header: str
) -> None:
    client, info = stored
    resp = await client.get(info["content_url"], headers={"Range": header})
    assert resp.status == 200, header
    assert "Content-Range" not in resp.headers
    assert int(resp.headers["Content-Length"]) == SIZE
    assert await resp.read() == DATA


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
async def test_unsatisfiable_ranges_are_416(
    stored: tuple[Client, dict[str, Any]], header: str
) -> None:
    client, info = stored
    resp = await client.get(info["content_url"], headers={"Range": header})
    assert resp.headers.get("Content-Range") == f"bytes */{SIZE}"
    await api_error(resp, 416)


async def test_empty_file_ranges(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    info = await wait_file(client, await upload(client, b"", filename="empty"))
    resp = await client.get(info["content_url"], headers={"Range": "bytes=0-0"})
    assert resp.headers.get("Content-Range") == "bytes */0"
    await api_error(resp, 416)
    resp = await client.get(info["content_url"])
    assert resp.status == 200
    assert await resp.read() == b""


async def test_if_none_match(stored: tuple[Client, dict[str, Any]]) -> None:
    client, info = stored
    url = info["content_url"]
    etag = (await client.get(url)).headers["ETag"]
    assert etag == f'"{info["sha256"]}"'
    for inm in [etag, "*", f'"other", {etag}', f'W/"{info["sha256"]}"']:
        resp = await client.get(url, headers={"If-None-Match": inm})
        assert resp.status == 304, inm
        assert resp.headers["ETag"] == etag
        assert await resp.read() == b""
        # With a Range too: still not modified.
        resp = await client.get(url, headers={"If-None-Match": inm, "Range": "bytes=0-9"})
        assert resp.status == 304, inm
    for inm in ['"other"', f'"{info["sha256"][:-1]}"', ""]:
        resp = await client.get(url, headers={"If-None-Match": inm})
        assert resp.status == 200, inm
        assert await resp.read() == DATA


async def test_if_none_match_on_the_metadata(stored: tuple[Client, dict[str, Any]]) -> None:
    client, info = stored
    url = f"/api/v1/file/{info['id']}"
    etag = (await client.get(url)).headers["ETag"]
    assert etag.startswith('W/"')
    for inm in [etag, "*", f'"other", {etag}', etag[2:]]:  # weak comparison: W/ or not
        resp = await client.get(url, headers={"If-None-Match": inm})
        assert resp.status == 304, inm
    # Every change gives a new validator: a rename, and a change of tags alone.
    for change in ({"name": "renamed.bin"}, {"tags": ["new-tag"]}):
        assert (await client.patch(url, json=change)).status == 200
        resp = await client.get(url, headers={"If-None-Match": etag})
        assert resp.status == 200, change
        assert resp.headers["ETag"] != etag
        etag = resp.headers["ETag"]


BIG_CHUNK = 16 * 1024 * 1024
BIG_SIZE = 100 * 1024 * 1024


def big_chunk(i: int) -> bytes:
    n = min(BIG_CHUNK, BIG_SIZE - i * BIG_CHUNK)
    return random.Random(1000 + i).randbytes(n)


async def test_100_mib_download_streams(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    path = await create(client, BIG_SIZE, **{"Upload-Metadata": "filename YmlnLmJpbg=="})
    want = hashlib.sha256()
    offset = 0
    for i in range((BIG_SIZE + BIG_CHUNK - 1) // BIG_CHUNK):
        chunk = big_chunk(i)
        want.update(chunk)
        resp = await client.patch(
            path, data=io.BytesIO(chunk), headers={**TUS, **OCTET, "Upload-Offset": str(offset)}
        )
        assert resp.status == 204, await resp.text()
        offset += len(chunk)
        del chunk
    info = await wait_file(client, path, timeout=90)
    assert info["status"] == "committed"
    assert info["size"] == BIG_SIZE
    assert info["sha256"] == want.hexdigest()

    # Streamed in pieces on this side too: never the whole body in memory.
    resp = await client.get(info["content_url"])
    assert resp.status == 200
    assert int(resp.headers["Content-Length"]) == BIG_SIZE
    got = hashlib.sha256()
    received = biggest = 0
    async for piece in resp.content.iter_chunked(256 * 1024):
        got.update(piece)
        received += len(piece)
        biggest = max(biggest, len(piece))
    assert received == BIG_SIZE
    assert biggest <= 256 * 1024
    assert got.hexdigest() == want.hexdigest()

    # A range in the middle, across a chunk boundary.
    start = 3 * BIG_CHUNK - 1000
    end = start + 5 * 1024 * 1024 - 1
    resp = await client.get(info["content_url"], headers={"Range": f"bytes={start}-{end}"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{BIG_SIZE}"
    expected = big_chunk(2)[-1000:] + big_chunk(3)[: end - 3 * BIG_CHUNK + 1]
    part = hashlib.sha256()
    async for piece in resp.content.iter_chunked(256 * 1024):
        part.update(piece)
    assert part.hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_last_modified_and_if_modified_since(make_client: Any) -> None:
    """RFC 9110: Last-Modified on content and metadata; If-Modified-Since gives 304 when
    nothing changed, and is ignored when If-None-Match is present or the date is invalid."""
    from tests.pipeline.test_local_pipeline import upload, wait_file

    client = await make_client()
    info = await wait_file(client, await upload(client, b"z" * 100, filename="lm.bin"))
    for url in (info["content_url"], f"/file/{info['id']}"):
        first = await client.get(url)
        last_modified = first.headers["Last-Modified"]
        assert last_modified.endswith(" GMT")
        same = await client.get(url, headers={"If-Modified-Since": last_modified})
        assert same.status == 304
        assert same.headers["ETag"] == first.headers["ETag"]
        old = await client.get(url, headers={"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"})
        assert old.status == 200
        bad = await client.get(url, headers={"If-Modified-Since": "yesterday"})
        assert bad.status == 200
        inm_wins = await client.get(
            url, headers={"If-Modified-Since": last_modified, "If-None-Match": '"other"'}
        )
        assert inm_wins.status == 200
