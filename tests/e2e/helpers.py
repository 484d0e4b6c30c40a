"""Small helpers shared by the e2e tests: source files, digests, downloads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import random
import time
from pathlib import Path

import aiohttp
import requests
from yarl import URL

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}
MiB = 1024 * 1024


def make_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (no runs a store could get right by accident)."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def make_file(path: Path, size: int, seed: int = 0) -> tuple[Path, str]:
    """Write ``size`` pseudo-random bytes to ``path``; returns (path, sha256 hex)."""
    data = make_bytes(size, seed)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64digest(algorithm: str, data: bytes) -> str:
    return base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")


def parse_metadata(header: str) -> dict[str, bytes]:
    """Upload-Metadata as the server sent it, values decoded (a bare key is an empty value)."""
    out: dict[str, bytes] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        out[key] = base64.b64decode(value, validate=True)
    return out


def get_committed_sync(url: str, timeout: float = 30.0) -> requests.Response:
    """GET a finished upload once its file is committed (409 with Retry-After until then)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = requests.get(url, timeout=10)
        if resp.status_code != 409 or "Retry-After" not in resp.headers:
            return resp
        if time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


async def download_sha256(url: str, timeout: float = 30.0) -> tuple[int, str]:
    """GET ``url`` (a finished upload) once its file is committed; returns (bytes received,
    sha256 hex). Asserts 200."""
    h = hashlib.sha256()
    n = 0
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as early:
                if early.status != 409 or "Retry-After" not in early.headers:
                    break
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url) as resp,
    ):
        assert resp.status == 200, f"GET {url}: {resp.status} {await resp.text()}"
        async for block in resp.content.iter_chunked(256 * 1024):
            h.update(block)
            n += len(block)
        assert resp.content_length in (None, n)
    return n, h.hexdigest()


async def head(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    async with session.head(url, headers=TUS) as resp:
        return resp


async def offset_of(session: aiohttp.ClientSession, url: str) -> int:
    """HEAD the upload; asserts 200 and returns Upload-Offset."""
    resp = await head(session, url)
    assert resp.status == 200, f"HEAD {url}: {resp.status}"
    return int(resp.headers["Upload-Offset"])


async def create(session: aiohttp.ClientSession, endpoint: str, length: int, **headers: str) -> str:
    """POST a new upload of ``length`` bytes; returns its absolute URL. Asserts 201."""
    async with session.post(
        endpoint, headers={**TUS, "Upload-Length": str(length), **headers}
    ) as resp:
        assert resp.status == 201, f"POST: {resp.status} {await resp.text()}"
        return str(resp.url.join(URL(resp.headers["Location"])))


async def patch(
    session: aiohttp.ClientSession,
    url: str,
    offset: int,
    body: bytes,
    **headers: str,
) -> aiohttp.ClientResponse:
    """PATCH ``body`` at ``offset`` (with Content-Length); returns the (read) response."""
    async with session.patch(
        url, data=io.BytesIO(body), headers={**OCTET, "Upload-Offset": str(offset), **headers}
    ) as resp:
        await resp.read()
        return resp
