"""``serve --role api`` and ``tusserver worker`` on PostgreSQL + S3.

An api instance takes uploads and commits nothing; the files wait in the catalog (and say so:
the backlog gauges and /readyz) until a worker claims them. Two workers share the backlog
and never commit a file twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from ..e2e.helpers import OCTET, TUS, create, make_bytes, patch, sha256
from ..ops.helpers import scrape
from .conftest import RoleFactory, RolesEnv

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.s3]

BACKLOG = "tusserver_pipeline_backlog_files"
OLDEST = "tusserver_pipeline_backlog_oldest_seconds"
COMMITTED = ("tusserver_files_total", (("outcome", "committed"),))


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _gauge(base_url: str, name: str) -> float:
    return scrape(base_url)[(name, ())]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _upload(session: aiohttp.ClientSession, endpoint: str, name: str, data: bytes) -> str:
    url = await create(
        session, endpoint, len(data), **{"Upload-Metadata": f"filename {_b64(name)}"}
    )
    resp = await patch(session, url, 0, data)
    assert resp.status == 204, await resp.text()
    return url.rstrip("/").rsplit("/", 1)[1]


_FILES_OF = """
    SELECT fu.upload_id, f.id, f.status, f.storage_key, f.sha256
    FROM file_uploads fu JOIN files f ON f.id = fu.file_id
    WHERE fu.upload_id = ANY($1::text[])
"""


async def test_api_files_wait_for_workers_and_are_committed_once(
    roles_env: RolesEnv, role_factory: RoleFactory
) -> None:
    env = {**roles_env.settings, "TUSSERVER_PIPELINE_STALL_AFTER": "1"}
    api = role_factory("api", env)

    count = 12
    payloads = [make_bytes(3000 + 101 * i, seed=900 + i) for i in range(count)]
    names = [f"r{i}.bin" for i in range(count)]
    upload_ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        # the backlog rises with the files the api instance finishes
        assert _gauge(api.url, BACKLOG) == 0
        assert _gauge(api.url, OLDEST) == 0
        for i in range(3):
            upload_ids.append(await _upload(session, api.endpoint, names[i], payloads[i]))
        assert _gauge(api.url, BACKLOG) == 3
        upload_ids += await asyncio.gather(
            *(_upload(session, api.endpoint, names[i], payloads[i]) for i in range(3, count))
        )
    assert _gauge(api.url, BACKLOG) == count

    conn = await asyncpg.connect(roles_env.dsn)
    try:
        # nothing is processed on the api instance: the files wait, received
        await asyncio.sleep(1.5)
        rows = await conn.fetch(_FILES_OF, upload_ids)
        assert len(rows) == count
        assert {r["status"] for r in rows} == {"received"}, [dict(r) for r in rows]
        assert scrape(api.url).get(COMMITTED, 0.0) == 0
        assert _gauge(api.url, OLDEST) >= 1.0

        # and /readyz says so: waiting longer than pipeline_stall_after, no worker progress
        status, body = _get_json(f"{api.url}/readyz")
        assert status == 200, body  # uploads still work: the instance stays in service
        assert body["pipeline"]["state"] == "stalled", body
        assert body["pipeline"]["backlog_files"] == count
        assert "tusserver worker" in body["pipeline"]["message"]

        # two workers start together and share the backlog
        w1 = role_factory("worker", env)
        w2 = role_factory("worker", env)
        # a worker serves no uploads: only health and metrics
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{w1.url}/uploads/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"}
            ) as resp,
        ):
            assert resp.status == 404
        deadline = time.monotonic() + 60
        while True:
            rows = await conn.fetch(_FILES_OF, upload_ids)
            if len(rows) == count and all(r["status"] == "committed" for r in rows):
                break
            assert time.monotonic() < deadline, [dict(r) for r in rows]
            await asyncio.sleep(0.2)

        # each file committed once: one file.committed event each, counted by one worker
        file_ids = [r["id"] for r in rows]
        events_q = """
            SELECT file_id, count(*) AS n FROM events
            WHERE kind = 'file.committed' AND file_id = ANY($1::text[]) GROUP BY file_id
        """
        deadline = time.monotonic() + 15
        while len(events := await conn.fetch(events_q, file_ids)) < count:
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        events = await conn.fetch(events_q, file_ids)
        assert {r["file_id"]: r["n"] for r in events} == dict.fromkeys(file_ids, 1)
    finally:
        await conn.close()
    per_worker = [scrape(w.url).get(COMMITTED, 0.0) for w in (w1, w2)]
    assert sum(per_worker) == count, per_worker
    assert scrape(api.url).get(COMMITTED, 0.0) == 0

    # one object per file, with the uploaded bytes
    s3 = roles_env.s3.client()
    by_upload = {r["upload_id"]: r for r in rows}
    for i, upload_id in enumerate(upload_ids):
        row = by_upload[upload_id]
        assert row["sha256"] == sha256(payloads[i])
        obj = await asyncio.to_thread(s3.get_object, roles_env.s3.bucket, row["storage_key"])
        try:
            assert obj.read() == payloads[i]
        finally:
            obj.close()
            obj.release_conn()
    keys = await asyncio.to_thread(
        lambda: [
            o.object_name
            for o in s3.list_objects(
                roles_env.s3.bucket, prefix=roles_env.object_prefix, recursive=True
            )
        ]
    )
    assert len(keys) == count, keys

    # the backlog falls, on the api instance and on the workers alike
    for base in (api.url, w1.url, w2.url):
        assert _gauge(base, BACKLOG) == 0
        assert _gauge(base, OLDEST) == 0
    status, body = _get_json(f"{api.url}/readyz")
    assert status == 200 and body["pipeline"]["state"] == "ok", body
    status, body = _get_json(f"{w1.url}/readyz")
    assert status == 200 and body["checks"]["database"] == "ok", body


async def test_worker_started_first_commits_what_api_instances_finish(
    roles_env: RolesEnv, role_factory: RoleFactory
) -> None:
    """A running worker picks up new files within its poll interval; the api instance's
    backlog goes back to 0 without any commit of its own."""
    worker = role_factory("worker", roles_env.settings)
    api = role_factory("api", roles_env.settings)
    data = make_bytes(70_000, seed=4)
    async with aiohttp.ClientSession() as session:
        upload_id = await _upload(session, api.endpoint, "later.bin", data)
    conn = await asyncpg.connect(roles_env.dsn)
    try:
        deadline = time.monotonic() + 30
        while True:
            rows = await conn.fetch(_FILES_OF, [upload_id])
            if rows and rows[0]["status"] == "committed":
                break
            assert time.monotonic() < deadline, [dict(r) for r in rows]
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert rows[0]["sha256"] == sha256(data)
    assert scrape(worker.url).get(COMMITTED, 0.0) == 1
    assert scrape(api.url).get(COMMITTED, 0.0) == 0
    assert _gauge(api.url, BACKLOG) == 0
    status, body = _get_json(f"{api.url}/readyz")
    assert status == 200 and body["pipeline"]["state"] == "ok", body


_QUICK_WORKER = {"TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2", "TUSSERVER_SWEEP_INTERVAL": "0"}


async def test_api_instance_shows_the_status_the_worker_committed(
    role_factory: RoleFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    api = role_factory("api", _QUICK_WORKER, data_dir=shared)
    data = make_bytes(10_000, seed=5)
    async with aiohttp.ClientSession() as session:
        url = await create(
            session, api.endpoint, len(data), **{"Upload-Metadata": "filename YS5iaW4="}
        )
        resp = await patch(session, url, 0, data)
        assert resp.status == 204
        async with session.head(url, headers=TUS) as head:
            file_id = head.headers["X-File-Id"]
            assert head.headers["X-File-Status"] == "received"
        # a client polls its file's status on the api instance (no worker yet: received)
        async with session.get(f"{api.url}/api/v1/file/{file_id}") as got:
            assert got.status == 200, await got.text()
            assert (await got.json())["status"] == "received"

        role_factory("worker", _QUICK_WORKER, data_dir=shared)
        # the worker commits the file (the upload's row, read uncached, says so)
        deadline = time.monotonic() + 30
        while True:
            async with session.head(url, headers=TUS) as head:
                if head.headers.get("X-File-Status") == "committed":
                    break
            assert time.monotonic() < deadline, "the worker did not commit the file"
            await asyncio.sleep(0.1)

        async with session.get(f"{api.url}/api/v1/file/{file_id}") as got:
            body = await got.json()
        assert body["status"] == "committed", body
        async with session.get(f"{api.url}/api/v1/file/{file_id}/content") as content:
            assert content.status == 200, await content.text()
            assert await content.read() == data


async def test_a_streaming_patch_is_not_cut_by_the_sweeper(role_factory: RoleFactory) -> None:
    srv = role_factory(
        "all",
        {"TUSSERVER_EXPIRATION": "2", "TUSSERVER_SWEEP_INTERVAL": "0.5"},
    )
    data = make_bytes(40 * 8192, seed=2)

    async def slow_body() -> AsyncIterator[bytes]:
        # 40 blocks over about 4 s: bytes arrive all the time, the upload is never idle
        for i in range(40):
            yield data[i * 8192 : (i + 1) * 8192]
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        url = await create(session, srv.endpoint, len(data))
        async with session.patch(
            url,
            data=slow_body(),
            headers={**OCTET, "Upload-Offset": "0", "Content-Length": str(len(data))},
        ) as resp:
            text = await resp.text()
            assert resp.status == 204, (resp.status, text, dict(resp.headers))
