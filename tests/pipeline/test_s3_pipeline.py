"""The pipeline committing into S3 (SeaweedFS): the happy path, S3 down, wrong credentials."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth import Principal
from tests.app_fixtures import OCTET, TUS, get_committed
from tests.pipeline.helpers import file_id_of, file_state, upload_id_of, wait_state
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tests.protocol.test_core import create, patch
from tusserver import TusServerConfig, create_app

Client = TestClient[Any, Any]
MakeS3Client = Callable[..., Awaitable[Client]]


def _resolver(user: str) -> Callable[[web.Request], Awaitable[Principal]]:
    async def resolve(_request: web.Request) -> Principal:
        return Principal(user_id=user)

    return resolve


@pytest.fixture
def make_s3_client(aiohttp_client: Any, tmp_path: Path) -> MakeS3Client:
    """A server committing into an S3 server (`s3` has endpoint/access_key/secret_key)."""

    async def make(
        s3: Any,
        *,
        bucket: str,
        database_url: str | None = None,
        user: str | None = None,
        secret_key: str | None = None,
        **overrides: Any,
    ) -> Client:
        settings: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url or f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}",
            "sweep_interval": 0,
            "lock_timeout": 3.0,
            "auth": "none",
            "object_store": "s3",
            "s3_endpoint": s3.endpoint,
            "s3_access_key": s3.access_key,
            "s3_secret_key": s3.secret_key if secret_key is None else secret_key,
            "s3_bucket": bucket,
            "s3_region": "us-east-1",
            "s3_secure": False,
            "s3_part_size": 5 * 1024 * 1024,
            "pipeline_retry_base": 0.2,
            "pipeline_retry_max": 1.0,
            "pipeline_poll_interval": 0.2,
        }
        settings.update(overrides)
        principal = _resolver(user) if user else None
        app = create_app(TusServerConfig(**settings), principal=principal)
        client: Client = await aiohttp_client(app)
        return client

    return make


def object_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The files' objects (the media step's thumbnails beside them are tested in tests/media)."""
    client = s3.client()
    listing = client.list_objects(bucket, prefix=prefix, recursive=True)
    return sorted(o.object_name for o in listing if ".thumb-" not in o.object_name)


def object_meta(s3: Any, bucket: str, key: str) -> tuple[str, dict[str, str]]:
    st = s3.client().stat_object(bucket, key)
    meta = {
        k.lower().removeprefix("x-amz-meta-"): unquote(v)
        for k, v in st.metadata.items()
        if k.lower().startswith("x-amz-meta-")
    }
    return st.content_type, meta


def object_bytes(s3: Any, bucket: str, key: str) -> bytes:
    resp = s3.client().get_object(bucket, key)
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


# --- happy path ---------------------------------------------------------------------------


async def test_upload_is_committed_into_s3(
    make_s3_client: MakeS3Client, s3_server: Any, database_url: str, tmp_path: Path
) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    client = await make_s3_client(
        s3_server,
        bucket=s3_server.bucket,
        database_url=database_url,
        user="alice",
        object_key_template=prefix + "/{owner}/{category}/{yyyy}/{mm}/{file_id}/{name}",
    )
    data = png_bytes(extra=20_000)
    name = "Фото: отпуск 2024.png"
    path = await upload(client, data, filename=name, filetype="image/png")
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    sha = hashlib.sha256(data).hexdigest()
    assert info["sha256"] == sha
    assert info["owner"] == "alice"

    created = dt.datetime.fromisoformat(info["created_at"])
    key = f"{prefix}/alice/image/{created:%Y}/{created:%m}/{info['id']}/Фото_ отпуск 2024.png"
    assert object_keys(s3_server, s3_server.bucket, prefix + "/") == [key]
    content_type, meta = object_meta(s3_server, s3_server.bucket, key)
    assert content_type == "image/png"
    assert meta["sha256"] == sha
    assert meta["owner"] == "alice"
    assert meta["original-name"] == name
    assert meta["file-id"] == info["id"]
    assert object_bytes(s3_server, s3_server.bucket, key) == data

    row = await file_state(client, info["id"])
    assert (row["store"], row["storage_key"]) == ("s3", key)
    # The bytes moved: the chunk copy is gone, downloads come from S3.
    assert not (tmp_path / "data" / "uploads" / upload_id_of(path)).exists()
    r = await client.get(info["content_url"])
    assert r.status == 200
    assert await r.read() == data
    r = await client.get(info["content_url"], headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert await r.read() == data[100:200]
    assert await (await get_committed(client, path)).read() == data


async def test_multipart_sized_file_is_committed_into_s3(
    make_s3_client: MakeS3Client, s3_server: Any
) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    client = await make_s3_client(
        s3_server,
        bucket=s3_server.bucket,
        object_key_template=prefix + "/{file_id}.{ext}",
        max_size=64 * 1024 * 1024,
    )
    data = os.urandom(11 * 1024 * 1024)  # three parts of 5 MiB
    path = await create(client, len(data))
    step = 4 * 1024 * 1024
    for offset in range(0, len(data), step):
        r = await client.patch(
            path,
            data=io.BytesIO(data[offset : offset + step]),
            headers={**TUS, **OCTET, "Upload-Offset": str(offset)},
        )
        assert r.status == 204, await r.text()
    info = await wait_file(client, path, timeout=30)
    assert info["status"] == "committed", info
    keys = object_keys(s3_server, s3_server.bucket, prefix + "/")
    assert keys == [f"{prefix}/{info['id']}.bin"]
    _, meta = object_meta(s3_server, s3_server.bucket, keys[0])
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    got = await (await client.get(info["content_url"])).read()
    assert hashlib.sha256(got).hexdigest() == meta["sha256"]


# --- S3 unavailable -----------------------------------------------------------------------


async def test_s3_down_during_commit_waits_then_commits(
    make_s3_client: MakeS3Client, private_s3: Any, tmp_path: Path
) -> None:
    bucket = "tus-private"
    client = await make_s3_client(private_s3, bucket=bucket)
    data = png_bytes(extra=50_000)
    path = await create(client, len(data))
    assert (await patch(client, path, 0, data[:20_000])).status == 204
    await asyncio.to_thread(private_s3.stop)
    assert (await patch(client, path, 20_000, data[20_000:])).status == 204

    file_id = await file_id_of(client, path)
    state = await wait_state(client, file_id, lambda s: s["reason"] is not None, timeout=30)
    assert state["status"] == "validating", state
    assert "storage unavailable" in state["reason"]
    assert state["sha256"] == hashlib.sha256(data).hexdigest()
    chunk = tmp_path / "data" / "uploads" / upload_id_of(path)
    assert chunk.read_bytes() == data
    # Not served while it waits, and not mistaken for lost.
    r = await client.get(f"/file/{file_id}/content")
    assert r.status == 409

    await asyncio.to_thread(private_s3.start)
    info = await wait_file(client, path, timeout=60)
    assert info["status"] == "committed", info
    assert info["reason"] is None
    row = await file_state(client, file_id)
    assert object_bytes(private_s3, bucket, row["storage_key"]) == data
    assert not chunk.exists()
    assert await (await client.get(info["content_url"])).read() == data


async def test_wrong_credentials_never_commit_and_lose_nothing(
    make_s3_client: MakeS3Client, s3_server: Any, tmp_path: Path
) -> None:
    prefix = f"t{secrets.token_hex(6)}"
    template = prefix + "/{file_id}/{name}"
    bad = await make_s3_client(
        s3_server,
        bucket=s3_server.bucket,
        secret_key="definitely-not-the-secret",
        object_key_template=template,
    )
    data = b"quarterly numbers\n" * 500
    path = await upload(bad, data, filename="numbers.txt")
    file_id = await file_id_of(bad, path)
    state = await wait_state(
        bad,
        file_id,
        lambda s: s["attempts"] >= 3 and s["lease_until"] is None and s["reason"] is not None,
        timeout=30,
    )
    assert state["status"] == "validating", state
    assert "storage unavailable" in state["reason"]
    assert state["committed_at"] is None
    chunk = tmp_path / "data" / "uploads" / upload_id_of(path)
    assert chunk.read_bytes() == data
    assert object_keys(s3_server, s3_server.bucket, prefix + "/") == []
    assert (await bad.get(f"/file/{file_id}/content")).status == 409
    await bad.close()

    # The operator fixes the secret and restarts: the same file is committed, whole.
    good = await make_s3_client(s3_server, bucket=s3_server.bucket, object_key_template=template)
    info = await wait_file(good, path, timeout=30)
    assert info["status"] == "committed", info
    assert info["id"] == file_id
    assert object_keys(s3_server, s3_server.bucket, prefix + "/") == [
        f"{prefix}/{file_id}/numbers.txt"
    ]
    assert await (await good.get(info["content_url"])).read() == data
    assert not chunk.exists()


async def test_downloads_redirect_to_a_presigned_url_when_configured(
    make_s3_client: MakeS3Client, s3_server: Any
) -> None:
    import aiohttp

    prefix = f"r{secrets.token_hex(6)}"
    client = await make_s3_client(
        s3_server,
        bucket=s3_server.bucket,
        object_key_template=prefix + "/{file_id}/{name}",
        download_redirect=60,
    )
    data = png_bytes(extra=30_000)
    info = await wait_file(client, await upload(client, data, filename="r.png"))
    assert info["status"] == "committed", info
    r = await client.get(info["content_url"], allow_redirects=False)
    assert r.status == 307
    assert r.headers["Cache-Control"] == "private, no-store"
    assert r.headers["ETag"] == f'"{info["sha256"]}"'
    url = r.headers["Location"]
    assert url.startswith("http://") and prefix in unquote(url)
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as direct:
            assert direct.status == 200
            assert await direct.read() == data
        async with session.get(url, headers={"Range": "bytes=10-19"}) as part:
            assert part.status == 206
            assert await part.read() == data[10:20]
    # Without the setting the same download streams through the server.
    plain = await make_s3_client(
        s3_server, bucket=s3_server.bucket, object_key_template=prefix + "x/{file_id}/{name}"
    )
    info2 = await wait_file(plain, await upload(plain, data, filename="p.png"))
    r2 = await plain.get(info2["content_url"], allow_redirects=False)
    assert r2.status == 200 and await r2.read() == data


async def test_presigned_downloads_keep_the_promises_of_proxied_downloads(
    make_s3_client: MakeS3Client, s3_server: Any
) -> None:
    """#16 item 17: S3 serves a presigned download as application/octet-stream, with the
    very Content-Disposition the server sends when it streams the file, and the URL lives
    download_redirect seconds (at most 300)."""
    from urllib.parse import parse_qs, urlsplit

    import aiohttp

    from tusserver.config import ConfigError

    prefix = f"p{secrets.token_hex(6)}"
    name = "Straße ☃ report.png"
    client = await make_s3_client(
        s3_server,
        bucket=s3_server.bucket,
        object_key_template=prefix + "/{file_id}/{name}",
        download_redirect=45,
    )
    data = png_bytes(extra=5_000)
    info = await wait_file(client, await upload(client, data, filename=name, filetype="image/png"))
    assert info["status"] == "committed", info
    r = await client.get(info["content_url"], allow_redirects=False)
    assert r.status == 307
    url = r.headers["Location"]
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["45"]
    assert query["response-content-type"] == ["application/octet-stream"]
    # The header a download through the server gets (HEAD skips the redirect).
    proxied = await client.head(info["content_url"])
    assert proxied.status == 200
    expected = proxied.headers["Content-Disposition"]
    async with aiohttp.ClientSession() as session, session.get(url) as direct:
        assert direct.status == 200
        assert await direct.read() == data
        assert direct.headers["Content-Type"] == "application/octet-stream"
        assert direct.headers["Content-Disposition"] == expected
    # A longer life than docs/security.md promises is refused at start.
    with pytest.raises(ConfigError, match="download_redirect"):
        TusServerConfig(
            data_dir=Path("/nonexistent"),
            object_store="s3",
            s3_endpoint=s3_server.endpoint,
            s3_access_key="a",
            s3_secret_key="b",
            s3_bucket="c",
            download_redirect=301,
        )
