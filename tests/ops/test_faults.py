"""Faults of the services the server depends on, while it runs: PostgreSQL restarts, and an S3
endpoint or a PostgreSQL that stops answering (tests/stalling.py). The server answers 503 with
Retry-After (never a 500, never a request held for minutes), stays up, and once the service is
back the client resumes byte-exact."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.stalling import StalledPostgres, StallingProxy
from tusserver import TusServerConfig, create_app

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}
MiB = 1024 * 1024

Client = TestClient[Any, Any]


@pytest.fixture(autouse=True)
def plain_tracebacks() -> Iterator[None]:
    """Logged exceptions as plain text, as `tusserver serve` logs them: structlog's default
    (rich tracebacks with every local variable, when rich is installed) takes seconds per
    failure, and failures are what these tests cause."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        cache_logger_on_first_use=False,
    )
    yield
    structlog.reset_defaults()


async def _create(client: Client, size: int) -> str:
    resp = await client.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": "filename YS5iaW4="},
    )
    assert resp.status == 201, await resp.text()
    return URL(resp.headers["Location"]).path


async def _offset(client: Client, path: str) -> int:
    resp = await client.head(path, headers=TUS)
    assert resp.status == 200, (resp.status, await resp.text())
    return int(resp.headers["Upload-Offset"])


async def _file_id(client: Client, path: str) -> str:
    for _ in range(200):
        file_id = (await client.head(path, headers=TUS)).headers.get("X-File-Id")
        if file_id:
            return file_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no file for {path}")


async def _download(client: Client, file_path: str, timeout: float = 30) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(file_path)
        if resp.status == 200:
            return await resp.read()
        assert resp.status == 409, (resp.status, await resp.text())
        assert asyncio.get_running_loop().time() < deadline, "the file was never committed"
        await asyncio.sleep(0.1)


async def test_postgres_restart_while_serving(
    aiohttp_client: Any, tmp_path: Path, private_postgres: Any
) -> None:
    """The catalog goes away mid-upload: requests that need it get 503 + Retry-After, the
    health endpoint still answers; once PostgreSQL is back the same server (no restart)
    serves the upload again and the client finishes it byte-exact."""
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=private_postgres.url("tus"),
        auth="none",
        sweep_interval=0,
        pipeline_poll_interval=0.2,
    )
    client: Client = await aiohttp_client(create_app(config))
    data = os.urandom(3 * MiB + 7)
    path = await _create(client, len(data))
    resp = await client.patch(
        path, data=io.BytesIO(data[:MiB]), headers={**OCTET, "Upload-Offset": "0"}
    )
    assert resp.status == 204

    private_postgres.stop_server()
    try:
        for attempt in (
            client.head(path, headers=TUS),
            client.patch(
                path,
                data=io.BytesIO(data[MiB : 2 * MiB]),
                headers={**OCTET, "Upload-Offset": str(MiB)},
            ),
            client.post("/uploads/", headers={**TUS, "Upload-Length": "5"}),
            client.get("/api/v1/files"),
        ):
            resp = await asyncio.wait_for(attempt, 30)
            assert resp.status == 503, (resp.status, await resp.text())
            assert "Retry-After" in resp.headers
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
    finally:
        private_postgres.start_server()

    offset = await _offset(client, path)
    assert offset in (MiB, 2 * MiB)
    resp = await client.patch(
        path, data=io.BytesIO(data[offset:]), headers={**OCTET, "Upload-Offset": str(offset)}
    )
    assert resp.status == 204, await resp.text()
    body = await _download(client, f"/api/v1/file/{await _file_id(client, path)}/content")
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert (await client.get("/readyz")).status == 200


@pytest.fixture
async def stalling_s3(s3_server: Any) -> AsyncIterator[StallingProxy]:
    proxy = StallingProxy(s3_server.endpoint)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_s3_that_stops_answering(
    aiohttp_client: Any, tmp_path: Path, s3_server: Any, stalling_s3: StallingProxy
) -> None:
    """S3 hangs mid-upload (accepts connections, never answers): a PATCH gets 503 with
    Retry-After within the configured timeouts instead of hanging, the server keeps serving
    what does not need S3, /readyz says so; once S3 answers again the client resumes and the
    file is committed byte-exact."""
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}",
        auth="none",
        sweep_interval=0,
        pipeline_poll_interval=0.2,
        chunk_store="s3",
        object_store="s3",
        s3_endpoint=stalling_s3.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_server.bucket,
        s3_secure=False,
        s3_part_size=5 * MiB,
        s3_chunk_prefix=f"stall-{secrets.token_hex(4)}/",
        s3_connect_timeout=1.0,
        s3_read_timeout=1.0,
    )
    client: Client = await aiohttp_client(create_app(config))
    data = os.urandom(11 * MiB + 5)
    path = await _create(client, len(data))
    first = data[: 5 * MiB]
    resp = await client.patch(path, data=io.BytesIO(first), headers={**OCTET, "Upload-Offset": "0"})
    assert resp.status == 204, await resp.text()

    stalling_s3.stalled = True
    started = asyncio.get_running_loop().time()
    resp = await asyncio.wait_for(
        client.patch(
            path,
            data=io.BytesIO(data[5 * MiB : 10 * MiB]),
            headers={**OCTET, "Upload-Offset": str(5 * MiB)},
        ),
        60,
    )
    assert resp.status == 503, (resp.status, await resp.text())
    assert "Retry-After" in resp.headers
    assert asyncio.get_running_loop().time() - started < 30
    assert (await client.get("/healthz")).status == 200
    ready = await asyncio.wait_for(client.get("/readyz"), 30)
    assert ready.status == 503

    stalling_s3.stalled = False
    offset = await _offset(client, path)
    assert offset in (5 * MiB, 10 * MiB)
    resp = await client.patch(
        path, data=io.BytesIO(data[offset:]), headers={**OCTET, "Upload-Offset": str(offset)}
    )
    assert resp.status == 204, await resp.text()
    body = await _download(client, f"/api/v1/file/{await _file_id(client, path)}/content")
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


#: database_timeout of the PostgreSQL stall tests, and what a 503 may take beyond it (a loaded
#: machine; the unlock a PATCH waits for after its catalog write failed, at most 1 s).
PG_DEADLINE = 3.0
PG_MARGIN = 3.5


def _elapsed(started: float) -> float:
    return asyncio.get_running_loop().time() - started


@pytest.mark.postgres
async def test_postgres_that_stops_answering(
    aiohttp_client: Any, tmp_path: Path, stalling_postgres: StalledPostgres
) -> None:
    """PostgreSQL stops answering (connections stay open, nothing comes back): a tus HEAD and
    a PATCH get 503 with Retry-After within database_timeout (not a request held as long as
    it is gone), /readyz says so; a PATCH whose body was stored but whose offset could not be
    recorded gets 503, never an offset. Once PostgreSQL answers again the same server (no
    restart, no poisoned connection left) serves request after request, HEAD gives the
    offset of the bytes really stored, and the client finishes the upload byte-exact."""
    proxy = stalling_postgres.proxy
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=stalling_postgres.url,
        database_timeout=PG_DEADLINE,
        auth="none",
        sweep_interval=0,
        pipeline_poll_interval=0.2,
    )
    client: Client = await aiohttp_client(create_app(config))
    data = os.urandom(3 * MiB + 7)
    path = await _create(client, len(data))
    resp = await client.patch(
        path, data=io.BytesIO(data[:MiB]), headers={**OCTET, "Upload-Offset": "0"}
    )
    assert resp.status == 204, await resp.text()

    attempts: list[Callable[[], Awaitable[ClientResponse]]] = [
        lambda: client.head(path, headers=TUS),
        lambda: client.patch(
            path,
            data=io.BytesIO(data[MiB : 2 * MiB]),
            headers={**OCTET, "Upload-Offset": str(MiB)},
        ),
        lambda: client.post("/uploads/", headers={**TUS, "Upload-Length": "5"}),
    ]
    proxy.stalled = True
    try:
        for attempt in attempts:
            started = asyncio.get_running_loop().time()
            resp = await asyncio.wait_for(attempt(), 60)
            assert resp.status == 503, (resp.status, await resp.text())
            assert resp.headers["Retry-After"].isdigit()
            assert _elapsed(started) < PG_DEADLINE + PG_MARGIN
        assert (await client.get("/healthz")).status == 200
        ready = await asyncio.wait_for(client.get("/readyz"), 30)
        assert ready.status == 503
        assert (await ready.json())["checks"]["database"].startswith("unreachable")
    finally:
        proxy.stalled = False

    # Several requests in a row, each answered at once: no connection of the stall is used.
    for _ in range(12):
        started = asyncio.get_running_loop().time()
        assert await _offset(client, path) == MiB
        assert _elapsed(started) < PG_DEADLINE
    assert (await client.get("/readyz")).status == 200

    # The stall comes while a PATCH's body is being stored: the bytes are kept, the offset
    # cannot be recorded, and the client is told 503, not an offset.
    upload_file = tmp_path / "data" / "uploads" / path.rsplit("/", 1)[1]
    stalled_at: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        chunk = data[MiB : 2 * MiB]
        for i in range(0, MiB // 2, 64 * 1024):
            yield chunk[i : i + 64 * 1024]
        for _ in range(200):  # the server is past its catalog reads, storing the body
            if upload_file.stat().st_size > MiB:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the body never reached the chunk store")
        proxy.stalled = True
        stalled_at.append(asyncio.get_running_loop().time())
        yield chunk[MiB // 2 :]

    try:
        resp = await asyncio.wait_for(
            client.patch(
                path,
                data=body(),
                headers={**OCTET, "Upload-Offset": str(MiB), "Content-Length": str(MiB)},
            ),
            60,
        )
        assert resp.status == 503, (resp.status, await resp.text())
        assert "Upload-Offset" not in resp.headers
        assert "Retry-After" in resp.headers
        assert _elapsed(stalled_at[0]) < PG_DEADLINE + PG_MARGIN
    finally:
        proxy.stalled = False

    offset = await _offset(client, path)
    assert offset == upload_file.stat().st_size == 2 * MiB  # what was stored, all of it
    resp = await client.patch(
        path, data=io.BytesIO(data[offset:]), headers={**OCTET, "Upload-Offset": str(offset)}
    )
    assert resp.status == 204, await resp.text()
    body_read = await _download(client, f"/api/v1/file/{await _file_id(client, path)}/content")
    assert hashlib.sha256(body_read).digest() == hashlib.sha256(data).digest()
    for _ in range(5):
        assert (await client.get("/api/v1/files")).status == 200
