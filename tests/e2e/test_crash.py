"""Crash safety: SIGKILL the server mid-PATCH or right after an acknowledged PATCH, restart it
on the same data directory, and finish the upload from the offset the server reports."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from tusserver.testing import tusserver_command

from .conftest import ServerFactory
from .helpers import (
    OCTET,
    MiB,
    b64digest,
    create,
    download_sha256,
    make_bytes,
    offset_of,
    patch,
    sha256,
)

pytestmark = pytest.mark.e2e

BLOCK = 64 * 1024


class SlowBody:
    """A chunked request body streamed slowly from memory, counting what it handed over."""

    def __init__(self, data: bytes, start: int, *, signal_at: int, delay: float = 0.002) -> None:
        self._data = memoryview(data)
        self._pos = start
        self.start = start
        self.signal_at = signal_at
        self.delay = delay
        self.reached = asyncio.Event()

    @property
    def handed_over(self) -> int:
        """Bytes given to aiohttp so far (an upper bound of what the server received)."""
        return self._pos - self.start

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self._pos < len(self._data):
            piece = bytes(self._data[self._pos : self._pos + BLOCK])
            # counted before it is handed over: handed_over never undercounts
            self._pos += len(piece)
            if self.handed_over >= self.signal_at:
                self.reached.set()
            yield piece
            await asyncio.sleep(self.delay)


async def _slow_patch(url: str, offset: int, body: SlowBody, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            url,
            data=body.__aiter__(),
            headers={**OCTET, "Upload-Offset": str(offset), **headers},
        ) as resp,
    ):
        return resp.status


async def _finish(url: str, data: bytes, offset: int, piece: int = 16 * MiB) -> None:
    """PATCH the rest of ``data`` from ``offset`` in pieces; asserts every 204."""
    async with aiohttp.ClientSession() as session:
        while offset < len(data):
            chunk = data[offset : offset + piece]
            resp = await patch(session, url, offset, chunk)
            assert resp.status == 204, (resp.status, await resp.text())
            offset += len(chunk)
            assert resp.headers["Upload-Offset"] == str(offset)


async def _offset(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        return await offset_of(session, url)


async def _kill_mid_patch(
    server_factory: ServerFactory, data: bytes, start: int, kill_after: int, headers: dict[str, str]
) -> tuple[str, int]:
    """Create an upload of ``data``, PATCH ``data[:start]`` normally, then stream the rest slowly
    and SIGKILL the server after ``kill_after`` bytes. Restarts it; returns (url, bytes sent)."""
    srv = server_factory()
    async with aiohttp.ClientSession() as session:
        url = await create(session, srv.endpoint, len(data))
        if start:
            resp = await patch(session, url, 0, data[:start])
            assert resp.status == 204
    body = SlowBody(data, start, signal_at=kill_after)
    task = asyncio.create_task(_slow_patch(url, start, body, headers))
    reached = asyncio.create_task(body.reached.wait())
    done, _ = await asyncio.wait({task, reached}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert reached in done, f"the PATCH ended before {kill_after} bytes were sent: {task}"
    srv.kill()
    sent = body.handed_over  # nothing handed over after this reached the dead server
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 30)
    srv.start()
    return url, sent


async def test_sigkill_mid_patch_then_resume(server_factory: ServerFactory) -> None:
    size = 64 * MiB
    data = make_bytes(size, seed=30)
    start = 3 * MiB + 5
    url, sent = await _kill_mid_patch(server_factory, data, start, 6 * MiB, {})
    offset = await _offset(url)
    # acknowledged bytes survive; bytes never sent cannot be there; and the server stored the
    # crashed PATCH's bytes as they came (it had received megabytes), not only at its end
    assert start < offset <= start + sent, (start, offset, sent)
    await _finish(url, data, offset)
    assert await download_sha256(url) == (size, sha256(data))


async def test_sigkill_mid_checksummed_patch_keeps_nothing_of_it(
    server_factory: ServerFactory,
) -> None:
    """A chunk with Upload-Checksum is all or nothing, across a crash too."""
    size = 24 * MiB
    data = make_bytes(size, seed=31)
    start = MiB
    checksum = "sha256 " + b64digest("sha256", data[start:])
    url, _ = await _kill_mid_patch(
        server_factory, data, start, 4 * MiB, {"Upload-Checksum": checksum}
    )
    assert await _offset(url) == start
    # the rest, again with a checksum (the crashed request's staging file must not matter)
    async with aiohttp.ClientSession() as session:
        resp = await patch(session, url, start, data[start:], **{"Upload-Checksum": checksum})
        assert resp.status == 204, await resp.text()
        assert resp.headers["Upload-Offset"] == str(size)
    assert await download_sha256(url) == (size, sha256(data))


async def test_sigkill_after_acknowledged_patch(server_factory: ServerFactory) -> None:
    """Every acknowledged offset survives a SIGKILL that follows the 204 at once."""
    size = 16 * MiB + 9
    data = make_bytes(size, seed=32)
    srv = server_factory()
    async with aiohttp.ClientSession() as session:
        url = await create(session, srv.endpoint, size, **{"Upload-Metadata": "filename Y3Jhc2g="})
    acknowledged = 0
    for end in (5 * MiB + 1, 12 * MiB, size):
        async with aiohttp.ClientSession() as session:
            resp = await patch(session, url, acknowledged, data[acknowledged:end])
            assert resp.status == 204
            acknowledged = int(resp.headers["Upload-Offset"])
            assert acknowledged == end
        srv.kill()
        srv.start()
        assert await _offset(url) >= acknowledged
        assert await _offset(url) == acknowledged
    # the finish was acknowledged before the last kill: the upload is complete and readable
    async with aiohttp.ClientSession() as session, session.head(url, headers=OCTET) as resp:
        assert resp.headers["Upload-Length"] == str(size)
        assert "Upload-Expires" not in resp.headers
    assert await download_sha256(url) == (size, sha256(data))


async def test_sigkill_after_creation_with_upload(server_factory: ServerFactory) -> None:
    """creation-with-upload, with fsync on: the first chunk is there after a crash."""
    size = 3 * MiB
    data = make_bytes(size, seed=33)
    srv = server_factory({"TUSSERVER_FSYNC": "1"})
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            srv.endpoint,
            data=io.BytesIO(data[:MiB]),
            headers={**OCTET, "Upload-Length": str(size)},
        ) as resp,
    ):
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == str(MiB)
        url = resp.headers["Location"]
    srv.kill()
    srv.start()
    assert await _offset(url) == MiB
    await _finish(url, data, MiB)
    assert await download_sha256(url) == (size, sha256(data))


async def test_graceful_restart_keeps_partial_upload(server_factory: ServerFactory) -> None:
    """SIGTERM: the server exits cleanly (code 0) and the upload goes on after the restart."""
    size = 2 * MiB
    data = make_bytes(size, seed=34)
    srv = server_factory()
    async with aiohttp.ClientSession() as session:
        url = await create(session, srv.endpoint, size)
        assert (await patch(session, url, 0, data[:MiB])).status == 204
    assert srv.terminate() == 0
    srv.start()
    assert await _offset(url) == MiB
    await _finish(url, data, MiB)
    assert await download_sha256(url) == (size, sha256(data))


async def _file_status(session: aiohttp.ClientSession, url: str) -> str | None:
    async with session.head(url, headers=OCTET) as resp:
        assert resp.status == 200, (url, resp.status)
        assert resp.headers["Upload-Offset"] == resp.headers["Upload-Length"]
        return resp.headers.get("X-File-Status")


@pytest.mark.parametrize("fsync", ["false", "true"])
async def test_sigkill_during_burst_of_small_uploads(
    server_factory: ServerFactory, fsync: str
) -> None:
    """SIGKILL while many small creation-with-upload requests arrive and their files are being
    committed: after a restart no acknowledged upload is lost, and every upload acknowledged
    as finished becomes a committed file with its bytes (those committed before the kill
    included). The default 15-minute lease: the files the killed process held are taken
    back by its successor at once (tusserver.pipeline.holders), not when the leases run out.

    The catalog's writes of concurrent requests share transactions (group commit: inline
    without fsync, on the catalog's thread with it): a request is answered only once its
    group has committed."""
    size, count, kill_after = 4096, 400, 120
    env = {"TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2", "TUSSERVER_FSYNC": fsync}
    srv = server_factory(env)
    payloads = {i: make_bytes(size, seed=1000 + i) for i in range(count)}
    acknowledged: dict[str, bytes] = {}
    enough = asyncio.Event()
    sem = asyncio.Semaphore(32)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with sem:
            if enough.is_set():
                return
            async with session.post(
                srv.endpoint,
                data=payloads[i],
                headers={**OCTET, "Upload-Length": str(size)},
            ) as resp:
                if resp.status != 201:
                    return
                assert resp.headers["Upload-Offset"] == str(size)
                url = str(resp.url.join(URL(resp.headers["Location"])))
            acknowledged[url] = payloads[i]
            if len(acknowledged) >= kill_after:
                enough.set()

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session, i)) for i in range(count)]
        await asyncio.wait_for(enough.wait(), 60)
        srv.kill()
        await asyncio.gather(*tasks, return_exceptions=True)  # in flight: refused or cut
    assert len(acknowledged) >= kill_after
    srv.start()
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + 60
        pending = set(acknowledged)
        while pending:
            for url in sorted(pending):
                if await _file_status(session, url) == "committed":
                    pending.discard(url)
            if not pending:
                break
            assert asyncio.get_running_loop().time() < deadline, f"not committed: {pending}"
            await asyncio.sleep(0.3)
    for url, data in acknowledged.items():
        assert await download_sha256(url) == (size, sha256(data))


async def test_creations_killed_before_their_rows_are_swept(server_factory: ServerFactory) -> None:
    """SIGKILL while creations wait for the catalog (its write lock held by another process,
    as a catalog that is slow to answer would keep them): each has its empty file in the
    chunk store and no row. The files stay through a restart (they are younger than
    ``orphan_grace``); once older (their times set back two hours), ``tusserver sweep``
    removes them and nothing that has a row."""
    srv = server_factory()
    uploads = srv.data_dir / "uploads"
    async with aiohttp.ClientSession() as session:
        kept = {(await create(session, srv.endpoint, 3)).rsplit("/", 1)[1] for _ in range(2)}
    assert {p.name for p in uploads.iterdir()} == kept
    catalog = sqlite3.connect(srv.data_dir / "tusserver.db", timeout=10, isolation_level=None)
    try:
        catalog.execute("BEGIN IMMEDIATE")  # the write lock: every insert waits for it
        async with aiohttp.ClientSession() as session:
            creating = [asyncio.create_task(create(session, srv.endpoint, 3)) for _ in range(8)]
            deadline = time.monotonic() + 20
            while len(list(uploads.iterdir())) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert len(list(uploads.iterdir())) == 10, srv.log()
            srv.kill()
            outcomes = await asyncio.gather(*creating, return_exceptions=True)
        assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes
    finally:
        catalog.rollback()
    rows = {r[0] for r in catalog.execute("SELECT id FROM uploads")}
    catalog.close()
    assert rows == kept
    orphans = {p.name for p in uploads.iterdir()} - kept
    assert len(orphans) == 8

    srv.start()  # a restart does not touch them: they are within their grace
    async with aiohttp.ClientSession() as session:
        for upload_id in kept:
            assert await offset_of(session, f"{srv.endpoint}{upload_id}") == 0
    assert {p.name for p in uploads.iterdir()} == kept | orphans

    two_hours_ago = time.time() - 7200
    for path in uploads.iterdir():
        os.utime(path, (two_hours_ago, two_hours_ago))
    sweep = await asyncio.create_subprocess_exec(
        *tusserver_command(), "--data-dir", str(srv.data_dir), "sweep",
        env=srv.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(sweep.communicate(), 60)
    assert sweep.returncode == 0, out.decode()
    assert "removed 8 orphaned upload(s)" in out.decode()
    assert {p.name for p in uploads.iterdir()} == kept
    async with aiohttp.ClientSession() as session:
        for upload_id in kept:
            url = f"{srv.endpoint}{upload_id}"
            assert (await patch(session, url, 0, b"abc")).status == 204
