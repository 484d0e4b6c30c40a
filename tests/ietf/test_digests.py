"""Integrity digests (RFC 9530) on draft uploads: Content-Digest per request, Repr-Digest for
the whole representation."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage_backends.base import Finisher, UnfinishedReader
from tests.app_fixtures import TUS
from tests.ietf.helpers import (
    DRAFT,
    INCONSISTENT_LENGTH,
    PARTIAL,
    Client,
    append,
    create,
    created,
    digest,
    head,
    path_of,
    problem,
)
from tusserver.app import RUNTIME


async def test_matching_content_digest_is_appended(client: Client) -> None:
    path = await created(client, b"abc", **{"Content-Digest": digest("sha-256", b"abc")})
    resp = await append(client, path, 3, b"def", **{"Content-Digest": digest("sha-512", b"def")})
    assert resp.status == 204
    both = digest("sha-256", b"ghi") + ", " + digest("sha-512", b"ghi")
    assert (await append(client, path, 6, b"ghi", **{"Content-Digest": both})).status == 204
    assert (await head(client, path)).headers["Upload-Offset"] == "9"


async def test_content_digest_mismatch_appends_nothing(client: Client) -> None:
    """Content digests: "If the digests don't match the server SHOULD consider the transfer
    failed, not append the content to the upload resource, and signal the failure"."""
    path = await created(client, b"abc")
    resp = await append(client, path, 3, b"def", **{"Content-Digest": digest("sha-256", b"xyz")})
    doc = await problem(resp, 400)
    assert (doc["field"], doc["algorithm"]) == ("Content-Digest", "sha-256")
    assert resp.headers["Upload-Offset"] == "3"
    assert (await head(client, path)).headers["Upload-Offset"] == "3"
    # The upload goes on.
    assert (await append(client, path, 3, b"def", complete=True)).status == 200


async def test_second_content_digest_is_checked_too(client: Client) -> None:
    path = await created(client, b"abc")
    both = digest("sha-256", b"def") + ", " + digest("sha-512", b"nope")
    doc = await problem(await append(client, path, 3, b"def", **{"Content-Digest": both}), 400)
    assert doc["algorithm"] == "sha-512"
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_content_digest_mismatch_on_creation(client: Client) -> None:
    resp = await create(
        client, b"abc", complete=True, **{"Content-Digest": digest("sha-256", b"abd")}
    )
    await problem(resp, 400)
    # The upload exists (the 104 announced it): empty, incomplete, resumable.
    state = await head(client, path_of(resp.headers["Location"]))
    assert (state.headers["Upload-Offset"], state.headers["Upload-Complete"]) == ("0", "?0")


async def test_unknown_digest_algorithms_are_ignored(client: Client) -> None:
    path = await created(client, b"abc", **{"Content-Digest": "md5=:AAAA:, crc32c=:AAAAAA==:"})
    assert (await head(client, path)).headers["Upload-Offset"] == "3"


async def test_repr_digest_in_one_request(client: Client) -> None:
    resp = await create(
        client, b"whole", complete=True, **{"Repr-Digest": digest("sha-256", b"whole")}
    )
    assert (resp.status, resp.headers["Upload-Complete"]) == (201, "?1")


async def test_repr_digest_mismatch_in_one_request_fails_the_upload(client: Client) -> None:
    """Representation digests: "If the digests don't match, the server SHOULD consider the
    upload failed, not process the representation further, and signal the failure"."""
    resp = await create(
        client, b"whole", complete=True, **{"Repr-Digest": digest("sha-512", b"other")}
    )
    doc = await problem(resp, 400)
    assert (doc["field"], doc["algorithm"]) == ("Repr-Digest", "sha-512")
    await problem(await head(client, path_of(resp.headers["Location"])), 410)


async def test_repr_digest_from_creation_checked_at_completion(client: Client) -> None:
    data = b"0123456789"
    path = await created(client, data[:4], **{"Repr-Digest": digest("sha-256", data)})
    assert (await append(client, path, 4, data[4:8])).status == 204
    resp = await append(client, path, 8, data[8:], complete=True)
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")


async def _file_status(client: Client, path: str) -> str | None:
    for _ in range(200):
        status = (await client.head(path, headers=TUS)).headers.get("X-File-Status")
        if status in ("committed", "rejected", "failed"):
            return status
        await asyncio.sleep(0.1)
    return None


async def test_repr_digest_mismatch_across_requests(
    client: Client, storage_settings: dict[str, str]
) -> None:
    data = b"0123456789"
    path = await created(client, data[:4], **{"Repr-Digest": digest("sha-256", b"different")})
    resp = await append(client, path, 4, data[4:], complete=True)
    if storage_settings.get("chunk_store") == "s3":
        # S3 cannot read an unfinished upload back: the upload completes and the pipeline's
        # checksum validator (the digest is kept as the sha256 metadata) rejects the file.
        assert resp.status == 200
        assert await _file_status(client, path) == "rejected"
        return
    doc = await problem(resp, 400)
    assert doc["field"] == "Repr-Digest"
    await problem(await head(client, path), 410)


async def test_repr_digest_sent_with_the_last_append(client: Client) -> None:
    path = await created(client, b"abc")
    resp = await append(
        client, path, 3, b"def", complete=True, **{"Repr-Digest": digest("sha-256", b"abcdef")}
    )
    assert resp.status == 200


async def test_repr_digest_kept_for_the_pipeline(client: Client) -> None:
    path = await created(client, b"abc", **{"Repr-Digest": digest("sha-256", b"abc")})
    meta = (await client.head(path, headers=TUS)).headers["Upload-Metadata"]
    pairs = dict(p.split(" ") for p in meta.split(","))
    expected = digest("sha-256", b"abc").split(":")[1]
    assert base64.b64decode(pairs["sha256"]).decode() == expected


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
async def test_repr_digest_is_checked_when_the_length_completes_the_upload(
    client: Client, storage_settings: dict[str, str], algorithm: str
) -> None:
    """Reaching the declared length completes the upload (Upload-Complete: ?0 on the last
    append, as clients completing by length send): the representation is complete then, and
    its digest is compared ("If the digests don't match, the server SHOULD consider the
    upload failed")."""
    path = await created(
        client, b"", **{"Upload-Length": "3", "Repr-Digest": digest(algorithm, b"xyz")}
    )
    resp = await append(client, path, 0, b"abc")
    doc = await problem(resp, 400)
    assert doc["field"] == "Repr-Digest"
    await problem(await head(client, path), 410)
    # With the right digest the same request completes the upload.
    path = await created(
        client, b"", **{"Upload-Length": "3", "Repr-Digest": digest(algorithm, b"abc")}
    )
    resp = await append(client, path, 0, b"abc")
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")


async def test_requests_that_cannot_complete_the_upload_read_nothing_back(
    client: Client,
) -> None:
    """Comparing a Repr-Digest reads back the bytes stored so far: only for a request that
    completes the upload. Content of unknown length that does not say so, and a request at
    another offset than the stored one (refused anyway), read nothing: otherwise each such
    request, a few hundred bytes, would cost a read and a hash of the whole upload."""
    data = b"x" * 300_000
    path = await created(client, data, **{"Upload-Length": str(len(data) + 1)})
    service = client.app[RUNTIME].uploads
    read = service.read
    asked: list[int] = []

    def counting(upload_id: str, start: int, length: int) -> Any:
        asked.append(length)
        return read(upload_id, start, length)

    service.read = counting  # type: ignore[method-assign]

    async def nothing() -> AsyncIterator[bytes]:
        for _ in ():
            yield b""

    wrong = {"Repr-Digest": digest("sha-256", b"whatever")}
    for _ in range(3):
        resp = await client.patch(
            path,
            data=nothing(),
            headers={
                **DRAFT,
                **PARTIAL,
                "Upload-Offset": str(len(data)),
                "Upload-Complete": "?0",
                **wrong,
            },
        )
        assert resp.status < 500, await resp.text()
    resp = await append(client, path, 5, b"y", complete=True, **wrong)
    assert resp.status == 409
    assert asked == []
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(data))


async def test_completing_requests_refused_again_and_again_read_the_upload_back_once(
    client: Client,
) -> None:
    """A request that completes the upload with a Repr-Digest has the stored bytes read
    back and hashed. Refused (here its Content-Digest is wrong: 400, nothing appended, the
    upload intact), it can be sent again and again, one after the other or all at once:
    the stored bytes are read once, not once per 1-byte request."""
    data = b"s" * 1_000_000
    path = await created(client, data)
    service = client.app[RUNTIME].uploads
    read = service.read
    read_back = 0

    def counting(upload_id: str, start: int, length: int) -> Any:
        async def blocks() -> AsyncIterator[bytes]:
            nonlocal read_back
            async for block in read(upload_id, start, length):
                read_back += len(block)
                yield block

        return blocks()

    service.read = counting  # type: ignore[method-assign]
    headers = {
        "Repr-Digest": digest("sha-256", data + b"x"),
        "Content-Digest": digest("sha-256", b"not x"),
    }

    async def refused() -> dict[str, Any]:
        resp = await append(client, path, len(data), b"x", complete=True, **headers)
        return dict(await problem(resp, 400))

    for _ in range(3):
        assert (await refused()).get("field") == "Content-Digest"
    # At once, each request's body also stops the one before it on the upload (a 400 too).
    await asyncio.gather(*(refused() for _ in range(5)))
    # (S3 cannot read an unfinished upload back: the pipeline's sha-256 check is left.)
    store = client.app[RUNTIME].store
    reads_back = not isinstance(store, Finisher) or isinstance(store, UnfinishedReader)
    assert read_back == (len(data) if reads_back else 0)
    assert (await head(client, path)).headers["Upload-Offset"] == str(len(data))
    # Sent right, the same request completes the upload (the digest over all of it).
    del headers["Content-Digest"]
    resp = await append(client, path, len(data), b"x", complete=True, **headers)
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")
    assert read_back == (len(data) if reads_back else 0)


async def test_a_content_digest_mismatch_speaks_the_version_of_the_request(
    client: Client,
) -> None:
    """Interop version 3 knows Upload-Incomplete only: its failure says the upload is still
    incomplete in that field, not in the Upload-Complete of later versions."""
    v3 = {"Upload-Draft-Interop-Version": "3"}
    resp = await client.post("/uploads/", headers={**v3, "Upload-Incomplete": "?1"})
    assert resp.status == 201, await resp.text()
    path = path_of(resp.headers["Location"])
    bad = digest("sha-256", b"other")
    headers = {**v3, "Upload-Offset": "0", "Upload-Incomplete": "?1", "Content-Digest": bad}
    resp = await client.patch(path, data=b"abc", headers=headers)
    await problem(resp, 400)
    assert "Upload-Complete" not in resp.headers
    assert (resp.headers["Upload-Incomplete"], resp.headers["Upload-Offset"]) == ("?1", "0")


async def test_repr_digest_is_not_checked_before_completion(client: Client) -> None:
    path = await created(client, b"ab", **{"Repr-Digest": digest("sha-256", b"abcd")})
    assert (await append(client, path, 2, b"c")).status == 204
    assert (await append(client, path, 3, b"d", complete=True)).status == 200


@pytest.mark.parametrize(
    "value",
    [
        "sha-256=abc",
        'sha-256="abc"',
        "sha-256",
        "sha-256=:YWJj:",  # 3 bytes: not a sha-256 digest
        "sha-512=:" + base64.b64encode(b"x" * 32).decode() + ":",
        "sha-256=:YWJj",
        "SHA-256=:YWJj:",
        "sha-256=:YWJj:,",
        "garbage!!",
        "sha-256=(:YWJj:)",
    ],
)
@pytest.mark.parametrize("field", ["Content-Digest", "Repr-Digest"])
async def test_malformed_digest_fields(client: Client, field: str, value: str) -> None:
    doc = await problem(await create(client, b"abc", **{field: value}), 400)
    assert field in doc["detail"]
    path = await created(client, b"abc")
    await problem(await append(client, path, 3, b"d", complete=True, **{field: value}), 400)
    assert (await head(client, path)).headers["Upload-Complete"] == "?0"


async def test_content_past_the_length_cancels_the_upload_with_a_content_digest_too(
    client: Client,
) -> None:
    """Content that goes past the length while it is read (no Content-Length) cancels the
    upload ("marking the upload resource invalid"), with a Content-Digest as without: it was
    a plain 413 limit and the upload went on."""
    path = await created(client, b"ab", **{"Upload-Length": "4"})

    async def chunks() -> AsyncIterator[bytes]:
        yield b"cd"
        yield b"efgh"

    resp = await client.patch(
        path,
        data=chunks(),
        headers={
            **DRAFT,
            **PARTIAL,
            "Upload-Offset": "2",
            "Upload-Complete": "?0",
            "Content-Digest": digest("sha-256", b"cdefgh"),
        },
    )
    await problem(resp, 400, INCONSISTENT_LENGTH)
    assert (await head(client, path)).status == 410
    assert (await append(client, path, 2, b"cd")).status == 410
