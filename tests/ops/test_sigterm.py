"""SIGTERM with uploads in flight: the server drains and exits 0 in time, no acknowledged byte
is lost, and after a restart on the same data directory every client finishes."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.helpers import OCTET, MiB, create, download_sha256, make_bytes, offset_of, sha256

from .conftest import ServerFactory

pytestmark = pytest.mark.e2e

SIZE = 20 * MiB
UPLOADS = 5
SLOW_PIECE = 1 * MiB  # bytes per PATCH before SIGTERM
BLOCK = 64 * 1024
DELAY = 0.004  # between two blocks of a slow PATCH body
#: The server's graceful shutdown deadline (``shutdown_timeout`` in ``tusserver serve``).
SHUTDOWN_DEADLINE = 30.0


async def _slow(data: memoryview) -> AsyncIterator[bytes]:
    for i in range(0, len(data), BLOCK):
        yield bytes(data[i : i + BLOCK])
        await asyncio.sleep(DELAY)


class Client:
    """One upload, streamed slowly in chunked PATCHes; remembers what the server acknowledged."""

    def __init__(self, url: str, data: bytes) -> None:
        self.url = url
        self.data = data
        self.acked = 0  # the largest Upload-Offset of a 204
        self.acked_before_restart = 0
        self.head_after_restart: int | None = None
        self.failures: list[str] = []

    async def run(self, sigterm_sent: asyncio.Event, restarted: asyncio.Event) -> None:
        view = memoryview(self.data)
        offset = 0
        connector = aiohttp.TCPConnector(force_close=True)  # nothing pooled across the restart
        async with aiohttp.ClientSession(connector=connector) as session:
            while offset < len(self.data):
                fast = restarted.is_set()
                piece = view[offset : offset + (SIZE if fast else SLOW_PIECE)]
                try:
                    async with session.patch(
                        self.url,
                        data=io.BytesIO(piece) if fast else _slow(piece),
                        headers={**OCTET, "Upload-Offset": str(offset)},
                    ) as resp:
                        text = await resp.text()
                        if resp.status == 204:
                            offset = int(resp.headers["Upload-Offset"])
                            assert offset == self.acked + len(piece) or fast, (offset, self.acked)
                            self.acked = offset
                            continue
                        failure = f"PATCH at {offset}: {resp.status} {text[:200]}"
                except (aiohttp.ClientError, ConnectionError) as exc:
                    failure = f"PATCH at {offset}: {type(exc).__name__}: {exc}"
                # Only the shutdown may interrupt an upload, and only once.
                assert sigterm_sent.is_set() and not restarted.is_set(), failure
                self.failures.append(failure)
                await restarted.wait()
                self.acked_before_restart = self.acked
                offset = self.head_after_restart = await offset_of(session, self.url)


async def test_sigterm_drains_and_loses_nothing(server_factory: ServerFactory) -> None:
    server = server_factory()
    sources = [make_bytes(SIZE, seed=i) for i in range(UPLOADS)]
    async with aiohttp.ClientSession() as session:
        urls = [await create(session, server.endpoint, SIZE) for _ in sources]
    clients = [Client(url, data) for url, data in zip(urls, sources, strict=True)]
    sigterm_sent, restarted = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.run(sigterm_sent, restarted)) for c in clients]
    try:
        # every client has had PATCHes acknowledged and is streaming the next one
        async with asyncio.timeout(60):
            while not all(c.acked >= 2 * SLOW_PIECE for c in clients):
                for t in tasks:
                    if t.done():
                        t.result()
                await asyncio.sleep(0.02)
        assert all(c.acked < SIZE // 2 for c in clients), "too fast: nothing would be in flight"

        sigterm_sent.set()
        started = time.monotonic()
        code = await asyncio.to_thread(server.terminate, SHUTDOWN_DEADLINE + 10)
        took = time.monotonic() - started
        assert code == 0, f"exit code {code} after {took:.1f} s"

        await asyncio.to_thread(server.start)
        restarted.set()
        async with asyncio.timeout(90):
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    interrupted = [c for c in clients if c.head_after_restart is not None]
    assert interrupted, "the SIGTERM interrupted no upload"
    for c in interrupted:
        assert c.head_after_restart is not None
        assert c.head_after_restart >= c.acked_before_restart, (
            f"{c.url}: acknowledged {c.acked_before_restart}, after restart {c.head_after_restart}"
        )
    for c, data in zip(clients, sources, strict=True):
        assert c.acked == SIZE
        assert await download_sha256(c.url) == (SIZE, sha256(data))
    # Last, so that a slow shutdown does not hide whether bytes were lost: in-flight PATCHes
    # must end promptly (what they received is kept, the clients resume), not hold the
    # process until the deadline.
    assert took < SHUTDOWN_DEADLINE, f"the graceful shutdown took {took:.1f} s"
