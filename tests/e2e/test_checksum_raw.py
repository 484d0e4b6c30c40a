"""The checksum extension end to end, with a raw aiohttp client against a real server.

tus-js-client sends no Upload-Checksum, so these requests are written by hand.
"""

from __future__ import annotations

import aiohttp
import pytest
from yarl import URL

from .helpers import (
    OCTET,
    TUS,
    MiB,
    b64digest,
    create,
    download_sha256,
    make_bytes,
    offset_of,
    patch,
    sha256,
)
from .server import ServerProcess

pytestmark = pytest.mark.e2e

ALGORITHMS = ("sha1", "md5", "sha256", "sha512")


async def test_options_advertises_checksums(shared_server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as session, session.options(shared_server.endpoint) as resp:
        assert resp.status == 204
        assert "checksum" in resp.headers["Tus-Extension"].split(",")
        assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) == set(ALGORITHMS)


async def test_every_algorithm_accepts_a_correct_digest(shared_server: ServerProcess) -> None:
    """One chunk per algorithm, each with its correct digest: 204 and the bytes are kept."""
    chunk = 300_001
    data = make_bytes(chunk * len(ALGORITHMS), seed=20)
    async with aiohttp.ClientSession() as session:
        url = await create(session, shared_server.endpoint, len(data))
        for i, algorithm in enumerate(ALGORITHMS):
            body = data[i * chunk : (i + 1) * chunk]
            resp = await patch(
                session,
                url,
                i * chunk,
                body,
                **{"Upload-Checksum": f"{algorithm} {b64digest(algorithm, body)}"},
            )
            assert resp.status == 204, (algorithm, resp.status)
            assert resp.headers["Upload-Offset"] == str((i + 1) * chunk)
    assert await download_sha256(url) == (len(data), sha256(data))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_wrong_digest_is_460_and_nothing_is_kept(
    shared_server: ServerProcess, algorithm: str
) -> None:
    data = make_bytes(2 * MiB + 17, seed=21)
    first, second = data[:MiB], data[MiB:]
    async with aiohttp.ClientSession() as session:
        url = await create(session, shared_server.endpoint, len(data))
        resp = await patch(
            session,
            url,
            0,
            first,
            **{"Upload-Checksum": f"{algorithm} {b64digest(algorithm, first)}"},
        )
        assert resp.status == 204

        # the digest of other bytes (one bit flipped), then of a truncated body
        corrupted = bytes([second[0] ^ 1]) + second[1:]
        for wrong in (b64digest(algorithm, corrupted), b64digest(algorithm, second[:-1])):
            resp = await patch(
                session, url, MiB, second, **{"Upload-Checksum": f"{algorithm} {wrong}"}
            )
            assert resp.status == 460, await resp.text()
            assert await offset_of(session, url) == MiB

        # the same chunk with the right digest goes through at the unchanged offset
        resp = await patch(
            session,
            url,
            MiB,
            second,
            **{"Upload-Checksum": f"{algorithm} {b64digest(algorithm, second)}"},
        )
        assert resp.status == 204
        assert resp.headers["Upload-Offset"] == str(len(data))
    assert await download_sha256(url) == (len(data), sha256(data))


@pytest.mark.parametrize(
    "header",
    [
        "crc32 AAAAAA==",
        "SHA1 " + b64digest("sha1", b"abc"),  # algorithm names are lowercase
        "sha3-256 " + b64digest("sha3_256", b"abc"),
        "sha1",
        "sha1 not*base64!",
        "sha1 " + b64digest("sha1", b"abc") + " extra",
    ],
    ids=["crc32", "uppercase", "sha3", "no-digest", "bad-base64", "three-parts"],
)
async def test_unsupported_or_malformed_checksum_is_400(
    shared_server: ServerProcess, header: str
) -> None:
    body = b"abc"
    async with aiohttp.ClientSession() as session:
        url = await create(session, shared_server.endpoint, 6)
        resp = await patch(session, url, 0, body, **{"Upload-Checksum": header})
        assert resp.status == 400, (header, resp.status)
        assert await offset_of(session, url) == 0
        resp = await patch(session, url, 0, body + body)
        assert resp.status == 204


async def test_checksum_on_creation_with_upload(shared_server: ServerProcess) -> None:
    body = make_bytes(70_000, seed=22)
    headers = {**OCTET, "Upload-Length": str(len(body))}
    async with aiohttp.ClientSession() as session:
        # correct: created with the body in it
        async with session.post(
            shared_server.endpoint,
            data=body,
            headers={**headers, "Upload-Checksum": "sha256 " + b64digest("sha256", body)},
        ) as resp:
            assert resp.status == 201
            assert resp.headers["Upload-Offset"] == str(len(body))
            good = str(resp.url.join(URL(resp.headers["Location"])))
        # wrong: 460, but the upload exists (Location) and holds nothing
        async with session.post(
            shared_server.endpoint,
            data=body,
            headers={**headers, "Upload-Checksum": "md5 " + b64digest("md5", body[1:])},
        ) as resp:
            assert resp.status == 460
            bad = str(resp.url.join(URL(resp.headers["Location"])))
        assert await offset_of(session, bad) == 0
        async with session.head(good, headers=TUS) as resp:
            assert resp.headers["Upload-Offset"] == str(len(body))
    assert await download_sha256(good) == (len(body), sha256(body))
