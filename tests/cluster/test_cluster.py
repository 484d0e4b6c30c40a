"""Several stateless instances behind nginx, sharing PostgreSQL and S3 (conftest: ``cluster``).

Each request of an upload may reach another instance: the tests check that the bytes come out
right whatever instance took each chunk, that two instances never write the same upload at
once, that a crashed instance's lock is gone at once, and that the pipelines of all instances
share the commits without doing one twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from tusclient import client

from ..e2e.helpers import (
    OCTET,
    TUS,
    MiB,
    create,
    download_sha256,
    make_bytes,
    make_file,
    offset_of,
    patch,
    sha256,
)
from .conftest import Cluster

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TUS_JS = REPO / "tests" / "e2e" / "tus_js_upload.mjs"

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.eE+-]+)$")


async def _metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on one instance whose labels include ``labels``."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


async def _per_instance(cluster: Cluster, name: str, **labels: str) -> list[float]:
    return list(await asyncio.gather(*(_metric(s.url, name, **labels) for s in cluster.instances)))


def _deltas(before: list[float], after: list[float]) -> list[int]:
    return [int(a - b) for a, b in zip(after, before, strict=True)]


# --------------------------------------------------------------------------------------------
# (a) tuspy through nginx: the chunks of one upload land on several instances


async def test_tuspy_chunks_spread_over_instances(cluster: Cluster) -> None:
    size = 24 * MiB + 5
    data = make_bytes(size, seed=101)
    before = await _per_instance(cluster, "tusserver_http_requests_total", method="PATCH")

    uploader = client.TusClient(cluster.endpoint).uploader(
        file_stream=io.BytesIO(data), chunk_size=5 * MiB, metadata={"filename": "a.bin"}
    )
    await asyncio.to_thread(uploader.upload)
    assert uploader.url is not None
    # Location came from X-Forwarded-*: the client stayed on nginx, never on one instance
    assert uploader.url.startswith(cluster.endpoint), uploader.url
    assert uploader.offset == size

    after = await _per_instance(cluster, "tusserver_http_requests_total", method="PATCH")
    deltas = _deltas(before, after)
    assert sum(deltas) >= 5, deltas  # 24 MiB in 5 MiB chunks
    assert sum(1 for d in deltas if d > 0) >= 2, f"every PATCH went to one instance: {deltas}"

    # every instance sees the same finished upload
    async with aiohttp.ClientSession() as session:
        for i in range(len(cluster.instances)):
            assert await offset_of(session, cluster.on(i, uploader.url)) == size
    assert await download_sha256(uploader.url) == (size, sha256(data))


# --------------------------------------------------------------------------------------------
# (b) tus-js-client through nginx, parallel uploads (concatenation across instances)


async def _tus_js(**args: Any) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (tus-js-client runs under Node.js)")
    if not (REPO / "node_modules" / "tus-js-client" / "package.json").exists():
        pytest.fail("node_modules/tus-js-client is missing: run `npm ci`")
    proc = await asyncio.create_subprocess_exec(
        node,
        str(TUS_JS),
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    detail = (
        f"exit {proc.returncode}\nstdout: {out.decode()[-4000:]}\nstderr: {err.decode()[-4000:]}"
    )
    lines = out.decode().strip().splitlines()
    assert lines, detail
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and "error" not in result, detail
    return result


async def test_tus_js_parallel_uploads(cluster: Cluster, tmp_path: Path) -> None:
    # 3 partial uploads of 6 MiB or more (every part but the last >= 5 MiB: server-side
    # UploadPartCopy), each sent in 2 MiB PATCHes spread over the instances
    size = 18 * MiB + 7
    path, digest = make_file(tmp_path / "b.bin", size, seed=102)
    before = await _per_instance(cluster, "tusserver_http_requests_total", method="PATCH")
    result = await _tus_js(
        endpoint=cluster.endpoint,
        file=str(path),
        chunkSize=2 * MiB,
        parallelUploads=3,
        metadata={"filename": "b.bin"},
    )
    assert result["url"].startswith(cluster.endpoint), result["url"]
    assert sum(1 for m in result["methods"] if m.startswith("POST 201")) == 4  # 3 partial + final
    after = await _per_instance(cluster, "tusserver_http_requests_total", method="PATCH")
    deltas = _deltas(before, after)
    assert sum(1 for d in deltas if d > 0) >= 2, deltas
    assert await download_sha256(result["url"]) == (size, digest)


# --------------------------------------------------------------------------------------------
# (c) two instances never write one upload at once


async def _slow_body(data: bytes, piece: int, delay: float) -> AsyncIterator[bytes]:
    for pos in range(0, len(data), piece):
        yield data[pos : pos + piece]
        await asyncio.sleep(delay)


async def _send_patch(url: str, data: bytes, start_after: float) -> int | None:
    """PATCH all of ``data`` at offset 0, slowly; the status, or None if the connection
    broke (a server that stops a request early may close it while the body still flows)."""
    await asyncio.sleep(start_after)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.patch(
                url,
                data=_slow_body(data, 128 * 1024, 0.01),
                headers={**OCTET, "Upload-Offset": "0", "Content-Length": str(len(data))},
            ) as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, ConnectionError):
        return None


@pytest.mark.parametrize("stagger", [0.0, 0.15, 0.4], ids=["together", "150ms", "400ms"])
async def test_concurrent_patches_on_two_instances_never_interleave(
    cluster: Cluster, stagger: float
) -> None:
    size = 6 * MiB + 17
    a = make_bytes(size, seed=301)
    b = make_bytes(size, seed=302)
    assert a[0] != b[0]  # a prefix of one is never a prefix of the other
    async with aiohttp.ClientSession() as session:
        url = await create(session, cluster.endpoint, size)

    status_a, status_b = await asyncio.gather(
        _send_patch(cluster.on(0, url), a, 0.0), _send_patch(cluster.on(1, url), b, stagger)
    )
    # a writer either got all its bytes in (204), or was refused or stopped
    for status in (status_a, status_b):
        assert status in (None, 204, 400, 409, 423), (status_a, status_b)
    assert (status_a, status_b) != (204, 204)

    async with aiohttp.ClientSession() as session:
        offset = await offset_of(session, cluster.on(2, url))
        assert 0 <= offset <= size
        if offset < size:  # complete it with a's bytes (through the third instance)
            resp = await patch(session, cluster.on(2, url), offset, a[offset:])
            assert resp.status == 204, await resp.text()
        for _ in range(300):  # served once the pipeline has committed it (409 until then)
            async with session.get(cluster.on(2, url)) as resp:
                if resp.status == 409 and "Retry-After" in resp.headers:
                    await asyncio.sleep(0.1)
                    continue
                assert resp.status == 200
                stored = await resp.read()
                break
    assert len(stored) == size
    head = stored[:offset]
    # what the two writers left is the beginning of exactly one of them
    assert head in (a[:offset], b[:offset]), (
        f"offset {offset}: the stored bytes mix both writers "
        f"(statuses {status_a}, {status_b}; first byte a={a[0]} b={b[0]} stored={stored[0]})"
    )
    assert stored[offset:] == a[offset:]


# --------------------------------------------------------------------------------------------
# (d) an instance dies mid-PATCH: its lock is gone, another instance resumes


class _CountingBody:
    BLOCK = 64 * 1024

    def __init__(self, data: bytes, signal_at: int) -> None:
        self._data = data
        self.sent = 0
        self._signal_at = signal_at
        self.reached = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < len(self._data):
            piece = self._data[self.sent : self.sent + self.BLOCK]
            self.sent += len(piece)  # counted before it is handed over: never undercounts
            if self.sent >= self._signal_at:
                self.reached.set()
            yield piece
            await asyncio.sleep(0.002)


async def test_instance_killed_mid_patch_upload_resumes_elsewhere(cluster: Cluster) -> None:
    size = 16 * MiB + 3
    data = make_bytes(size, seed=401)
    start = MiB + 11
    victim = cluster.instances[0]
    async with aiohttp.ClientSession() as session:
        url = await create(session, cluster.endpoint, size)
        resp = await patch(session, cluster.on(0, url), 0, data[:start])
        assert resp.status == 204

    body = _CountingBody(data[start:], signal_at=7 * MiB)

    async def slow_patch() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.patch(
                cluster.on(0, url),
                data=body.__aiter__(),
                headers={**OCTET, "Upload-Offset": str(start)},
            ) as resp,
        ):
            return resp.status

    task = asyncio.create_task(slow_patch())
    try:
        reached = asyncio.create_task(body.reached.wait())
        done, _ = await asyncio.wait(
            {task, reached}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        assert reached in done, f"the PATCH ended before 7 MiB were sent: {task}"
        victim.kill()  # SIGKILL: no cleanup, its PostgreSQL session just disappears
        sent = body.sent
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(task, 30)

        async with aiohttp.ClientSession() as session:
            offset = await offset_of(session, cluster.on(1, url))
            # never more than was sent (the S3 store may drop its unacknowledged tail)
            assert 0 <= offset <= start + sent, (offset, start, sent)
            # the dead instance's advisory lock went with its connection: no lock_timeout wait
            t0 = time.monotonic()
            piece = data[offset : offset + 3 * MiB]
            resp = await patch(session, cluster.on(2, url), offset, piece)
            assert resp.status == 204, await resp.text()
            assert time.monotonic() - t0 < 5, "the resume waited for the dead instance's lock"
            # The rest, as a tus client sends it: a part the dead instance had sent to S3
            # may land late and move the offset (409 with the offset): resume from there.
            offset += len(piece)
            for _ in range(3):
                resp = await patch(session, cluster.on(1, url), offset, data[offset:])
                if resp.status != 409:
                    break
                offset = int(resp.headers["Upload-Offset"])
            assert resp.status == 204, await resp.text()
            assert resp.headers["Upload-Offset"] == str(size)
        assert await download_sha256(url) == (size, sha256(data))
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if not victim.running:
            victim.start()  # same port: nginx's upstream is whole again for the next tests


# --------------------------------------------------------------------------------------------
# (e) the pipelines of all instances share the commits, each file committed once


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_pipeline_commits_each_file_once(cluster: Cluster) -> None:
    count = 20
    tag = f"e{time.monotonic_ns() % 10**9}"
    payloads = [make_bytes(2000 + i * 37, seed=500 + i) for i in range(count)]
    names = [f"{tag}-{i}.bin" for i in range(count)]
    before = await _per_instance(cluster, "tusserver_files_total", outcome="committed")

    async def upload(i: int, session: aiohttp.ClientSession) -> str:
        url = await create(
            session,
            cluster.endpoint,
            len(payloads[i]),
            **{"Upload-Metadata": f"filename {_b64(names[i])}"},
        )
        resp = await patch(session, url, 0, payloads[i])
        assert resp.status == 204, await resp.text()
        return url.rstrip("/").rsplit("/", 1)[1]

    async with aiohttp.ClientSession() as session:
        upload_ids = list(await asyncio.gather(*(upload(i, session) for i in range(count))))

    conn = await asyncpg.connect(cluster.dsn)
    try:
        query = """
            SELECT fu.upload_id, f.id, f.status, f.storage_key, f.sha256, f.name
            FROM file_uploads fu JOIN files f ON f.id = fu.file_id
            WHERE fu.upload_id = ANY($1::text[])
        """
        deadline = time.monotonic() + 30
        while True:
            rows = await conn.fetch(query, upload_ids)
            if len(rows) == count and all(r["status"] == "committed" for r in rows):
                break
            assert time.monotonic() < deadline, [dict(r) for r in rows]
            await asyncio.sleep(0.2)

        # exactly one files row per upload, and no stray row for these names
        assert sorted(r["upload_id"] for r in rows) == sorted(upload_ids)
        assert len({r["id"] for r in rows}) == count
        n_rows = await conn.fetchval(
            "SELECT count(*) FROM files WHERE name = ANY($1::text[])", names
        )
        assert n_rows == count
        by_upload = {r["upload_id"]: r for r in rows}
        file_ids = {r["id"] for r in rows}

        # one file.committed event per file, whichever instance committed it (the events are
        # flushed about once a second: wait for all, then make sure no second one follows)
        events_q = """
            SELECT file_id, count(*) AS n FROM events
            WHERE kind = 'file.committed' AND file_id = ANY($1::text[]) GROUP BY file_id
        """
        deadline = time.monotonic() + 10
        while len(events := await conn.fetch(events_q, list(file_ids))) < count:
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        events = await conn.fetch(events_q, list(file_ids))
        assert {r["file_id"]: r["n"] for r in events} == dict.fromkeys(file_ids, 1)
    finally:
        await conn.close()

    # the commits were shared, and none was done twice
    deltas = _deltas(
        before, await _per_instance(cluster, "tusserver_files_total", outcome="committed")
    )
    assert sum(deltas) == count, deltas
    assert sum(1 for d in deltas if d > 0) >= 2, f"one instance committed everything: {deltas}"

    # exactly one object per file, under its recorded key, with the uploaded bytes; and no
    # chunk-store leftovers of the uploads
    s3 = cluster.s3.client()

    def listing(prefix: str) -> list[str]:
        return [
            o.object_name for o in s3.list_objects(cluster.s3.bucket, prefix=prefix, recursive=True)
        ]

    objects = await asyncio.to_thread(listing, cluster.object_prefix)
    ours = [k for k in objects if k[len(cluster.object_prefix) :].split("/", 1)[0] in file_ids]
    assert len(ours) == count, ours
    per_file: dict[str, int] = {}
    for key in ours:
        fid = key[len(cluster.object_prefix) :].split("/", 1)[0]
        per_file[fid] = per_file.get(fid, 0) + 1
    assert per_file == dict.fromkeys(file_ids, 1)
    for i, upload_id in enumerate(upload_ids):
        row = by_upload[upload_id]
        assert row["storage_key"] in ours
        assert row["sha256"] == hashlib.sha256(payloads[i]).hexdigest()

        def fetch(key: str = row["storage_key"]) -> bytes:
            resp = s3.get_object(cluster.s3.bucket, key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        assert await asyncio.to_thread(fetch) == payloads[i]
        leftovers = await asyncio.to_thread(listing, cluster.chunk_prefix + upload_id)
        assert leftovers == [], leftovers

    # and the files are served through any instance
    async with aiohttp.ClientSession() as session:
        for i, upload_id in enumerate(upload_ids[:3]):
            async with session.get(
                f"{cluster.instances[i].url}/uploads/{upload_id}", headers=TUS
            ) as resp:
                assert resp.status == 200
                assert await resp.read() == payloads[i]
