"""tuspy (the official Python client) against a real server process."""

from __future__ import annotations

import io

import pytest
import requests
from tusclient import client

from .helpers import (
    TUS,
    MiB,
    download_sha256,
    get_committed_sync,
    make_bytes,
    parse_metadata,
    sha256,
)
from .server import ServerProcess

pytestmark = pytest.mark.e2e


def _head(url: str) -> requests.Response:
    resp = requests.head(url, headers=TUS, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, 1024),
        (1, 1024),
        (MiB + 7, 256 * 1024),
        (20 * MiB + 3, 4 * MiB),
    ],
    ids=["empty", "one-byte", "1MiB+7", "20MiB+3"],
)
async def test_upload_sizes(shared_server: ServerProcess, size: int, chunk_size: int) -> None:
    data = make_bytes(size, seed=1)
    tus = client.TusClient(shared_server.endpoint)
    uploader = tus.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=chunk_size,
        metadata={"filename": f"file-{size}.bin"},
    )
    uploader.upload()
    assert uploader.url is not None
    assert uploader.url.startswith(shared_server.endpoint)
    assert uploader.offset == size

    resp = _head(uploader.url)
    assert resp.headers["Upload-Offset"] == str(size)
    assert resp.headers["Upload-Length"] == str(size)
    assert "Upload-Expires" not in resp.headers  # finished uploads do not expire

    assert await download_sha256(uploader.url) == (size, sha256(data))


async def test_upload_with_tuspy_checksums(shared_server: ServerProcess) -> None:
    """tuspy's upload_checksum=True sends ``Upload-Checksum: sha1 ...`` with every chunk."""
    data = make_bytes(3 * MiB + 11, seed=2)
    uploader = client.TusClient(shared_server.endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=MiB, upload_checksum=True
    )
    uploader.upload()
    assert uploader.offset == len(data)
    assert await download_sha256(uploader.url) == (len(data), sha256(data))


async def test_async_uploader(shared_server: ServerProcess) -> None:
    data = make_bytes(2 * MiB + 1, seed=3)
    uploader = client.TusClient(shared_server.endpoint).async_uploader(
        file_stream=io.BytesIO(data), chunk_size=512 * 1024
    )
    await uploader.upload()
    assert uploader.offset == len(data)
    assert await download_sha256(uploader.url) == (len(data), sha256(data))


def test_metadata_round_trip(shared_server: ServerProcess) -> None:
    metadata = {
        "filename": "résumé \u2013 日本語 😀.pdf",
        "filetype": "application/pdf",
        "empty": "",
        "long": "x" * 2000,
        "symbols": "a,b c=d;e\"f'g\\h\n\t",
    }
    data = b"metadata test"
    uploader = client.TusClient(shared_server.endpoint).uploader(
        file_stream=io.BytesIO(data), metadata=metadata
    )
    uploader.upload()

    got = parse_metadata(_head(uploader.url).headers["Upload-Metadata"])
    assert got == {k: v.encode("utf-8") for k, v in metadata.items()}

    resp = get_committed_sync(uploader.url)
    assert resp.status_code == 200
    assert resp.content == data


def test_metadata_non_utf8_bytes_round_trip(shared_server: ServerProcess) -> None:
    """Values are bytes: latin-1 'é' is b'\\xe9', not valid UTF-8, and must come back as is."""
    metadata = {"name": "café ñ ÿ", "raw": "\xff\xfe\x00\x01"}
    uploader = client.TusClient(shared_server.endpoint).uploader(
        file_stream=io.BytesIO(b"x"), metadata=metadata, metadata_encoding="latin-1"
    )
    uploader.upload()
    got = parse_metadata(_head(uploader.url).headers["Upload-Metadata"])
    assert got == {k: v.encode("latin-1") for k, v in metadata.items()}


async def test_resume_with_new_uploader(shared_server: ServerProcess) -> None:
    chunk = 256 * 1024
    data = make_bytes(2 * MiB + 5, seed=4)
    tus = client.TusClient(shared_server.endpoint)
    first = tus.uploader(file_stream=io.BytesIO(data), chunk_size=chunk)
    for _ in range(3):
        first.upload_chunk()
    assert first.offset == 3 * chunk
    url = first.url
    assert int(_head(url).headers["Upload-Offset"]) == 3 * chunk
    # the upload is not finished: it cannot be downloaded yet
    assert requests.get(url, timeout=10).status_code == 409

    # A new process would know only the URL: a new client and uploader resume from it.
    second = client.TusClient(shared_server.endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=chunk, url=url
    )
    assert second.offset == 3 * chunk  # from HEAD
    second.upload()
    assert second.url == url
    assert second.offset == len(data)
    assert await download_sha256(url) == (len(data), sha256(data))


async def test_resume_after_server_restart(server: ServerProcess) -> None:
    data = make_bytes(MiB + 100, seed=5)
    tus = client.TusClient(server.endpoint)
    first = tus.uploader(file_stream=io.BytesIO(data), chunk_size=300_000)
    first.upload_chunk()
    first.upload_chunk()
    server.restart()
    second = tus.uploader(file_stream=io.BytesIO(data), chunk_size=300_000, url=first.url)
    assert second.offset == 600_000
    second.upload()
    assert await download_sha256(first.url) == (len(data), sha256(data))
