"""Faults of the services the server depends on, while it runs: PostgreSQL restarts and an S3
endpoint that stops answering. The server answers 503 with Retry-After (never a 500, never a
request held for minutes), stays up, and once the service is back the client resumes
byte-exact."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient
from yarl import URL

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


class StallingProxy:
    """A TCP proxy in front of S3 that can stall: while ``stalled``, it accepts connections
    and reads what is sent but passes nothing on, in either direction (a hung S3, a dead
    load balancer)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self.stalled = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.stalled:
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self.stalled:
                continue  # swallowed: the other side waits for an answer that never comes
            dst.write(data)
            await dst.drain()
        dst.close()


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
