"""Headers a request may carry once, sent twice (or as a list in one line): a 400 before
anything is read or stored, for tus and for the IETF draft, on SQLite and PostgreSQL.

A client, or a proxy in front, that reads the first of two values while the server reads
the other would disagree with it about the offset, the length or the checksum: such
requests are refused whatever the values, and the upload is left as it was.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.app_fixtures import OCTET, TUS
from tests.ietf.helpers import DRAFT, PARTIAL, problem
from tests.protocol.test_core import create, head, patch

Client = TestClient[Any, Any]
Headers = list[tuple[str, str]]


@pytest.fixture
def storage_settings() -> dict[str, Any]:
    """The local chunk store only: these requests are refused before any store is used."""
    return {}


def lines(**headers: str) -> Headers:
    return list(headers.items())


async def refused(resp: Any, header: str) -> str:
    """A tus 400 naming ``header``, with the headers every tus answer carries."""
    text: str = await resp.text()
    assert resp.status == 400, text
    assert header in text and "once" in text, text
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "Location" not in resp.headers
    return text


async def offset_of(client: Client, path: str) -> str:
    resp = await head(client, path)
    assert resp.status == 200
    return str(resp.headers["Upload-Offset"])


# --- tus 1.0.0 ----------------------------------------------------------------------------


CREATIONS: list[tuple[str, Headers]] = [
    ("Upload-Length", [("Upload-Length", "5"), ("Upload-Length", "10")]),
    ("Upload-Length", [("Upload-Length", "5"), ("Upload-Length", "5")]),
    ("Upload-Length", [("Upload-Length", "5, 10")]),
    ("Upload-Defer-Length", [("Upload-Defer-Length", "1"), ("Upload-Defer-Length", "1")]),
    (
        "Upload-Metadata",
        [
            ("Upload-Length", "5"),
            ("Upload-Metadata", "filename YS50eHQ="),
            ("Upload-Metadata", "filename Yi50eHQ="),
        ],
    ),
    (
        "Upload-Concat",
        [("Upload-Concat", "partial"), ("Upload-Concat", "partial"), ("Upload-Length", "5")],
    ),
    ("Tus-Resumable", [("Tus-Resumable", "1.0.0"), ("Upload-Length", "5")]),
    ("Tus-Resumable", [("Tus-Resumable", "0.2.2"), ("Upload-Length", "5")]),
    (
        "X-HTTP-Method-Override",
        [
            ("X-HTTP-Method-Override", "POST"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("Upload-Length", "5"),
        ],
    ),
]


@pytest.mark.parametrize(("header", "extra"), CREATIONS)
async def test_a_creation_with_a_repeated_header_creates_nothing(
    client: Client, header: str, extra: Headers
) -> None:
    resp = await client.post("/uploads/", headers=[*TUS.items(), *extra])
    await refused(resp, header)


async def test_a_creation_with_upload_with_two_checksums_creates_nothing(client: Client) -> None:
    body = b"hello"
    right = "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    resp = await client.post(
        "/uploads/",
        data=body,
        headers=[
            *TUS.items(),
            *OCTET.items(),
            ("Upload-Length", "5"),
            ("Upload-Checksum", wrong),
            ("Upload-Checksum", right),
        ],
    )
    await refused(resp, "Upload-Checksum")


@pytest.mark.parametrize(
    "offsets", [["0", "3"], ["3", "0"], ["3", "3"], ["0, 3"], ["3,3"], ["0", "0, 3"]]
)
async def test_a_patch_with_two_offsets_appends_nothing(client: Client, offsets: list[str]) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"abc")).status == 204
    resp = await client.patch(
        path,
        data=b"defgh",
        headers=[*TUS.items(), *OCTET.items(), *(("Upload-Offset", o) for o in offsets)],
    )
    await refused(resp, "Upload-Offset")
    assert await offset_of(client, path) == "3"


async def test_a_patch_with_two_checksums_appends_nothing(client: Client) -> None:
    path = await create(client, 10)
    body = b"abc"
    right = "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
    wrong = "sha1 " + base64.b64encode(hashlib.sha1(b"xyz").digest()).decode()
    for pair in ([right, wrong], [wrong, right], [right, right]):
        resp = await client.patch(
            path,
            data=body,
            headers=[
                *TUS.items(),
                *OCTET.items(),
                ("Upload-Offset", "0"),
                *(("Upload-Checksum", c) for c in pair),
            ],
        )
        await refused(resp, "Upload-Checksum")
    assert await offset_of(client, path) == "0"
    # Sent once, the same checksum is taken.
    assert (await patch(client, path, 0, body, **{"Upload-Checksum": right})).status == 204


async def test_a_patch_declaring_two_lengths_changes_nothing(client: Client) -> None:
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    resp = await client.patch(
        path,
        data=b"abc",
        headers=[
            *TUS.items(),
            *OCTET.items(),
            ("Upload-Offset", "0"),
            ("Upload-Length", "3"),
            ("Upload-Length", "30"),
        ],
    )
    await refused(resp, "Upload-Length")
    state = await head(client, path)
    assert state.headers["Upload-Offset"] == "0"
    assert state.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in state.headers


@pytest.mark.parametrize("method", ["HEAD", "DELETE", "GET", "OPTIONS"])
async def test_every_method_refuses_a_repeated_header(client: Client, method: str) -> None:
    path = await create(client, 3)
    resp = await client.request(
        method, path, headers=[("Tus-Resumable", "1.0.0"), ("Tus-Resumable", "1.0.0")]
    )
    assert resp.status == 400
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    if method != "HEAD":
        await refused(resp, "Tus-Resumable")
    # The upload is still there (the DELETE did not happen).
    assert await offset_of(client, path) == "0"


async def test_a_repeated_header_is_refused_before_the_token_is_read(
    make_client: Any,
) -> None:
    """As for every malformed tus request: the 400 comes before authentication."""
    client = await make_client(auth="jwt", jwt_secret="x" * 40)
    resp = await client.post(
        "/uploads/", headers=[*TUS.items(), ("Upload-Length", "1"), ("Upload-Length", "2")]
    )
    await refused(resp, "Upload-Length")


# --- the IETF draft -------------------------------------------------------------------------


async def draft_problem(resp: Any, field: str) -> dict[str, Any]:
    doc = await problem(resp, 400)
    assert doc["field"] == field
    assert field in doc["detail"] and "once" in doc["detail"]
    assert "Location" not in resp.headers
    return doc


@pytest.mark.parametrize(
    ("field", "extra"),
    [
        ("Upload-Complete", [("Upload-Complete", "?0"), ("Upload-Complete", "?1")]),
        ("Upload-Complete", [("Upload-Complete", "?1"), ("Upload-Complete", "?1")]),
        (
            "Upload-Draft-Interop-Version",
            [("Upload-Draft-Interop-Version", "8"), ("Upload-Draft-Interop-Version", "6")],
        ),
        ("Upload-Offset", [("Upload-Offset", "0"), ("Upload-Offset", "0")]),
    ],
)
async def test_a_draft_creation_with_a_repeated_field_creates_nothing(
    client: Client, field: str, extra: Headers
) -> None:
    sent = {name for name, _ in extra}
    base = [(k, v) for k, v in {**DRAFT, "Upload-Complete": "?1"}.items() if k not in sent]
    resp = await client.post("/uploads/", data=b"abc", headers=[*base, *extra])
    doc = await draft_problem(resp, field)
    if field == "Upload-Draft-Interop-Version":
        # As for a version the server does not speak: which ones it does.
        assert doc["supported-interop-versions"] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    "lengths", [["3", "30"], ["3", "3"], ["3, 30"], ["30", "3, 3"]], ids=lambda v: "|".join(v)
)
async def test_a_draft_creation_with_several_lengths_ignores_the_field(
    client: Client, lengths: list[str]
) -> None:
    """The draft's own rule for Upload-Length: a value that is not one Integer (several
    included) "MUST cause the entire header field to be ignored"; the request is not
    refused, and the upload's length stays unknown until it completes."""
    resp = await client.post(
        "/uploads/",
        data=b"abc",
        headers=[
            *DRAFT.items(),
            ("Upload-Complete", "?0"),
            *(("Upload-Length", v) for v in lengths),
        ],
    )
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    state = await client.head(location[location.index("/uploads/") :], headers=DRAFT)
    assert state.headers["Upload-Offset"] == "3"
    assert "Upload-Length" not in state.headers


@pytest.mark.parametrize(
    "offsets", [["0", "3"], ["3", "0"], ["3", "3"], ["3, 0"], ["0,3"], ["3", "3, 0"]]
)
async def test_a_draft_append_with_two_offsets_appends_nothing(
    client: Client, offsets: list[str]
) -> None:
    resp = await client.post("/uploads/", data=b"abc", headers={**DRAFT, "Upload-Complete": "?0"})
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    path = location[location.index("/uploads/") :]
    resp = await client.patch(
        path,
        data=b"def",
        headers=[
            *DRAFT.items(),
            *PARTIAL.items(),
            ("Upload-Complete", "?0"),
            *(("Upload-Offset", o) for o in offsets),
        ],
    )
    await draft_problem(resp, "Upload-Offset")
    state = await client.head(path, headers=DRAFT)
    assert state.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("field", ["Repr-Digest", "Content-Digest"])
async def test_a_draft_digest_sent_twice_for_one_algorithm_is_refused(
    client: Client, field: str
) -> None:
    body = b"abc"

    def digest(data: bytes) -> str:
        return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"

    for values in (
        [digest(b"other"), digest(body)],  # RFC 9651 keeps the last one: this one would pass
        [digest(body), digest(b"other")],
        [f"{digest(b'other')}, {digest(body)}"],
        [digest(body), digest(body)],
    ):
        resp = await client.post(
            "/uploads/",
            data=body,
            headers=[
                *DRAFT.items(),
                ("Upload-Complete", "?1"),
                *((field, v) for v in values),
            ],
        )
        doc = await draft_problem(resp, field)
        assert "sha-256" in doc["detail"]
    # Once, the digest is taken; several algorithms may share the field, or its lines.
    sha512 = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    resp = await client.post(
        "/uploads/",
        data=body,
        headers=[*DRAFT.items(), ("Upload-Complete", "?1"), (field, digest(body)), (field, sha512)],
    )
    assert resp.status in (200, 201), await resp.text()
