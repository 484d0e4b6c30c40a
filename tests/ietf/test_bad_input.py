"""Hostile and broken draft requests: the draft's status codes and problem documents, never
a 5xx, and the upload's state untouched."""

from __future__ import annotations

import random
import string

import pytest

from tests.app_fixtures import MakeClient, get_committed
from tests.ietf.helpers import (
    DRAFT,
    INCONSISTENT_LENGTH,
    MISMATCHING_OFFSET,
    PARTIAL,
    Client,
    append,
    create,
    created,
    head,
    limits,
    problem,
)

BAD_VERSIONS = ["2", "9", "0", "-8", "8.0", "8.5", '"8"', "?1", "abc", "", "8, 8", "8 8", "x" * 500]


@pytest.mark.parametrize("version", BAD_VERSIONS)
async def test_wrong_interop_versions_on_every_request(client: Client, version: str) -> None:
    path = await created(client, b"abc")
    bad = {"Upload-Draft-Interop-Version": version}
    requests = [
        ("OPTIONS", "/uploads/", {}),
        ("POST", "/uploads/", {"Upload-Complete": "?1"}),
        ("PUT", "/uploads/", {"Upload-Complete": "?0"}),
        ("HEAD", path, {}),
        ("PATCH", path, {**PARTIAL, "Upload-Offset": "3", "Upload-Complete": "?1"}),
        ("DELETE", path, {}),
    ]
    for method, url, headers in requests:
        resp = await client.request(method, url, data=b"zz", headers={**bad, **headers})
        doc = await problem(resp, 400)
        if method != "HEAD":
            assert doc["supported-interop-versions"] == [3, 4, 5, 6, 7, 8]
    # Nothing happened to the upload.
    state = await head(client, path)
    assert (state.status, state.headers["Upload-Offset"]) == (204, "3")


async def test_duplicated_interop_version_lines(client: Client) -> None:
    resp = await client.post(
        "/uploads/",
        headers=[
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Complete", "?1"),
        ],
    )
    await problem(resp, 400)


async def test_duplicated_upload_complete_lines(client: Client) -> None:
    resp = await client.post(
        "/uploads/",
        headers=[
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Complete", "?1"),
            ("Upload-Complete", "?1"),
        ],
    )
    doc = await problem(resp, 400)
    assert "Upload-Complete" in doc["detail"]


@pytest.mark.parametrize(
    "value", ["yes", "?2", "?1, ?1", "?1 ?0", "1", "?", "?1;", "?1;A=1", "\u00e9", "(?1)"]
)
async def test_malformed_upload_complete(client: Client, value: str) -> None:
    await problem(await create(client, b"abc", **{"Upload-Complete": value}), 400)
    path = await created(client, b"abc")
    await problem(await append(client, path, 3, b"d", **{"Upload-Complete": value}), 400)
    state = await head(client, path)
    assert (state.headers["Upload-Offset"], state.headers["Upload-Complete"]) == ("3", "?0")


async def test_offsets_past_the_offset_and_past_the_length(client: Client) -> None:
    path = await created(client, b"abc", **{"Upload-Length": "5"})
    for offset in (4, 5, 6, 10**14, 999_999_999_999_999):
        doc = await problem(await append(client, path, offset, b"d"), 409, MISMATCHING_OFFSET)
        assert doc["expected-offset"] == 3
    # Past the length from the right offset: an inconsistent length, nothing stored.
    await problem(await append(client, path, 3, b"def"), 400, INCONSISTENT_LENGTH)
    await problem(
        await append(client, path, 3, b"d", **{"Upload-Length": "2"}), 400, INCONSISTENT_LENGTH
    )
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_length_below_the_content_on_creation(client: Client) -> None:
    resp = await create(client, b"abcdef", **{"Upload-Length": "3"})
    await problem(resp, 400, INCONSISTENT_LENGTH)
    assert "Location" not in resp.headers


async def test_declared_length_over_max_size(client: Client) -> None:
    resp = await create(client, b"", **{"Upload-Length": "999999999999999"})
    await problem(resp, 413)
    assert "max-size" in limits(resp.headers["Upload-Limit"])


async def test_deferred_upload_past_max_size(make_client: MakeClient) -> None:
    client = await make_client(max_size=8)
    path = await created(client, b"abcd")
    resp = await append(client, path, 4, b"efghijkl")
    await problem(resp, 413)
    assert limits(resp.headers["Upload-Limit"])["max-size"] == 8
    assert int((await head(client, path)).headers["Upload-Offset"]) <= 8


@pytest.mark.parametrize("upload_id", ["x" * 100, "a.b", "a%00b", "a%20b"])
async def test_bad_upload_ids(client: Client, upload_id: str) -> None:
    for method in ("HEAD", "PATCH", "DELETE"):
        resp = await client.request(
            method,
            "/uploads/" + upload_id,
            headers={**DRAFT, **PARTIAL, "Upload-Offset": "0", "Upload-Complete": "?0"},
        )
        assert resp.status == 404


async def test_methods_not_allowed(client: Client) -> None:
    resp = await client.request("DELETE", "/uploads/", headers=DRAFT)
    await problem(resp, 405)
    assert "POST" in resp.headers["Allow"]
    path = await created(client, b"a")
    resp = await client.request("PUT", path, data=b"x", headers=DRAFT)
    await problem(resp, 405)
    assert "PATCH" in resp.headers["Allow"]


async def test_get_with_the_interop_header_downloads(client: Client) -> None:
    path = await created(client, b"abc", complete=True)
    resp = await get_committed(client, path, headers=DRAFT)
    assert (resp.status, await resp.read()) == (200, b"abc")


async def test_method_override_reaches_the_draft(client: Client) -> None:
    path = await created(client, b"abc")
    resp = await client.post(
        path,
        data=b"def",
        headers={
            **DRAFT,
            **PARTIAL,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "3",
            "Upload-Complete": "?1",
        },
    )
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")


@pytest.mark.parametrize(
    "disposition",
    [
        'inline; filename="a\\"b.txt"',
        "inline; filename*=UTF-8''%FF%FE",
        "inline; filename*=koi8-r''abc",
        "inline; filename=",
        "attachment; filename=\"../../x\"; filename*=UTF-8''..%2F",
        "inline; filename=" + "n" * 3000,
        ";;;;",
    ],
)
async def test_hostile_content_disposition(client: Client, disposition: str) -> None:
    resp = await create(client, b"abc", **{"Content-Disposition": disposition})
    assert resp.status == 201


async def test_random_field_values_never_give_a_5xx(client: Client) -> None:
    rng = random.Random(9)
    alphabet = string.printable.replace("\r", "").replace("\n", "").replace("\x0b", "")
    alphabet = alphabet.replace("\x0c", "")
    path = await created(client, b"abc")
    fields = [
        "Upload-Complete",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Draft-Interop-Version",
        "Content-Digest",
        "Repr-Digest",
        "Content-Disposition",
    ]
    for _ in range(150):
        field = rng.choice(fields)
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))).strip()
        headers = {field: value}
        resp = await create(client, b"xy", **headers)
        assert resp.status < 500, (field, value, await resp.text())
        resp = await append(client, path, 3, b"", **headers)
        assert resp.status < 500, (field, value, await resp.text())
    state = await head(client, path)
    assert (state.headers["Upload-Offset"], state.headers["Upload-Complete"]) == ("3", "?0")


async def test_declared_length_over_max_size_on_append(make_client: MakeClient) -> None:
    client = await make_client(max_size=8)
    path = await created(client, b"abcd")
    resp = await append(client, path, 4, b"ef", **{"Upload-Length": "9"})
    await problem(resp, 413)
    assert limits(resp.headers["Upload-Limit"])["max-size"] == 8
    state = await head(client, path)
    assert (state.headers["Upload-Offset"], "Upload-Length" in state.headers) == ("4", False)
