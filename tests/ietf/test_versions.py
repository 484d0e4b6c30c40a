"""Every interop version of the draft (3 to 8) on the same uploads, table-driven.

The table (``VERSIONS``) is what each draft revision says, written down from the texts
(3 = draft -01, 4 = -02, 5 = -03, 6 = -04/-05, 7 = -06 to -08, 8 = -09 on); every test runs
once per version against the real server and checks that the request is answered in the
version it was sent in. Runs on SQLite and PostgreSQL, on the local and the S3 chunk store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.app_fixtures import TUS, get_committed
from tests.ietf.helpers import (
    COMPLETED_UPLOAD,
    INCONSISTENT_LENGTH,
    MISMATCHING_OFFSET,
    Client,
    RawConnection,
    limits,
    path_of,
)

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Version:
    n: int
    #: The completeness field and whether its true value means "incomplete" (3).
    field: str
    #: PATCH must be application/partial-upload (from 6).
    partial: bool
    #: Upload-Length exists, so HEAD answers it (from 6).
    length: bool
    #: Upload-Limit's lifetime key; None: no Upload-Limit at all (3 to 5).
    lifetime: str | None
    #: The draft's problem types exist (from 6).
    problem_types: bool
    #: Status of an append that leaves the upload incomplete / completes it.
    append_status: tuple[int, int]
    #: HEAD and DELETE carrying Upload-Offset or the completeness field are a 400 (3 to 6).
    strict: bool
    #: What an append without the completeness field means (None: a 400).
    absent_on_append: bool | None

    def __str__(self) -> str:
        return f"v{self.n}"

    @property
    def draft(self) -> dict[str, str]:
        return {"Upload-Draft-Interop-Version": str(self.n)}

    def complete(self, done: bool) -> dict[str, str]:
        value = (not done) if self.field == "Upload-Incomplete" else done
        return {self.field: "?1" if value else "?0"}

    def says_complete(self, headers: Any) -> bool:
        value: str = headers[self.field]
        assert value in ("?0", "?1"), value
        return (value == "?1") != (self.field == "Upload-Incomplete")

    def append_headers(self, offset: int, done: bool | None) -> dict[str, str]:
        h = {**self.draft, "Upload-Offset": str(offset)}
        if done is not None:
            h.update(self.complete(done))
        if self.partial:
            h["Content-Type"] = "application/partial-upload"
        return h


VERSIONS = [
    Version(3, "Upload-Incomplete", False, False, None, False, (201, 201), True, True),
    Version(4, "Upload-Complete", False, False, None, False, (201, 201), True, False),
    Version(5, "Upload-Complete", False, False, None, False, (201, 201), True, False),
    Version(6, "Upload-Complete", True, True, "expires", True, (201, 201), True, False),
    Version(7, "Upload-Complete", True, True, "max-age", True, (204, 200), False, None),
    Version(8, "Upload-Complete", True, True, "max-age", True, (204, 200), False, None),
]
V = {v.n: v for v in VERSIONS}

pytestmark = pytest.mark.parametrize("v", VERSIONS, ids=str)


async def create(client: Client, v: Version, body: bytes, done: bool, **headers: str) -> Any:
    h = {**v.draft, **v.complete(done), **headers}
    return await client.post("/uploads/", data=body, headers=h)


async def created(
    client: Client, v: Version, body: bytes, headers: dict[str, str] | None = None
) -> str:
    resp = await create(client, v, body, False, **(headers or {}))
    assert resp.status == 201, await resp.text()
    return path_of(resp.headers["Location"])


async def append(
    client: Client, v: Version, path: str, offset: int, body: bytes, done: bool | None
) -> Any:
    return await client.patch(path, data=body, headers=v.append_headers(offset, done))


async def download(client: Client, path: str) -> bytes:
    # tus GET serves a finished upload once the pipeline has committed its file.
    resp = await get_committed(client, path)
    assert resp.status == 200, await resp.text()
    return await resp.read()


def check_limits(v: Version, headers: Any) -> None:
    """Upload-Limit where the version has it, with its lifetime key."""
    if v.lifetime is None:
        assert "Upload-Limit" not in headers
        return
    found = limits(headers["Upload-Limit"])
    assert "max-size" in found
    other = {"expires", "max-age"} - {v.lifetime}
    assert not other & set(found), found


# --- creation --------------------------------------------------------------------------------


async def test_creation_with_the_complete_body(client: Client, v: Version) -> None:
    resp = await create(client, v, b"hello world", True, **{"Content-Type": "text/plain"})
    assert resp.status == 201, await resp.text()
    assert resp.headers["Upload-Offset"] == "11"
    assert v.says_complete(resp.headers)
    assert ("Upload-Complete" if v.n == 3 else "Upload-Incomplete") not in resp.headers
    path = path_of(resp.headers["Location"])
    state = await client.head(path, headers=v.draft)
    assert (state.status, state.headers["Upload-Offset"]) == (204, "11")
    assert v.says_complete(state.headers)
    assert await download(client, path) == b"hello world"


async def test_creation_without_the_complete_body(client: Client, v: Version) -> None:
    resp = await create(client, v, b"part", False, **{"Upload-Length": "10"})
    assert resp.status == 201, await resp.text()
    assert "Location" in resp.headers
    assert resp.headers["Upload-Offset"] == "4"
    assert not v.says_complete(resp.headers)
    check_limits(v, resp.headers)
    # Careful creation: no content at all, the URI first.
    empty = await create(client, v, b"", False)
    assert empty.status == 201
    assert (empty.headers["Upload-Offset"], v.says_complete(empty.headers)) == ("0", False)


async def test_interim_104_is_in_the_request_version(client: Client, v: Version) -> None:
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST", "/uploads/", {**v.draft, **v.complete(True), "Content-Length": "3"}
        )
        await conn.send(b"abc")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 201, resp.body
    [interim] = resp.informational
    assert (interim.status, interim.reason) == (104, "Upload Resumption Supported")
    assert interim.headers["Upload-Draft-Interop-Version"] == str(v.n)
    assert interim.headers["Location"] == resp.headers["Location"]
    check_limits(v, interim.headers)
    assert "Upload-Offset" not in interim.headers


# --- offset retrieval ------------------------------------------------------------------------


async def test_offset_retrieval(client: Client, v: Version) -> None:
    path = await created(client, v, b"abcd", {"Upload-Length": "9"})
    state = await client.head(path, headers=v.draft)
    assert state.status == 204
    assert state.headers["Upload-Offset"] == "4"
    assert not v.says_complete(state.headers)
    assert state.headers["Cache-Control"] == "no-store"
    # Upload-Length where the version has it (and then it was recorded at creation).
    assert state.headers.get("Upload-Length") == ("9" if v.length else None)
    check_limits(v, state.headers)
    # Up to 6, "The request MUST NOT include an Upload-Offset or Upload-Complete header
    # field. The server MUST reject requests with either of these fields ... 400".
    for extra in ({"Upload-Offset": "4"}, v.complete(False)):
        resp = await client.head(path, headers={**v.draft, **extra})
        assert resp.status == (400 if v.strict else 204)


# --- append and completion -------------------------------------------------------------------


async def test_append_and_completion(client: Client, v: Version) -> None:
    path = await created(client, v, b"abc")
    resp = await append(client, v, path, 3, b"def", False)
    assert resp.status == v.append_status[0], await resp.text()
    assert (resp.headers["Upload-Offset"], v.says_complete(resp.headers)) == ("6", False)
    resp = await append(client, v, path, 6, b"ghij", True)
    assert resp.status == v.append_status[1], await resp.text()
    assert (resp.headers["Upload-Offset"], v.says_complete(resp.headers)) == ("10", True)
    state = await client.head(path, headers=v.draft)
    assert v.says_complete(state.headers)
    assert await download(client, path) == b"abcdefghij"
    # Nothing more can be appended.
    resp = await append(client, v, path, 10, b"k", True)
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    # 6 has completed-upload only; 7 adds inconsistent-upload-length, which content sent to
    # a complete upload is from then on; before 6 there are no problem types.
    expected = {6: COMPLETED_UPLOAD, 7: INCONSISTENT_LENGTH, 8: INCONSISTENT_LENGTH}
    assert json.loads(await resp.text())["type"] == expected.get(v.n, "about:blank")


async def test_declared_length_is_the_uploads(client: Client, v: Version) -> None:
    """Upload-Length (defined from 6 on, read in every version as tusd does: tus-js-client's
    ietf-draft-03 mode relies on it) is the upload's length; reaching it completes."""
    path = await created(client, v, b"ab", {"Upload-Length": "4"})
    tus = await client.head(path, headers=TUS)
    assert (tus.headers["Upload-Length"], tus.headers["Upload-Offset"]) == ("4", "2")
    resp = await append(client, v, path, 2, b"cd", False)
    assert resp.status == v.append_status[1], await resp.text()
    assert v.says_complete(resp.headers)
    assert await download(client, path) == b"abcd"


async def test_append_media_type(client: Client, v: Version) -> None:
    """application/partial-upload is required from 6 (-04) on, unknown before."""
    path = await created(client, v, b"abc")
    headers = v.append_headers(3, False)
    headers.pop("Content-Type", None)
    resp = await client.patch(path, data=b"d", headers=headers)
    if v.partial:
        assert resp.status == 415
        assert resp.headers["Accept-Patch"] == "application/partial-upload"
    else:
        assert resp.status == v.append_status[0], await resp.text()


async def test_append_without_the_completeness_field(client: Client, v: Version) -> None:
    """3: no Upload-Incomplete means the end; 4 to 6: only a true Upload-Complete completes;
    from 7: "The request MUST include the Upload-Complete header field"."""
    path = await created(client, v, b"abc")
    resp = await append(client, v, path, 3, b"def", None)
    if v.absent_on_append is None:
        assert resp.status == 400
        assert v.field in json.loads(await resp.text())["detail"]
        return
    assert resp.status == v.append_status[v.absent_on_append], await resp.text()
    assert v.says_complete(resp.headers) is v.absent_on_append


async def test_wrong_offset(client: Client, v: Version) -> None:
    path = await created(client, v, b"abc")
    resp = await append(client, v, path, 1, b"zz", False)
    assert resp.status == 409
    assert resp.headers["Upload-Offset"] == "3"
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    doc = json.loads(await resp.text())
    # The problem type exists from 6 (-04) on; before, a plain problem document.
    assert doc["type"] == (MISMATCHING_OFFSET if v.problem_types else "about:blank")
    assert (await client.head(path, headers=v.draft)).headers["Upload-Offset"] == "3"


async def test_errors_on_an_active_upload_carry_the_offset(client: Client, v: Version) -> None:
    """Up to 6: "The server MUST send the Upload-Offset header in the response if it
    considers the upload active ... when the response is a failure"."""
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "5"})
    path = path_of(resp.headers["Location"])
    # Six bytes into an upload of five (its length was given with tus).
    resp = await append(client, v, path, 0, b"abcdef", False)
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith(PROBLEM)
    if v.n <= 6:
        assert resp.headers["Upload-Offset"] == "0"
    if v.n == 7:
        # -06: for Upload-Complete: ?0, "Any response, successful or not, MUST then include
        # the Upload-Complete header field with a false value".
        assert resp.headers["Upload-Complete"] == "?0"


async def test_failures_before_the_append_carry_the_completeness_too(
    client: Client, v: Version
) -> None:
    """7 (-06 to -08): for an append with Upload-Complete: ?0 "Any response, successful or
    not" says ?0: also when the request fails before any content is taken (a malformed
    digest field, an upload that is gone)."""
    path = await created(client, v, b"abc")
    bad = {**v.append_headers(3, False), "Content-Digest": "sha-256=1"}
    malformed = await client.patch(path, data=b"d", headers=bad)
    assert malformed.status == 400
    assert (await client.delete(path, headers=v.draft)).status == 204
    gone = await append(client, v, path, 3, b"d", False)
    assert gone.status == (404 if v.n <= 6 else 410)
    for resp in (malformed, gone):
        assert resp.headers["Content-Type"].startswith(PROBLEM)
        if v.n == 7:
            assert resp.headers["Upload-Complete"] == "?0", dict(resp.headers)
    if v.n <= 6:
        # The upload is not known to be active in either: no offset is claimed.
        assert "Upload-Offset" not in gone.headers


# --- cancellation and unknown versions -------------------------------------------------------


async def test_cancellation(client: Client, v: Version) -> None:
    path = await created(client, v, b"abc")
    if v.strict:
        # Up to 6: "The request MUST NOT include an Upload-Offset or Upload-Complete header".
        refused = await client.delete(path, headers={**v.draft, "Upload-Offset": "3"})
        assert refused.status == 400
        assert (await client.head(path, headers=v.draft)).status == 204
    resp = await client.delete(path, headers=v.draft)
    assert resp.status == 204
    gone = await client.head(path, headers=v.draft)
    assert gone.status == (404 if v.n <= 6 else 410)


async def test_options(client: Client, v: Version) -> None:
    resp = await client.options("/uploads/", headers=v.draft)
    assert resp.status == 204
    if v.partial:
        assert resp.headers["Accept-Patch"] == "application/partial-upload"
        check_limits(v, resp.headers)
    else:
        assert "Accept-Patch" not in resp.headers and "Upload-Limit" not in resp.headers


@pytest.mark.parametrize("bad", ["2", "9", "6.0", '"6"'])
async def test_an_unknown_version_is_400_naming_the_supported(
    client: Client, v: Version, bad: str
) -> None:
    path = await created(client, v, b"abc")
    for method, url in (("POST", "/uploads/"), ("PATCH", path), ("DELETE", path)):
        headers = {**v.append_headers(3, True), "Upload-Draft-Interop-Version": bad}
        resp = await client.request(method, url, data=b"d", headers=headers)
        assert resp.status == 400
        doc = json.loads(await resp.text())
        assert doc["supported-interop-versions"] == [3, 4, 5, 6, 7, 8]
        assert "3, 4, 5, 6, 7, 8" in doc["detail"]
    assert (await client.head(path, headers=v.draft)).headers["Upload-Offset"] == "3"
