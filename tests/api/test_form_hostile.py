"""POST /upload with broken form fields: a client error (400), never a 500 (#16 item 14)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.app_fixtures import MakeClient

from .helpers import api_client, api_error

BOUNDARY = "hostile-boundary-1b2c"


def _multipart(*parts: bytes) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
FILE = (
    b'Content-Disposition: form-data; name="file"; filename="ok.txt"\r\n'
    b"Content-Type: text/plain\r\n\r\nplain text"
)


async def test_a_folder_that_is_not_utf8_is_a_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    folder = b'Content-Disposition: form-data; name="folder"\r\n\r\n/caf\xe9/\xff\xfe'
    resp = await client.post("/api/v1/upload", data=_multipart(folder, FILE), headers=HEADERS)
    body = await api_error(resp, 400)
    assert "folder" in body["message"] and "UTF-8" in body["message"]


async def test_a_file_name_that_is_not_utf8_is_a_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    bad = (
        b'Content-Disposition: form-data; name="file"; filename="r\xe9sum\xe9.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nsome text"
    )
    resp = await client.post("/api/v1/upload", data=_multipart(bad), headers=HEADERS)
    assert resp.status == 400, await resp.text()
    # No file taken: a 400 with the file's entry, as for any other refused file.
    (entry,) = (await resp.json())["files"]
    assert entry["status_code"] == 400 and "UTF-8" in entry["message"]
    assert entry["filename"] == "r\ufffdsum\ufffd.txt"


async def test_an_overlong_folder_is_a_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    folder = b'Content-Disposition: form-data; name="folder"\r\n\r\n' + b"a" * 10_000
    resp = await client.post("/api/v1/upload", data=_multipart(folder, FILE), headers=HEADERS)
    await api_error(resp, 400)


async def test_a_form_without_a_boundary_is_a_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    resp = await client.post(
        "/api/v1/upload", data=b"abc", headers={"Content-Type": "multipart/form-data"}
    )
    body = await api_error(resp, 400)
    assert "multipart" in body["message"]


async def test_a_part_whose_headers_cannot_be_read_is_a_400(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    resp = await client.post(
        "/api/v1/upload", data=b"--" + BOUNDARY.encode() + b"\r\nbroken", headers=HEADERS
    )
    body = await api_error(resp, 400)
    assert "multipart" in body["message"]


async def test_files_before_a_broken_part_are_stored_and_reported(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    body = (
        b"--" + BOUNDARY.encode() + b"\r\n" + FILE + b"\r\n"
        b"--" + BOUNDARY.encode() + b"\r\nno colon in this header\r\n\r\nx\r\n"
        b"--" + BOUNDARY.encode() + b"--\r\n"
    )
    resp = await client.post("/api/v1/upload", data=body, headers=HEADERS)
    assert resp.status == 201, await resp.text()
    first, refused = (await resp.json())["files"]
    assert first["filename"] == "ok.txt" and first["file_id"]
    assert refused["status_code"] == 400 and "multipart" in refused["message"]
    resp = await client.get(f"/api/v1/file/{first['file_id']}")
    assert resp.status == 200


async def test_a_body_that_breaks_inside_a_file_is_reported_not_a_500(
    make_client: MakeClient,
) -> None:
    client = await api_client(make_client)
    second = b'Content-Disposition: form-data; name="file"; filename="b.txt"\r\n\r\nabc'
    cut_short = b"--" + BOUNDARY.encode() + b"\r\n" + FILE + b"\r\n--" + BOUNDARY.encode()
    for tail in (b"\r\n" + second, b"\r\n" + second + b"\r\n--another-boundary\r\n"):
        resp = await client.post("/api/v1/upload", data=cut_short + tail, headers=HEADERS)
        assert resp.status == 201, await resp.text()
        first, broken = (await resp.json())["files"]
        assert first["file_id"] and "error" not in first
        assert broken["filename"] == "b.txt" and broken["status_code"] == 400
        assert "ended early" in broken["message"]


#: Where a stalling form's body is sent in two writes.
PAUSE = b"<pause>"


@pytest.mark.parametrize(
    "sent",
    [
        # In a file part's headers.
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n',
        # In the second part's headers: the first file is whole.
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nplain text\r\n--XyZ\r\n"
        + PAUSE
        + b'Content-Disposition: form-data; name="file"; filename="b.bin"\r\n',
        # In a field's value.
        b'--XyZ\r\nContent-Disposition: form-data; name="folder"\r\n\r\n/inbox',
    ],
    ids=["part-headers", "between-parts", "field-value"],
)
async def test_a_form_that_stalls_outside_a_file_s_content_ends_with_a_408(
    make_client: MakeClient, sent: bytes
) -> None:
    """body_idle_timeout covers the whole form, not only the files' contents: a client that
    stops sending anywhere else holds no connection and no handler for good."""
    client = await make_client(body_idle_timeout=1)
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for piece in sent.split(PAUSE):
            yield piece
            await asyncio.sleep(0.2)  # (aiohttp's part reader reads ahead of a boundary)
        await done.wait()

    try:
        resp = await asyncio.wait_for(
            client.post(
                "/api/v1/upload",
                data=body(),
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            ),
            10,
        )
        if b"plain text" in sent:
            # The whole file before the stall is stored, and the stall reported after it.
            assert resp.status == 201, await resp.text()
            first, rest = (await resp.json())["files"]
            assert first["filename"] == "a.txt" and "file_id" in first, first
            assert rest["status_code"] == 408, rest
        else:
            assert resp.status == 408, await resp.text()
    finally:
        done.set()


async def test_a_field_that_keeps_arriving_is_not_idle(make_client: MakeClient) -> None:
    """body_idle_timeout bounds each wait for a field's bytes, not the whole field: a long
    field sent slowly but steadily is read, and the files after it are stored."""
    client = await make_client(body_idle_timeout=1)

    async def body() -> AsyncIterator[bytes]:
        yield (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nplain text\r\n--XyZ\r\n"
            b'Content-Disposition: form-data; name="note"\r\n\r\n'
        )
        # A field's value that never stalls: a piece every 0.2 s for 2 s (never idle 1 s).
        for _ in range(10):
            await asyncio.sleep(0.2)
            yield b"x" * 70_000
        yield (
            b"\r\n--XyZ\r\n"
            b'Content-Disposition: form-data; name="file"; filename="b.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nmore text\r\n--XyZ--\r\n"
        )

    resp = await client.post(
        "/api/v1/upload",
        data=body(),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    body_json = await resp.json()
    assert resp.status == 201, body_json
    entries = body_json["files"]
    assert [e.get("status_code") for e in entries] == [None, None], entries


async def test_a_refused_file_that_stalls_ends_the_form(make_client: MakeClient) -> None:
    """A file refused while it arrives (here: past max_size) has the rest of its part read
    past, under body_idle_timeout like every other wait of the form: a client that stops
    sending there holds no handler for good."""
    client = await make_client(body_idle_timeout=1, max_size=100)
    done = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 70_000
        )
        await done.wait()  # the rest of the file never comes

    try:
        resp = await asyncio.wait_for(
            client.post(
                "/api/v1/upload",
                data=body(),
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            ),
            10,
        )
        assert resp.status == 400, await resp.text()
        (entry,) = (await resp.json())["files"]
        assert entry["status_code"] == 413, entry
    finally:
        done.set()


async def test_a_file_refused_for_its_name_is_reported_after_the_files_taken(
    make_client: MakeClient,
) -> None:
    """A file part whose name cannot be taken (not UTF-8, or longer than a raw upload's
    1024 characters) is refused in its entry: the files before it, stored, are reported,
    and the ones after it are taken. A 400 for the whole form hid a stored file from its
    client (which sent it again), and over-long names were metadata outside the quota."""
    client = await api_client(make_client)
    not_utf8 = (
        b'Content-Disposition: form-data; name="file"; filename="r\xe9sum\xe9.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nsome text"
    )
    too_long = (
        b'Content-Disposition: form-data; name="file"; filename="' + b"n" * 60_000 + b'.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nsome text"
    )
    last = (
        b'Content-Disposition: form-data; name="file"; filename="last.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nthe last one"
    )
    resp = await client.post(
        "/api/v1/upload", data=_multipart(FILE, not_utf8, too_long, last), headers=HEADERS
    )
    assert resp.status == 201, await resp.text()
    first, bad_name, long_name, after = (await resp.json())["files"]
    assert first["filename"] == "ok.txt" and first["file_id"]
    assert bad_name["status_code"] == 400 and "UTF-8" in bad_name["message"]
    assert "file_id" not in bad_name and "upload_id" not in bad_name
    assert long_name["status_code"] == 400 and "1024" in long_name["message"]
    assert "file_id" not in long_name and "upload_id" not in long_name
    assert after["filename"] == "last.txt" and after["file_id"]
    for taken in (first, after):
        assert (await client.get(f"/api/v1/file/{taken['file_id']}")).status == 200
