"""Interop versions 3 to 6 (draft -01 to -05): a request on an upload resource that is no
longer active MUST be answered 404, for offset retrieval, append and cancellation; 7 and 8
answer 410."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


def _path(location: str) -> str:
    return location[location.index("/uploads/") :]


@pytest.mark.parametrize(
    ("version", "field", "incomplete"),
    [
        ("3", "Upload-Incomplete", "?1"),
        ("4", "Upload-Complete", "?0"),
        ("5", "Upload-Complete", "?0"),
        ("6", "Upload-Complete", "?0"),
    ],
)
async def test_a_cancelled_upload_is_404_in_versions_3_to_6(
    client: Client, version: str, field: str, incomplete: str
) -> None:
    draft = {"Upload-Draft-Interop-Version": version}
    resp = await client.post("/uploads/", data=b"abc", headers={**draft, field: incomplete})
    assert resp.status == 201, await resp.text()
    path = _path(resp.headers["Location"])
    assert (await client.delete(path, headers=draft)).status == 204
    # "If the server does not consider the upload resource to be active, it MUST respond
    # with a 404 (Not Found) status code." (offset retrieval, append and cancellation)
    assert (await client.head(path, headers=draft)).status == 404
    append = {**draft, field: incomplete, "Upload-Offset": "3"}
    if version == "6":
        append["Content-Type"] = "application/partial-upload"
    assert (await client.patch(path, data=b"d", headers=append)).status == 404
    assert (await client.delete(path, headers=draft)).status == 404


@pytest.mark.parametrize("version", ["7", "8"])
async def test_a_cancelled_upload_is_410_from_version_7(client: Client, version: str) -> None:
    draft = {"Upload-Draft-Interop-Version": version}
    resp = await client.post("/uploads/", data=b"abc", headers={**draft, "Upload-Complete": "?0"})
    assert resp.status == 201, await resp.text()
    path = _path(resp.headers["Location"])
    assert (await client.delete(path, headers=draft)).status == 204
    assert (await client.head(path, headers=draft)).status == 410
