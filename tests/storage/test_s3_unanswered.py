"""An S3 endpoint that accepts connections and never answers: every call fails within its
timeouts, however many are made at once (the store's threads are all waiting)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from storage_backends.base import StorageError
from storage_backends.s3 import S3ChunkStore
from storage_backends.s3.settings import S3Settings


@contextlib.asynccontextmanager
async def unanswered_store(read_timeout: float) -> AsyncIterator[S3ChunkStore]:
    """An S3 chunk store whose endpoint accepts connections, reads, and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = S3ChunkStore(
        S3Settings(
            endpoint=f"127.0.0.1:{port}",
            access_key="k",
            secret_key="s" * 16,
            bucket="bucket-unanswered",
            region="us-east-1",
            secure=False,
            connect_timeout=1.0,
            read_timeout=read_timeout,
        )
    )
    try:
        yield store
    finally:
        await store.close()
        for writer in held:
            writer.close()
        server.close()


async def elapsed_of_a_call(store: S3ChunkStore, upload_id: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with contextlib.suppress(StorageError):
        await store.get_offset(upload_id)
    return loop.time() - started


async def test_many_calls_to_a_hung_s3_each_fail_within_the_timeouts() -> None:
    """48 requests at once, the store's 16 threads all waiting: each call fails about as
    fast as a single one, instead of the last ones queueing behind three waves of the others
    (10 s against 3.4 s here; minutes with the default 30 s read timeout)."""
    async with unanswered_store(read_timeout=1.0) as store:
        # One call: three attempts of a 1 s read timeout (and urllib3's backoff).
        single = await elapsed_of_a_call(store, "upload-single")
        took = await asyncio.gather(*(elapsed_of_a_call(store, f"upload{i}") for i in range(48)))
    assert single < 6, single
    assert max(took) < 2 * single, f"single call {single:.1f}s; slowest of 48: {max(took):.1f}s"


async def test_readiness_probes_that_gave_up_do_not_hold_the_s3_threads() -> None:
    """/readyz gives the object store 5 s and answers; the S3 call it abandoned keeps one of
    the store's 16 threads for 3 read timeouts. Probes that gave up must not make the next
    real request wait for their abandoned calls."""
    async with unanswered_store(read_timeout=2.0) as store:
        # 16 probes, each abandoned after 0.2 s as readiness() abandons its check after 5 s.
        for _ in range(16):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await store._objects.open()
        took = await elapsed_of_a_call(store, "upload")
    # On its own this call fails after 3 x 2 s (+ backoff), about 6.4 s.
    assert took < 8, f"the request waited {took:.1f}s behind abandoned probes"
