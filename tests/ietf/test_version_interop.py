"""One upload, many interop versions: begun in one, resumed in others and by tus.

Also a scripted client shaped like Apple's URLSession (iOS 17 / macOS 14 speak interop 3,
later systems 6): it starts an optimistic upload with the whole file, is cut off mid-body
after the 104 told it where the upload lives, asks for the offset and sends the rest --
with and without Content-Length (chunked), as URLSession does for streamed bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from tests.app_fixtures import OCTET, TUS, get_committed
from tests.ietf.helpers import Client, RawConnection, path_of


def draft(version: int, **headers: str) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version), **headers}


async def download(client: Client, path: str) -> bytes:
    # tus GET serves a finished upload once the pipeline has committed its file.
    resp = await get_committed(client, path)
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_created_in_3_resumed_in_every_version_finished_in_8(client: Client) -> None:
    data = os.urandom(60_000)
    resp = await client.post(
        "/uploads/", data=data[:10_000], headers=draft(3, **{"Upload-Incomplete": "?1"})
    )
    assert resp.status == 201, await resp.text()
    assert (resp.headers["Upload-Incomplete"], resp.headers["Upload-Offset"]) == ("?1", "10000")
    path = path_of(resp.headers["Location"])

    state = await client.head(path, headers=draft(4))
    assert (state.headers["Upload-Complete"], state.headers["Upload-Offset"]) == ("?0", "10000")
    # 4 and 5: no media type needed, 201 answers.
    for version, start in ((4, 10_000), (5, 20_000)):
        resp = await client.patch(
            path,
            data=data[start : start + 10_000],
            headers=draft(version, **{"Upload-Offset": str(start), "Upload-Complete": "?0"}),
        )
        assert (resp.status, resp.headers["Upload-Offset"]) == (201, str(start + 10_000))
    partial = {"Content-Type": "application/partial-upload"}
    resp = await client.patch(
        path,
        data=data[30_000:40_000],
        headers=draft(6, **partial, **{"Upload-Offset": "30000", "Upload-Complete": "?0"}),
    )
    assert resp.status == 201
    resp = await client.patch(
        path,
        data=data[40_000:50_000],
        headers=draft(7, **partial, **{"Upload-Offset": "40000", "Upload-Complete": "?0"}),
    )
    assert (resp.status, resp.headers["Upload-Complete"]) == (204, "?0")
    resp = await client.patch(
        path,
        data=data[50_000:],
        headers=draft(8, **partial, **{"Upload-Offset": "50000", "Upload-Complete": "?1"}),
    )
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")
    # Each version reads the same state in its own words; tus too.
    v3 = await client.head(path, headers=draft(3))
    assert (v3.headers["Upload-Incomplete"], v3.headers["Upload-Offset"]) == ("?0", "60000")
    assert "Upload-Complete" not in v3.headers and "Upload-Length" not in v3.headers
    v6 = await client.head(path, headers=draft(6))
    assert (v6.headers["Upload-Complete"], v6.headers["Upload-Length"]) == ("?1", "60000")
    tus = await client.head(path, headers=TUS)
    assert (tus.headers["Upload-Offset"], tus.headers["Upload-Length"]) == ("60000", "60000")
    assert await download(client, path) == data


async def test_created_in_3_finished_with_tus(client: Client) -> None:
    data = os.urandom(30_000)
    resp = await client.post(
        "/uploads/", data=data[:12_345], headers=draft(3, **{"Upload-Incomplete": "?1"})
    )
    path = path_of(resp.headers["Location"])
    tus = await client.head(path, headers=TUS)
    assert (tus.headers["Upload-Offset"], tus.headers["Upload-Defer-Length"]) == ("12345", "1")
    resp = await client.patch(
        path,
        data=data[12_345:],
        headers={**TUS, **OCTET, "Upload-Offset": "12345", "Upload-Length": "30000"},
    )
    assert resp.status == 204, await resp.text()
    v3 = await client.head(path, headers=draft(3))
    assert (v3.headers["Upload-Incomplete"], v3.headers["Upload-Offset"]) == ("?0", "30000")
    assert await download(client, path) == data


async def test_tus_upload_finished_by_a_version_3_append_without_the_field(
    client: Client,
) -> None:
    """In 3 an append without Upload-Incomplete is the last one ("the last part of the
    upload does not have the Upload-Incomplete header")."""
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Defer-Length": "1"})
    path = path_of(resp.headers["Location"])
    resp = await client.patch(path, data=b"abc", headers={**TUS, **OCTET, "Upload-Offset": "0"})
    assert resp.status == 204
    resp = await client.patch(path, data=b"def", headers=draft(3, **{"Upload-Offset": "3"}))
    assert (resp.status, resp.headers["Upload-Incomplete"]) == (201, "?0")
    assert await download(client, path) == b"abcdef"


async def test_length_from_6_binds_a_version_3_append(client: Client) -> None:
    """3 has no Upload-Length, but a length given in 6 is the upload's: content past it is
    refused in every version."""
    resp = await client.post(
        "/uploads/", data=b"ab", headers=draft(6, **{"Upload-Complete": "?0", "Upload-Length": "4"})
    )
    path = path_of(resp.headers["Location"])
    resp = await client.patch(path, data=b"cde", headers=draft(3, **{"Upload-Offset": "2"}))
    assert resp.status == 400
    assert resp.headers["Upload-Offset"] == "2"
    resp = await client.patch(path, data=b"cd", headers=draft(3, **{"Upload-Offset": "2"}))
    assert (resp.status, resp.headers["Upload-Incomplete"]) == (201, "?0")
    assert await download(client, path) == b"abcd"


# --- a client shaped like URLSession -----------------------------------------------------------


def _chunked(data: bytes, size: int) -> bytes:
    out = b""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out


async def _poll_offset(client: Client, path: str, headers: dict[str, str], least: int) -> int:
    for _ in range(100):
        resp = await client.head(path, headers=headers)
        if resp.status == 204 and int(resp.headers["Upload-Offset"]) >= least:
            return int(resp.headers["Upload-Offset"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the offset never reached {least}")


@pytest.mark.parametrize("version", [3, 6])
@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_urlsession_shaped_client_cut_off_and_resumed(
    client: Client, version: int, content_length: bool
) -> None:
    data = os.urandom(300_000)
    complete = {"Upload-Incomplete": "?0"} if version == 3 else {"Upload-Complete": "?1"}
    framing = (
        {"Content-Length": str(len(data))} if content_length else {"Transfer-Encoding": "chunked"}
    )
    conn = await RawConnection.open(client)
    try:
        # The request a URLSession upload task sends: the whole file, marked complete, with
        # the interop version; it keeps the Location of the 104.
        await conn.send_head(
            "PUT",
            "/uploads/",
            {
                **draft(version, **complete, **framing),
                "Content-Type": "image/heic",
                "User-Agent": "CFNetwork/1490.0.4 Darwin/23.2.0",
                "Accept": "*/*",
            },
        )
        interim = await conn.read_head()
        assert interim.status == 104
        assert interim.headers["Upload-Draft-Interop-Version"] == str(version)
        sent = 120_000
        body = data[:sent] if content_length else _chunked(data[:sent], 16_384)
        await conn.send(body)
        await asyncio.sleep(0.3)
    finally:
        await conn.close()  # the network drops mid-body
    path = path_of(interim.headers["Location"])

    # Resume: HEAD for the offset, then PATCH the rest from there.
    offset = await _poll_offset(client, path, draft(version), 1)
    assert offset <= sent
    state = await client.head(path, headers=draft(version))
    if version == 3:
        assert state.headers["Upload-Incomplete"] == "?1"
    else:
        assert state.headers["Upload-Complete"] == "?0"
    headers = draft(version, **complete, **{"Upload-Offset": str(offset)})
    if version >= 6:
        headers["Content-Type"] = "application/partial-upload"
    rest = data[offset:]

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(rest), 32_768):
            yield rest[i : i + 32_768]

    resp = await client.patch(path, data=rest if content_length else stream(), headers=headers)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Upload-Offset"] == str(len(data))
    got = await download(client, path)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    final = await client.head(path, headers=draft(version))
    assert final.headers["Upload-Offset"] == str(len(data))


async def test_browsers_may_send_and_read_upload_incomplete(client: Client) -> None:
    """CORS: interop 3's field is allowed in requests and exposed in responses."""
    origin = {"Origin": "https://app.example"}
    pre = await client.options(
        "/uploads/",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "upload-draft-interop-version,upload-incomplete",
        },
    )
    assert pre.status == 204
    assert "Upload-Incomplete" in pre.headers["Access-Control-Allow-Headers"]
    resp = await client.post(
        "/uploads/", data=b"ab", headers={**origin, **draft(3, **{"Upload-Incomplete": "?1"})}
    )
    assert resp.status == 201
    assert "Upload-Incomplete" in resp.headers["Access-Control-Expose-Headers"]
