"""Lock breaking end to end: a PATCH whose client stalls (connection open, no more bytes)
must not hold the upload hostage until the lock timeout (10 s by default)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from yarl import URL

from .helpers import TUS, MiB, b64digest, create, download_sha256, make_bytes, patch, sha256
from .server import ServerProcess

pytestmark = pytest.mark.e2e

#: Well under the default lock_timeout (10 s): the stalled PATCH was asked to let go.
ANSWER_WITHIN = 4.0


class StalledPatch:
    """A raw-socket PATCH that announces ``Content-Length: total`` and stops after ``sent``."""

    def __init__(self, url: str, offset: int, total: int, headers: dict[str, str]) -> None:
        self.url = URL(url)
        self.offset = offset
        self.total = total
        self.headers = headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, body: bytes) -> None:
        assert self.url.host is not None and self.url.port is not None
        self.reader, self.writer = await asyncio.open_connection(self.url.host, self.url.port)
        head = [
            f"PATCH {self.url.raw_path} HTTP/1.1",
            f"Host: {self.url.host}:{self.url.port}",
            "Tus-Resumable: 1.0.0",
            "Content-Type: application/offset+octet-stream",
            f"Upload-Offset: {self.offset}",
            f"Content-Length: {self.total}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
            "",
            "",
        ]
        self.writer.write("\r\n".join(head).encode("latin-1") + body)
        await self.writer.drain()

    async def status(self, timeout: float = 5.0) -> int | None:
        """The status line the server answered the stalled request with (None: closed)."""
        assert self.reader is not None
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        return int(line.split()[1]) if line else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()


async def _timed_head(url: str) -> tuple[float, aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        async with session.head(url, headers=TUS) as resp:
            return time.monotonic() - t0, resp


@pytest.mark.parametrize("start", [0, MiB], ids=["from-0", "from-1MiB"])
async def test_head_breaks_a_stalled_patch(server: ServerProcess, start: int) -> None:
    size = 8 * MiB + 3
    data = make_bytes(size, seed=40)
    async with aiohttp.ClientSession() as session:
        url = await create(session, server.endpoint, size)
        if start:
            assert (await patch(session, url, 0, data[:start])).status == 204

    sent = 3 * MiB + 12_345  # not a multiple of the server's write buffer
    stalled = StalledPatch(url, start, size - start, {})
    try:
        await stalled.send(data[start : start + sent])
        await asyncio.sleep(0.5)  # the server has read everything sent by now

        elapsed, resp = await _timed_head(url)
        assert resp.status == 200
        assert elapsed < ANSWER_WITHIN, f"HEAD waited {elapsed:.1f}s for the stalled PATCH"
        # every byte the stalled request delivered was kept
        offset = int(resp.headers["Upload-Offset"])
        assert offset == start + sent

        # the stalled request was ended with an error, not a 204 it did not earn
        assert await stalled.status() in (None, 400, 409, 423)
    finally:
        await stalled.close()

    async with aiohttp.ClientSession() as session:
        resp = await patch(session, url, offset, data[offset:])
        assert resp.status == 204, await resp.text()
        assert resp.headers["Upload-Offset"] == str(size)
    assert await download_sha256(url) == (size, sha256(data))


async def test_patch_breaks_a_stalled_patch(server: ServerProcess) -> None:
    """A client that knows the offset may PATCH again at once: the new request takes over."""
    size = 4 * MiB
    data = make_bytes(size, seed=41)
    async with aiohttp.ClientSession() as session:
        url = await create(session, server.endpoint, size)
    sent = MiB + 1
    stalled = StalledPatch(url, 0, size, {})
    try:
        await stalled.send(data[:sent])
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            resp = await patch(session, url, sent, data[sent:])
            assert time.monotonic() - t0 < ANSWER_WITHIN
            assert resp.status == 204, await resp.text()
            assert resp.headers["Upload-Offset"] == str(size)
    finally:
        await stalled.close()
    assert await download_sha256(url) == (size, sha256(data))


async def test_stalled_checksummed_patch_is_discarded(server: ServerProcess) -> None:
    """With Upload-Checksum the stalled chunk cannot be verified: none of it is kept."""
    size = 4 * MiB
    data = make_bytes(size, seed=42)
    checksum = "sha1 " + b64digest("sha1", data)
    async with aiohttp.ClientSession() as session:
        url = await create(session, server.endpoint, size)
    stalled = StalledPatch(url, 0, size, {"Upload-Checksum": checksum})
    try:
        await stalled.send(data[: 2 * MiB])
        await asyncio.sleep(0.5)
        elapsed, resp = await _timed_head(url)
        assert resp.status == 200
        assert elapsed < ANSWER_WITHIN
        assert resp.headers["Upload-Offset"] == "0"
    finally:
        await stalled.close()
    async with aiohttp.ClientSession() as session:
        resp = await patch(session, url, 0, data, **{"Upload-Checksum": checksum})
        assert resp.status == 204, await resp.text()
    assert await download_sha256(url) == (size, sha256(data))
