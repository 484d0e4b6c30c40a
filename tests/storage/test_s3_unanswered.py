"""An S3 endpoint that accepts connections and never answers: every call fails within its
timeouts, however many are made at once (the store's threads are all waiting)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from storage_backends.base import StorageError
from storage_backends.s3 import S3ChunkStore
from storage_backends.s3.settings import S3Settings


async def _hung_server() -> tuple[asyncio.base_events.Server, list[Any]]:
    held: list[Any] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass

    return await asyncio.start_server(accept, "127.0.0.1", 0), held


async def test_many_calls_to_a_hung_s3_each_fail_within_the_timeouts() -> None:
    server, held = await _hung_server()
    port = server.sockets[0].getsockname()[1]
    settings = S3Settings(
        endpoint=f"127.0.0.1:{port}",
        access_key="k",
        secret_key="s" * 16,
        bucket="bucket-hunt",
        region="us-east-1",
        secure=False,
        connect_timeout=1.0,
        read_timeout=1.0,
    )
    store = S3ChunkStore(settings)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> float:
        started = loop.time()
        with contextlib.suppress(StorageError):
            await store.get_offset(f"upload{i}")
        return loop.time() - started

    try:
        # One call: three attempts of a 1 s read timeout (and urllib3's backoff).
        single = await one(-1)
        # 48 requests at once (HEADs of 48 clients).
        took = await asyncio.gather(*(one(i) for i in range(48)))
    finally:
        await store.close()
        for w in held:
            w.close()
        server.close()
    assert single < 6, single
    # Each request's S3 call fails as fast as the single one did; none waits for others' to.
    assert max(took) < 2 * single, f"single call {single:.1f}s; slowest of 48: {max(took):.1f}s"


async def test_readiness_probes_that_gave_up_do_not_hold_the_s3_threads() -> None:
    """/readyz gives the object store 5 s (asyncio.timeout) and answers; the S3 call it
    abandoned keeps one of the store's 16 threads for 3 read timeouts. Probes that gave up
    must not make the next real request wait for their abandoned calls."""
    server, held = await _hung_server()
    port = server.sockets[0].getsockname()[1]
    settings = S3Settings(
        endpoint=f"127.0.0.1:{port}",
        access_key="k",
        secret_key="s" * 16,
        bucket="bucket-hunt",
        region="us-east-1",
        secure=False,
        connect_timeout=1.0,
        read_timeout=2.0,
    )
    store = S3ChunkStore(settings)
    objects = store._objects
    loop = asyncio.get_running_loop()
    try:
        # 16 probes, each abandoned after 0.2 s as readiness() abandons its check after 5 s.
        for _ in range(16):
            try:
                async with asyncio.timeout(0.2):
                    await objects.open()
            except TimeoutError:
                pass
        started = loop.time()
        with contextlib.suppress(StorageError):
            await store.get_offset("upload")
        took = loop.time() - started
    finally:
        await store.close()
        for w in held:
            w.close()
        server.close()
    # On its own this call fails after 3 x 2 s (+ backoff), ~6.4 s.
    assert took < 8, f"the request waited {took:.1f}s behind abandoned probes"
