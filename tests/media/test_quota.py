"""Thumbnails are bytes held for the owner: they count in the usage and against the quota,
through HTTP, on SQLite and PostgreSQL; migration 0011 fills the count in for older files."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import column, insert, null, select, table
from yarl import URL

import tusserver.pipeline.pipeline as pipeline_module
from storage_backends.base import StorageError
from tests.api.helpers import NO_LIMITS
from tests.app_fixtures import TUS, MakeClient
from tests.auth.helpers import auth_client, bearer, make_users
from tests.media.helpers import upload_file, wait_done
from tests.protocol.test_core import OCTET
from tusserver.catalog.db import Database
from tusserver.catalog.migrate import downgrade, upgrade
from tusserver.catalog.schema import files

ME = "/api/v1/auth/me"


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """SQLite and PostgreSQL (the media suite's default is SQLite alone)."""
    return fresh_database_url


async def _usage(client: Any, headers: dict[str, str]) -> int:
    resp = await client.get(ME, headers=headers)
    body = await resp.json()
    assert resp.status == 200, body
    return int(body["usage_bytes"])


async def test_thumbnails_count_in_the_usage_and_the_quota(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    quota = 2_000_000
    client = await auth_client(
        make_client, **NO_LIMITS, pipeline_poll_interval=0.1, default_quota=quota
    )
    try:
        owner = bearer((await make_users(client, owner="user"))["owner"].access)
        photo = media["photo.jpg"]
        file_id = await upload_file(client, photo, content_type="image/jpeg", headers=owner)
        f = await wait_done(client, file_id, headers=owner)
        assert f["status"] == "committed", f["reason"]
        assert f["size"] == photo.stat().st_size and f["thumbnail_sizes"] == [256, 1024]
        thumbs = 0
        for size in (256, 1024):
            resp = await client.get(f"/api/v1/file/{file_id}/thumbnail?size={size}", headers=owner)
            assert resp.status == 200, await resp.text()
            thumbs += len(await resp.read())
        assert thumbs > 1000
        used = await _usage(client, owner)
        assert used == f["size"] + thumbs
        # What is left after the file and its thumbnails is exactly what a creation may take.
        left = quota - used
        resp = await client.post(
            "/uploads/", headers={**TUS, **owner, "Upload-Length": str(left + 1)}
        )
        assert resp.status == 413, await resp.text()
        # Deleting the file frees its thumbnails too.
        resp = await client.delete(f"/api/v1/file/{file_id}", headers=owner)
        assert resp.status == 204, await resp.text()
        assert await _usage(client, owner) == 0
        resp = await client.post("/uploads/", headers={**TUS, **owner, "Upload-Length": str(quota)})
        assert resp.status == 201, await resp.text()
    finally:
        await client.close()


def _noise_png() -> bytes:
    """1024 x 1024 pixels of 1-bit noise: about 130 KB as a PNG, and several times that in
    WebP thumbnails (noise does not compress)."""
    im = Image.frombytes("1", (1024, 1024), os.urandom(1024 * 1024 // 8))
    out = io.BytesIO()
    im.save(out, "PNG", optimize=True)
    return out.getvalue()


async def test_files_accepted_side_by_side_pass_the_quota_with_their_thumbnails_once(
    make_client: MakeClient,
) -> None:
    """Uploads all created (each within the quota) before the pipeline made any thumbnail:
    the first file processed gets its thumbnails and takes the owner past the quota; the
    others are committed without thumbnails, instead of each adding its own (three noise
    images that fit a 400 KB quota held 2.6 MB)."""
    quota = 400_000
    client = await auth_client(
        make_client, **NO_LIMITS, pipeline_poll_interval=0.1, default_quota=quota
    )
    try:
        owner = bearer((await make_users(client, owner="user"))["owner"].access)
        images = [_noise_png() for _ in range(3)]
        assert sum(map(len, images)) <= quota
        paths = []
        for data in images:  # every creation before any byte: each fits the quota
            resp = await client.post(
                "/uploads/", headers={**TUS, **owner, "Upload-Length": str(len(data))}
            )
            assert resp.status == 201, await resp.text()
            paths.append(URL(resp.headers["Location"]).path)
        for path, data in zip(paths, images, strict=True):
            resp = await client.patch(
                path,
                data=data,
                headers={**TUS, **owner, **OCTET, "Upload-Offset": "0"},
            )
            assert resp.status == 204, await resp.text()
        files = []
        for path in paths:
            file_id = await wait_file_id(client, path, owner)
            files.append(await wait_done(client, file_id, headers=owner))
        assert [f["status"] for f in files] == ["committed"] * 3, files
        with_thumbnails = [f for f in files if f["thumbnail_sizes"]]
        assert len(with_thumbnails) == 1, [f["thumbnail_sizes"] for f in files]
        thumbs = 0
        for size in with_thumbnails[0]["thumbnail_sizes"]:
            url = f"/api/v1/file/{with_thumbnails[0]['id']}/thumbnail?size={size}"
            thumbs += len(await (await client.get(url, headers=owner)).read())
        assert thumbs > quota - sum(map(len, images)), "the thumbnails did fit: no test"
        assert await _usage(client, owner) == sum(map(len, images)) + thumbs
        # The others' thumbnails are not stored at all.
        for f in files:
            if not f["thumbnail_sizes"]:
                resp = await client.get(f"/api/v1/file/{f['id']}/thumbnail", headers=owner)
                assert resp.status == 404, await resp.text()
    finally:
        await client.close()


async def test_thumbnails_of_an_attempt_that_failed_are_not_counted_against_the_retry(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt records its thumbnails' bytes, then storing them fails: the retry
    does not count them against the file itself (it found the owner past the quota and
    committed the file without thumbnails, still charged for the ones it never stored)."""
    data = _noise_png()
    real = pipeline_module.store_thumbnails
    calls = 0

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("the object store hiccuped")
        return await real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "store_thumbnails", fails_once)
    client = await auth_client(
        make_client,
        **NO_LIMITS,
        pipeline_poll_interval=0.1,
        pipeline_retry_base=0.1,
        default_quota=len(data),  # the file alone fills the quota: within it, not past it
    )
    try:
        owner = bearer((await make_users(client, owner="user"))["owner"].access)
        resp = await client.post(
            "/uploads/", headers={**TUS, **owner, "Upload-Length": str(len(data))}
        )
        assert resp.status == 201, await resp.text()
        path = URL(resp.headers["Location"]).path
        resp = await client.patch(
            path, data=data, headers={**TUS, **owner, **OCTET, "Upload-Offset": "0"}
        )
        assert resp.status == 204, await resp.text()
        f = await wait_done(client, await wait_file_id(client, path, owner), headers=owner)
        assert f["status"] == "committed", f
        assert calls == 2 and f["thumbnail_sizes"] == [256, 1024], (calls, f)
        thumbs = 0
        for size in f["thumbnail_sizes"]:
            url = f"/api/v1/file/{f['id']}/thumbnail?size={size}"
            thumbs += len(await (await client.get(url, headers=owner)).read())
        assert await _usage(client, owner) == len(data) + thumbs
    finally:
        await client.close()


async def wait_file_id(client: Any, path: str, headers: dict[str, str]) -> str:
    """The file id a finished tus upload became (HEAD's X-File-Id)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        resp = await client.head(path, headers={**TUS, **headers})
        if "X-File-Id" in resp.headers:
            return resp.headers["X-File-Id"]
        assert asyncio.get_running_loop().time() < deadline, dict(resp.headers)
        await asyncio.sleep(0.05)


@pytest.fixture
def db(fresh_catalog: Database) -> Database:
    return fresh_catalog


async def test_migration_0011_counts_the_thumbnails_of_older_files(db: Database) -> None:
    await upgrade(db, "0010")
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    row: dict[str, Any] = {
        "owner": "alice", "name": "x", "name_folded": "x", "folder": "/", "size": 10,
        "status": "committed", "type_mismatch": False,
        "meta": {}, "tags": [], "attempts": 0, "created_at": now, "updated_at": now,
    }  # fmt: skip
    # b: SQL NULL (no thumbnails, as the pipeline leaves it), d: a JSON null
    thumbs = {"a": {"256": 1234, "1024": 56789}, "b": null(), "c": {"256": 7}, "d": None}

    # The table as it is at 0010: no thumbnail_bytes yet (nor its default).
    names = {"id", "thumbnails", *row}
    at_0010 = table("files", *(column(c.name, c.type) for c in files.c if c.name in names))

    def seed(conn: Any) -> None:
        for file_id, sizes in thumbs.items():
            conn.execute(insert(at_0010).values(id=file_id, thumbnails=sizes, **row))

    await db.write(seed)
    await upgrade(db)

    def read(conn: Any) -> dict[str, int]:
        rows = conn.execute(select(files.c.id, files.c.thumbnail_bytes)).all()
        return {r[0]: r[1] for r in rows}

    assert await db.read(read) == {"a": 1234 + 56789, "b": 0, "c": 7, "d": 0}
    await downgrade(db, "0010")
    await upgrade(db)
    assert await db.read(read) == {"a": 1234 + 56789, "b": 0, "c": 7, "d": 0}
