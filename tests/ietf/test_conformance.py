"""draft-ietf-httpbis-resumable-upload (interop version 8): the server's requirements.

One test per requirement, its docstring quoting the draft briefly. Runs on SQLite and
PostgreSQL, on the local and the S3 chunk store, with auth off.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator

import pytest

from tests.app_fixtures import MakeClient, get_committed
from tests.ietf.helpers import (
    COMPLETED_UPLOAD,
    DRAFT,
    INCONSISTENT_LENGTH,
    MISMATCHING_OFFSET,
    PARTIAL,
    Client,
    RawConnection,
    append,
    create,
    created,
    head,
    limits,
    path_of,
    problem,
)
from tusserver.app import RUNTIME

# --- Upload-Offset ---------------------------------------------------------------------------


async def test_offset_never_decreases(client: Client) -> None:
    """Offset: "the offset MUST NOT decrease"."""
    path = await created(client, b"abcd")
    seen = [int((await head(client, path)).headers["Upload-Offset"])]
    for offset, chunk in ((4, b"ef"), (6, b"gh")):
        assert (await append(client, path, offset, chunk)).status == 204
        seen.append(int((await head(client, path)).headers["Upload-Offset"]))
    # A request at an earlier offset changes nothing.
    await problem(await append(client, path, 2, b"zz"), 409, MISMATCHING_OFFSET)
    seen.append(int((await head(client, path)).headers["Upload-Offset"]))
    assert seen == sorted(seen) == [4, 6, 8, 8]


async def test_lost_state_deactivates_the_upload(client: Client) -> None:
    """Offset: "If the server loses any part of the state, it MUST deactivate the upload
    resource and reject further interaction with it"."""
    path = await created(client, b"abc")
    upload_id = path.rsplit("/", 1)[1]
    await client.app[RUNTIME].store.delete(upload_id)
    resp = await head(client, path)
    assert resp.status in (404, 410)
    await problem(await append(client, path, 3, b"d"), resp.status)


@pytest.mark.parametrize("value", ["1.5", "-1", '"3"', "?1", "3, 3", "abc!", "99999999999999999"])
async def test_upload_offset_other_values_are_ignored(client: Client, value: str) -> None:
    """Upload-Offset: "Other values MUST cause the entire header field to be ignored" (and
    "The client MUST indicate the offset": without a usable one the append is refused)."""
    path = await created(client, b"abc")
    doc = await problem(await append(client, path, 0, b"d", **{"Upload-Offset": value}), 400)
    assert "Upload-Offset" in doc["detail"]
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


# --- Upload-Complete -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "yes", '"?1"', "?2", "?1, ?1", "?", ""])
async def test_upload_complete_other_values_are_ignored(client: Client, value: str) -> None:
    """Upload-Complete: "Other values MUST cause the entire header field to be ignored" --
    a creation without it is not a resumable upload, an append without it is refused."""
    resp = await create(client, b"abc", **{"Upload-Complete": value})
    doc = await problem(resp, 400)
    assert "Upload-Complete" in doc["detail"]
    assert "Location" not in resp.headers
    path = await created(client, b"abc")
    await problem(await append(client, path, 3, b"d", **{"Upload-Complete": value}), 400)
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_completion_requires_true_upload_complete(client: Client) -> None:
    """Completeness: "An upload is marked as completed if a request ... included the
    Upload-Complete header field with a true value and the request content was fully
    processed"."""
    path = await created(client, b"abc")
    assert (await head(client, path)).headers["Upload-Complete"] == "?0"
    resp = await append(client, path, 3, b"def", complete=True)
    assert resp.status == 200
    assert (await head(client, path)).headers["Upload-Complete"] == "?1"


# --- Upload-Length ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"10"', "-10", "10.0", "?1", "ten", "10, 10"])
async def test_upload_length_other_values_are_ignored(client: Client, value: str) -> None:
    """Upload-Length: "Other values MUST cause the entire header field to be ignored",
    several values (``10, 10``, what a proxy makes of two lines) included."""
    path = await created(client, b"abc", **{"Upload-Length": value})
    resp = await head(client, path)
    assert resp.status == 204
    assert "Upload-Length" not in resp.headers
    assert resp.headers["Upload-Complete"] == "?0"


async def test_length_indicators_in_one_request_must_match(client: Client) -> None:
    """Length: "If indicators (1) and (2) are both present in the same request, their
    indicated lengths MUST match" (problem type inconsistent-upload-length)."""
    resp = await create(client, b"abc", complete=True, **{"Upload-Length": "4"})
    await problem(resp, 400, INCONSISTENT_LENGTH)
    path = await created(client, b"ab")
    resp = await append(client, path, 2, b"cd", complete=True, **{"Upload-Length": "5"})
    await problem(resp, 400, INCONSISTENT_LENGTH)
    assert (await head(client, path)).headers["Upload-Offset"] == "2"


async def test_length_indicators_across_requests_must_match(client: Client) -> None:
    """Length: "If multiple requests include indicators, their indicated values MUST
    match"."""
    path = await created(client, b"ab", **{"Upload-Length": "6"})
    await problem(
        await append(client, path, 2, b"cd", **{"Upload-Length": "7"}), 400, INCONSISTENT_LENGTH
    )
    # Upload-Complete: ?1 with Content-Length says 2 + 2 = 4, not 6.
    await problem(await append(client, path, 2, b"cd", complete=True), 400, INCONSISTENT_LENGTH)
    resp = await head(client, path)
    assert (resp.headers["Upload-Offset"], resp.headers["Upload-Length"]) == ("2", "6")
    assert (await append(client, path, 2, b"cdef", complete=True)).status == 200


async def test_length_is_recorded_from_upload_length(client: Client) -> None:
    """Creation: "The server MUST record the length ... if the Upload-Length or
    Upload-Complete: ?1 header fields are included in the request"."""
    path = await created(client, b"ab", **{"Upload-Length": "9"})
    assert (await head(client, path)).headers["Upload-Length"] == "9"


async def test_length_is_recorded_from_upload_complete(make_client: MakeClient) -> None:
    """Creation: the length recorded from Upload-Complete: ?1 is "the sum of the current
    offset and the Content-Length header field value"; with chunked content, what arrived."""
    client = await make_client()
    path = await created(client, b"abcde", complete=True)
    resp = await head(client, path)
    assert (resp.headers["Upload-Length"], resp.headers["Upload-Complete"]) == ("5", "?1")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    resp = await client.post("/uploads/", data=chunks(), headers={**DRAFT, "Upload-Complete": "?1"})
    assert resp.status == 201, await resp.text()
    resp = await head(client, path_of(resp.headers["Location"]))
    assert (resp.headers["Upload-Length"], resp.headers["Upload-Complete"]) == ("6", "?1")


async def test_append_records_the_length(client: Client) -> None:
    """Append: "The server MUST record the length ... if the Upload-Length or Upload-Complete
    header fields are included in the request"."""
    path = await created(client, b"ab")
    assert "Upload-Length" not in (await head(client, path)).headers
    assert (await append(client, path, 2, b"cd", **{"Upload-Length": "8"})).status == 204
    assert (await head(client, path)).headers["Upload-Length"] == "8"


# --- Upload-Limit and OPTIONS ----------------------------------------------------------------


async def test_options_has_accept_patch_and_limits(client: Client) -> None:
    """Limits: "the server MUST include the Accept-Patch header field ... MUST include the
    full application/partial-upload media type"; Upload-Limit "SHOULD be included"."""
    for url in ("/uploads/", await created(client, b"a")):
        resp = await client.options(url, headers=DRAFT)
        assert resp.status == 204
        types = [t.strip() for t in resp.headers["Accept-Patch"].split(",")]
        assert "application/partial-upload" in types
        assert limits(resp.headers["Upload-Limit"])["max-size"] == 10 * 1024 * 1024


async def test_upload_limit_is_a_dictionary_of_integers(client: Client) -> None:
    """Limits: Upload-Limit "is a Dictionary"; max-size, max-age ... "The value is an
    Integer"."""
    resp = await create(client, b"ab")
    found = limits(resp.headers["Upload-Limit"])
    assert found["max-size"] == 10 * 1024 * 1024
    assert 0 < found["max-age"] <= 24 * 3600


async def test_413_carries_upload_limit(client: Client) -> None:
    """Limits: "A server responding with a 413 ... as a result of its upload limits MUST
    include the Upload-Limit header in this response"."""
    resp = await create(client, b"", **{"Upload-Length": str(10 * 1024 * 1024 + 1)})
    await problem(resp, 413)
    assert limits(resp.headers["Upload-Limit"])["max-size"] == 10 * 1024 * 1024


# --- creation --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_creation_by_any_method_with_content(client: Client, method: str) -> None:
    """Creation: "all request methods that allow content are possible, such as POST, PUT,
    and PATCH"."""
    resp = await create(client, b"hello", method=method)
    assert resp.status == 201
    resp = await head(client, path_of(resp.headers["Location"]))
    assert resp.headers["Upload-Offset"] == "5"


async def test_incomplete_creation_has_location_and_limits(client: Client) -> None:
    """Creation: "If the Upload-Complete header field is set to false ... the server MUST
    include the Location response header field ... and MUST include the Upload-Limit
    header field"; 201 is RECOMMENDED."""
    resp = await create(client, b"part")
    assert resp.status == 201
    assert re.fullmatch(r"http://[^/]+/uploads/[0-9a-f]{32}", resp.headers["Location"])
    assert "max-size" in limits(resp.headers["Upload-Limit"])
    assert resp.headers["Upload-Complete"] == "?0"


async def test_empty_incomplete_creation_gives_the_uri_first(client: Client) -> None:
    """Creation: "An Upload-Complete header field set to false is also valid. This can be
    used to retrieve the upload resource's URI before transferring any representation
    data"."""
    path = await created(client)
    resp = await head(client, path)
    assert (resp.headers["Upload-Offset"], resp.headers["Upload-Complete"]) == ("0", "?0")
    assert (await append(client, path, 0, b"data", complete=True)).status == 200


async def test_empty_complete_creation_is_an_empty_representation(client: Client) -> None:
    """Creation: "If the Upload-Complete header field is then set to true, the client intends
    to upload an empty representation"."""
    resp = await create(client, complete=True)
    assert resp.status == 201
    assert resp.headers["Upload-Complete"] == "?1"
    state = await head(client, path_of(resp.headers["Location"]))
    assert (state.headers["Upload-Offset"], state.headers["Upload-Length"]) == ("0", "0")


async def test_interim_response_has_location_limits_and_interop_version(client: Client) -> None:
    """Creation: a 104 "MUST include Location header field pointing to the upload resource
    and MUST include the Upload-Limit header field"; Draft Version Identification: the
    server "MUST also send ... Upload-Draft-Interop-Version with the interop version" on
    it; and "all interim and final response messages for the same request MUST contain an
    identical Location value"."""
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST",
            "/uploads/",
            {**DRAFT, "Upload-Complete": "?0", "Content-Length": "3"},
        )
        await conn.send(b"abc")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 201
    [interim] = resp.informational
    assert (interim.status, interim.reason) == (104, "Upload Resumption Supported")
    assert interim.headers["Upload-Draft-Interop-Version"] == "8"
    assert interim.headers["Location"] == resp.headers["Location"]
    assert "max-size" in limits(interim.headers["Upload-Limit"])


async def test_interim_response_does_not_replace_100_continue(client: Client) -> None:
    """104: "the server MUST NOT omit the 100 (Continue) response because it has sent an
    interim response with the 104 (Upload Resumption Supported) status code"."""
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST",
            "/uploads/",
            {**DRAFT, "Upload-Complete": "?1", "Content-Length": "3", "Expect": "100-continue"},
        )
        first = await conn.read_head()
        assert first.status == 100
        second = await conn.read_head()
        assert second.status == 104
        await conn.send(b"abc")
        final = await conn.read_response()
    finally:
        await conn.close()
    assert final.status == 201
    assert final.headers["Upload-Complete"] == "?1"


@pytest.mark.parametrize("version", ["2", "9", "8.0", '"8"', "8, 8"])
async def test_no_interim_response_for_another_interop_version(
    client: Client, version: str
) -> None:
    """Draft Version Identification: the server "MUST NOT send a 104 (Upload Resumption
    Supported) informational response when the interop version ... is missing or
    mismatching"."""
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST",
            "/uploads/",
            {
                "Upload-Draft-Interop-Version": version,
                "Upload-Complete": "?1",
                "Content-Length": "3",
            },
        )
        await conn.send(b"abc")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.informational == []
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert b"supported-interop-versions" in resp.body


async def test_no_interim_response_without_interop_version(client: Client) -> None:
    """Draft Version Identification: no 104 when the interop version "is missing" (the
    request is then a tus request)."""
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST",
            "/uploads/",
            {"Tus-Resumable": "1.0.0", "Upload-Length": "3", "Content-Length": "0"},
        )
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 201
    assert resp.informational == []


async def test_no_interim_response_to_http_1_0(client: Client) -> None:
    """104 is only sent where the client can receive it: HTTP/1.0 has no 1xx responses."""
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "POST",
            "/uploads/",
            {**DRAFT, "Upload-Complete": "?1", "Content-Length": "3"},
            version="HTTP/1.0",
        )
        await conn.send(b"abc")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 201
    assert resp.informational == []


async def _poll_offset(client: Client, path: str, want: int) -> dict[str, str]:
    for _ in range(100):
        resp = await head(client, path)
        if resp.status == 204 and int(resp.headers["Upload-Offset"]) >= want:
            return dict(resp.headers)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the offset never reached {want}")


async def test_interrupted_creation_is_not_complete(client: Client) -> None:
    """Creation: when the request content is not fully processed, the server "SHOULD append
    as much of the request content as possible ... the upload resource MUST NOT be
    considered complete then"."""
    conn = await RawConnection.open(client)
    await conn.send_head(
        "POST", "/uploads/", {**DRAFT, "Upload-Complete": "?1", "Content-Length": "10"}
    )
    interim = await conn.read_head()
    assert interim.status == 104
    await conn.send(b"abcd")
    await asyncio.sleep(0.3)
    await conn.close()
    path = path_of(interim.headers["Location"])
    state = await _poll_offset(client, path, 4)
    assert state["Upload-Complete"] == "?0"
    assert state["Upload-Offset"] == "4"
    # The client resumes where the server stopped, and completes the upload.
    resp = await append(client, path, 4, b"efghij", complete=True)
    assert resp.status == 200
    assert resp.headers["Upload-Complete"] == "?1"


# --- offset retrieval ------------------------------------------------------------------------


async def test_head_reports_the_whole_state(client: Client) -> None:
    """Offset retrieval: a successful HEAD "MUST include the offset ..., MUST include the
    completeness state ..., MUST include the length ..., MUST indicate the limits ..., and
    SHOULD include the Cache-Control header field with the value no-store"."""
    path = await created(client, b"abc", **{"Upload-Length": "5"})
    resp = await head(client, path)
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == "3"
    assert resp.headers["Upload-Complete"] == "?0"
    assert resp.headers["Upload-Length"] == "5"
    assert "max-size" in limits(resp.headers["Upload-Limit"])
    assert resp.headers["Cache-Control"] == "no-store"


async def test_head_omits_an_unknown_length(client: Client) -> None:
    """Offset retrieval: Upload-Length is included "unless the client has not supplied
    one"."""
    resp = await head(client, await created(client, b"abc"))
    assert "Upload-Length" not in resp.headers


async def test_head_of_an_unknown_upload(client: Client) -> None:
    """Offset retrieval: an upload that does not exist is a 4xx (here 404), never a 2xx."""
    resp = await head(client, "/uploads/" + "0" * 32)
    assert resp.status == 404


# --- append ----------------------------------------------------------------------------------


async def test_mismatching_offset_is_409_with_the_offset(client: Client) -> None:
    """Append: "If the Upload-Offset request header field value does not match the current
    offset ..., the server MUST reject the request with a 409 (Conflict) status code. The
    response MUST include the correct offset in the Upload-Offset header field"; the problem
    "SHOULD populate both members" expected-offset and provided-offset."""
    path = await created(client, b"abc")
    for provided in (0, 2, 4, 1000):
        resp = await append(client, path, provided, b"x")
        doc = await problem(resp, 409, MISMATCHING_OFFSET)
        assert resp.headers["Upload-Offset"] == "3"
        assert (doc["expected-offset"], doc["provided-offset"]) == (3, provided)
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_append_to_completed_upload_with_content_is_rejected(client: Client) -> None:
    """Append: "If the upload is already complete ..., the server MUST NOT modify the upload
    resource and MUST reject the request ... If the client attempted to append a non-zero
    length document, the server MUST treat this as an inconsistent length failure"."""
    path = await created(client, b"abc", complete=True)
    for complete in (False, True):
        resp = await append(client, path, 3, b"more", complete=complete)
        await problem(resp, 400, INCONSISTENT_LENGTH)
    state = await head(client, path)
    assert (state.headers["Upload-Offset"], state.headers["Upload-Length"]) == ("3", "3")


async def test_empty_append_to_completed_upload_is_rejected(client: Client) -> None:
    """Append: a completed upload is not modified and the request is rejected; for a
    zero-length document the problem type completed-upload can be used."""
    path = await created(client, b"abc", complete=True)
    await problem(await append(client, path, 3, b"", complete=True), 400, COMPLETED_UPLOAD)
    assert (await head(client, path)).headers["Upload-Complete"] == "?1"


async def test_complete_append_response_says_complete(client: Client) -> None:
    """Append: "the response MUST include the Upload-Complete header field with a true
    value"."""
    path = await created(client, b"abc")
    resp = await append(client, path, 3, b"def", complete=True)
    assert resp.status == 200
    assert resp.headers["Upload-Complete"] == "?1"


async def test_empty_complete_append_completes(client: Client) -> None:
    """Append: Upload-Complete is true when "the request has no content ... This usage
    requires the full representation data to have been processed during prior requests"."""
    path = await created(client, b"abc")
    resp = await append(client, path, 3, b"", complete=True)
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")
    assert (await head(client, path)).headers["Upload-Length"] == "3"


async def test_incomplete_append_acknowledges_with_false(client: Client) -> None:
    """Append: "the server acknowledges the appended data by sending a 2xx (Successful)
    response with the Upload-Complete header field set to false"."""
    path = await created(client, b"abc")
    resp = await append(client, path, 3, b"def")
    assert resp.status == 204
    assert (resp.headers["Upload-Complete"], resp.headers["Upload-Offset"]) == ("?0", "6")


async def test_append_needs_partial_upload_media_type(client: Client) -> None:
    """Append: appending is "a PATCH request with the application/partial-upload media
    type"; another patch document is refused (RFC 5789: 415 with Accept-Patch)."""
    path = await created(client, b"abc")
    for ctype in ("application/offset+octet-stream", "application/octet-stream", ""):
        resp = await append(client, path, 3, b"def", **{"Content-Type": ctype})
        await problem(resp, 415)
        assert resp.headers["Accept-Patch"] == "application/partial-upload"
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_offset_never_exceeds_the_length(client: Client) -> None:
    """Append: "If the length is known, the server MUST prevent the offset from exceeding
    the upload length by rejecting the request"."""
    path = await created(client, b"ab", **{"Upload-Length": "4"})
    await problem(await append(client, path, 2, b"cdef"), 400, INCONSISTENT_LENGTH)
    assert (await head(client, path)).headers["Upload-Offset"] == "2"

    async def chunks() -> AsyncIterator[bytes]:
        yield b"cd"
        yield b"efgh"

    # Without Content-Length the server counts: once the content goes past the length, the
    # request is rejected and the upload is invalid ("marking the upload resource invalid
    # and rejecting any further interaction with it"). The bytes that fitted are not the
    # upload the client meant: never complete, never a file.
    resp = await client.patch(
        path,
        data=chunks(),
        headers={**DRAFT, **PARTIAL, "Upload-Offset": "2", "Upload-Complete": "?0"},
    )
    await problem(resp, 400, INCONSISTENT_LENGTH)
    assert (await head(client, path)).status == 410
    resp = await append(client, path, 2, b"cd")
    assert resp.status == 410, await resp.text()
    resp = await client.get(path)
    assert resp.status == 410, await resp.text()


async def test_creation_whose_content_goes_past_its_length_is_not_complete(
    client: Client,
) -> None:
    """The same on a creation carrying its length and chunked content: the upload is
    cancelled, not completed with its first bytes."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defgh"

    resp = await client.post(
        "/uploads/",
        data=chunks(),
        headers={**DRAFT, "Upload-Complete": "?1", "Upload-Length": "5"},
    )
    await problem(resp, 400, INCONSISTENT_LENGTH)
    assert (await head(client, path_of(resp.headers["Location"]))).status == 410


async def test_interrupted_append_is_not_complete(client: Client) -> None:
    """Append: when the patch document is not fully processed the server "SHOULD append as
    much of the patch document as possible ... the upload resource MUST NOT be considered
    complete then"."""
    path = await created(client, b"abc")
    conn = await RawConnection.open(client)
    await conn.send_head(
        "PATCH",
        path,
        {
            **DRAFT,
            **PARTIAL,
            "Upload-Offset": "3",
            "Upload-Complete": "?1",
            "Content-Length": "6",
        },
    )
    await conn.send(b"de")
    await asyncio.sleep(0.3)
    await conn.close()
    state = await _poll_offset(client, path, 5)
    assert (state["Upload-Offset"], state["Upload-Complete"]) == ("5", "?0")


async def test_no_interim_response_with_location_on_append(client: Client) -> None:
    """Append: interim responses to an append "MUST NOT include the Location header
    field"."""
    path = await created(client, b"abc")
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "PATCH",
            path,
            {
                **DRAFT,
                **PARTIAL,
                "Upload-Offset": "3",
                "Upload-Complete": "?1",
                "Content-Length": "3",
            },
        )
        await conn.send(b"def")
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 200
    assert all("Location" not in r.headers for r in resp.informational)


# --- cancellation ----------------------------------------------------------------------------


async def test_cancellation_deactivates_the_upload(client: Client) -> None:
    """Cancellation: "Upon receiving a DELETE request, the server SHOULD deactivate the upload
    resource"."""
    path = await created(client, b"abc")
    resp = await client.delete(path, headers=DRAFT)
    assert resp.status == 204
    await problem(await head(client, path), 410)
    await problem(await append(client, path, 3, b"d"), 410)


# --- concurrency -----------------------------------------------------------------------------


async def test_offset_from_head_is_accepted_after_a_stale_append(client: Client) -> None:
    """Concurrency: "the server MUST NOT send outdated information in responses when
    retrieving the offset ... the offset sent by the server MUST be accepted in a subsequent
    request to append representation data"."""
    data = b"0123456789"
    path = await created(client, data[:2])
    stale = await RawConnection.open(client)
    await stale.send_head(
        "PATCH",
        path,
        {
            **DRAFT,
            **PARTIAL,
            "Upload-Offset": "2",
            "Upload-Complete": "?1",
            "Content-Length": "8",
        },
    )
    await stale.send(data[2:5])
    await asyncio.sleep(0.3)
    # The client believes the request failed and resumes while it still hangs.
    state = await head(client, path)
    assert state.status == 204
    offset = int(state.headers["Upload-Offset"])
    assert 2 <= offset <= 5
    resp = await append(client, path, offset, data[offset:], complete=True)
    assert resp.status == 200, await resp.text()
    await stale.close()
    final = await head(client, path)
    assert (final.headers["Upload-Offset"], final.headers["Upload-Complete"]) == ("10", "?1")
    download = await get_committed(client, path)
    assert await download.read() == data


async def test_cancellation_stops_a_running_append(client: Client) -> None:
    """Concurrency: the server "MUST take measures to prevent race conditions, data loss and
    corruption from concurrent requests to append ... and/or cancellation"."""
    path = await created(client, b"ab")
    stale = await RawConnection.open(client)
    await stale.send_head(
        "PATCH",
        path,
        {
            **DRAFT,
            **PARTIAL,
            "Upload-Offset": "2",
            "Upload-Complete": "?0",
            "Content-Length": "100",
        },
    )
    await stale.send(b"cd")
    await asyncio.sleep(0.2)
    assert (await client.delete(path, headers=DRAFT)).status == 204
    await stale.close()
    await problem(await head(client, path), 410)


# --- security --------------------------------------------------------------------------------


async def test_upload_uri_leaks_nothing(client: Client) -> None:
    """Security: the server "MUST ensure that no internal information is leaked in the URI";
    URIs are hard to guess (128 random bits), never derived from what the client sent."""
    first = await created(client, b"a", **{"Content-Disposition": 'inline; filename="x.jpg"'})
    second = await created(client, b"a", **{"Content-Disposition": 'inline; filename="x.jpg"'})
    for path in (first, second):
        assert re.fullmatch(r"/uploads/[0-9a-f]{32}", path)
    assert first != second


async def test_metadata_is_sanitized(client: Client) -> None:
    """Security: "metadata MUST be validated and/or sanitized if the server takes its values
    into consideration": a file name is a plain name, a media type a media type."""
    path = await created(
        client,
        b"a",
        **{
            "Content-Disposition": "inline; filename*=UTF-8''..%2F..%2Fetc%2Fpasswd%0A",
            "Content-Type": "text/plain; charset=utf-8",
        },
    )
    resp = await client.head(path, headers={"Tus-Resumable": "1.0.0"})
    meta = dict(
        pair.split(" ") if " " in pair else (pair, "")
        for pair in resp.headers["Upload-Metadata"].split(",")
    )
    assert base64.b64decode(meta["filename"]) == b"passwd"
    assert base64.b64decode(meta["filetype"]) == b"text/plain"


async def test_graceful_shutdown_answers_503_with_the_offset(client: Client) -> None:
    """Append: "For a 5xx (Server Error) status code, the client MAY automatically attempt
    upload resumption": a shutdown stops a running append, keeps what arrived and says
    where to resume."""
    path = await created(client, b"ab")
    conn = await RawConnection.open(client)
    try:
        await conn.send_head(
            "PATCH",
            path,
            {
                **DRAFT,
                **PARTIAL,
                "Upload-Offset": "2",
                "Upload-Complete": "?1",
                "Content-Length": "10",
            },
        )
        await conn.send(b"cde")
        await asyncio.sleep(0.3)
        await client.app.on_shutdown.send(client.app)
        resp = await conn.read_response()
    finally:
        await conn.close()
    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert (resp.headers["Upload-Offset"], resp.headers["Upload-Complete"]) == ("5", "?0")
    assert "Retry-After" in resp.headers
    state = await head(client, path)
    assert (state.headers["Upload-Offset"], state.headers["Upload-Complete"]) == ("5", "?0")
