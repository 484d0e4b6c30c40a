"""A full disk is 507 Insufficient Storage, never a 500, and nothing is lost (#16 item 13).

The data directory is a real, small filesystem (a tmpfs of 2 MiB, mounted for the test: it
needs root), filled up in the middle of a PATCH through HTTP against the server. The client
gets 507 saying that storage is full, HEAD gives exactly the bytes stored, /readyz reports
the condition and recovers once space is freed, and the upload then resumes byte-exact.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio.error import S3Error

from storage_backends.base import StorageError, StorageFull
from storage_backends.encryption import generate_key_spec
from storage_backends.local import LocalChunkStore, LocalObjectStore
from storage_backends.s3 import S3ObjectStore, S3Settings
from tests.app_fixtures import TUS, MakeClient
from tests.pipeline.test_local_pipeline import png_bytes, wait_file
from tests.protocol.test_core import OCTET, create, head
from tusserver import TusServerConfig, create_app

KiB = 1024
_KEY = generate_key_spec("full-disk")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a filesystem that really fills up (ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def fill(path: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free (all of it: until ENOSPC)."""
    filler = path / "filler"
    want = max(0, free_bytes(path) - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC when asked to leave nothing
            while want > 0:
                want -= os.write(fd, b"\0" * min(64 * KiB, want))
    finally:
        os.close(fd)
    return filler


async def patch(client: Any, path: str, offset: int, body: bytes) -> Any:
    headers = {**TUS, **OCTET, "Upload-Offset": str(offset)}
    return await client.patch(path, data=io.BytesIO(body), headers=headers)


async def readyz(client: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/readyz")
    return resp.status, await resp.json()


@pytest.mark.parametrize("store", ["local", "encrypted"])
async def test_a_patch_that_fills_the_disk_gets_507_and_resumes_byte_exact(
    make_client: MakeClient, small_fs: Path, store: str
) -> None:
    settings: dict[str, Any] = {"data_dir": small_fs, "max_size": 8 * 1024 * KiB}
    if store == "encrypted":
        settings.update(encryption="envelope", encryption_keys=(_KEY,))
    client = await make_client(**settings)
    status, body = await readyz(client)
    assert status == 200 and body["checks"]["storage"] == "ok", body

    data = png_bytes() + os.urandom(1024 * KiB)
    path = await create(
        client, len(data), **{"Upload-Metadata": "filename ZnVsbC5wbmc="}
    )  # full.png
    filler = fill(small_fs, leave=400 * KiB)

    resp = await patch(client, path, 0, data)
    assert resp.status == 507, await resp.text()
    assert "storage is full" in await resp.text()

    h = await head(client, path)
    assert h.status == 200
    stored = int(h.headers["Upload-Offset"])
    assert 0 < stored < len(data)
    if store == "local":
        # The offset is exactly what the file holds, and the bytes are the ones sent.
        (chunk,) = [p for p in (small_fs / "uploads").iterdir() if "." not in p.name]
        assert chunk.read_bytes() == data[:stored]

    status, body = await readyz(client)
    assert status == 503 and body["checks"]["storage"].startswith("full"), body
    # Still full: a retry gets 507 again and the offset does not move.
    resp = await patch(client, path, stored, data[stored:])
    assert resp.status == 507
    assert int((await head(client, path)).headers["Upload-Offset"]) == stored

    filler.unlink()  # space is back
    status, body = await readyz(client)
    assert status == 200 and body["checks"]["storage"] == "ok", body

    stored = int((await head(client, path)).headers["Upload-Offset"])
    resp = await patch(client, path, stored, data[stored:])
    assert resp.status == 204, await resp.text()
    assert int(resp.headers["Upload-Offset"]) == len(data)
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    got = await (await client.get(info["content_url"])).read()
    assert got == data


# The SQLite catalog is the one in the data directory (PostgreSQL's is elsewhere).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_full_catalog_is_507_and_recovers(
    make_client: MakeClient, small_fs: Path, database_url: str
) -> None:
    db = small_fs / "catalog.db"
    client = await make_client(data_dir=small_fs, database_url=f"sqlite+aiosqlite:///{db}")
    await create(client, 10)
    filler = fill(small_fs, leave=0)
    # Enough rows that SQLite must grow its files (the WAL, the database) on a full disk:
    # rows of 4 KiB of metadata, so its checkpoints cannot make room in the WAL either.
    statuses = set()
    for _ in range(400):
        meta = "note " + base64.b64encode(os.urandom(3000)).decode()
        headers = {**TUS, "Upload-Length": "10", "Upload-Metadata": meta}
        resp = await client.post("/uploads/", headers=headers)
        statuses.add(resp.status)
        if resp.status != 201:
            assert resp.status == 507, await resp.text()
            assert "storage is full" in await resp.text()
            break
    assert 507 in statuses, statuses
    status, body = await readyz(client)
    assert status == 503 and body["checks"]["storage"].startswith("full"), body
    filler.unlink()
    await create(client, 10)
    status, body = await readyz(client)
    assert status == 200, body


# The SQLite catalog is the one in the data directory (PostgreSQL's is elsewhere).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def settled_files(client: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The files listed once the pipeline is done with each of them: a file still being
    processed cannot be deleted yet (409), and the last upload may have finished a moment
    before the listing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get("/api/v1/files", params={"limit": "200"})
        files: list[dict[str, Any]] = (await resp.json())["files"]
        busy = [f["id"] for f in files if f["status"] in ("received", "validating")]
        if not busy:
            return files
        assert asyncio.get_running_loop().time() < deadline, f"still processed: {busy}"
        await asyncio.sleep(0.05)


async def test_files_deleted_through_the_api_make_room_again(
    make_client: MakeClient, small_fs: Path, database_url: str
) -> None:
    """The disk fills with files; deleting them through the API (which writes to the catalog
    on that same full disk) frees room for new uploads. The catalog's WAL must not take the
    freed space for itself: on a small filesystem it is checkpointed sooner, and a full disk
    asks for a checkpoint."""
    db = small_fs / "catalog.db"
    client = await make_client(
        data_dir=small_fs,
        database_url=f"sqlite+aiosqlite:///{db}",
        rate_limit_creations=0,
        rate_limit_api=0,
    )
    statuses: list[int] = []
    for i in range(80):
        resp = await client.post(
            "/api/v1/upload", params={"filename": f"f{i}.bin"}, data=os.urandom(50 * KiB)
        )
        statuses.append(resp.status)
        assert resp.status in (201, 507), await resp.text()
    assert 507 in statuses and 201 in statuses, statuses
    files = await settled_files(client)
    assert files
    for f in files:
        resp = await client.delete(f"/api/v1/file/{f['id']}")
        assert resp.status in (204, 507), await resp.text()
    resp = await client.post(
        "/api/v1/upload", params={"filename": "again.bin"}, data=os.urandom(50 * KiB)
    )
    assert resp.status == 201, await resp.text()
    status, body = await readyz(client)
    assert status == 200, body


async def test_local_stores_raise_storage_full(small_fs: Path) -> None:
    chunks = LocalChunkStore(small_fs / "uploads")
    objects = LocalObjectStore(small_fs / "objects")
    await chunks.open()
    await objects.open()
    await chunks.create("u1")
    filler = fill(small_fs, leave=100 * KiB)
    data = os.urandom(300 * KiB)

    async def body() -> Any:
        yield data

    with pytest.raises(StorageFull):
        await chunks.write("u1", 0, body())
    stored = await chunks.get_offset("u1")
    assert 0 < stored < len(data)
    assert (small_fs / "uploads" / "u1").read_bytes() == data[:stored]

    with pytest.raises(StorageFull):
        await objects.put_stream("a/b", body(), size=len(data), content_type="a/b", metadata={})
    assert await objects.stat("a/b") is None
    leftovers = [p.name for p in (small_fs / "objects").rglob("*.tmp")]
    assert leftovers == [], leftovers  # no temporary file left behind
    filler.unlink()
    await objects.put_stream("a/b", body(), size=len(data), content_type="a/b", metadata={})
    assert b"".join([b async for b in objects.get("a/b")]) == data


def _s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(body=io.BytesIO(b""), status=status)
    return S3Error(response, code, "refused", "/b/k", "req", "host")


@pytest.mark.parametrize(
    ("code", "status", "full"),
    [
        ("XMinioStorageFull", 507, True),
        ("XMinioAdminBucketQuotaExceeded", 400, True),
        ("InternalError", 507, True),
        ("InternalError", 500, False),
        ("AccessDenied", 403, False),
    ],
)
async def test_s3_errors_that_mean_full_are_storage_full(
    code: str, status: int, full: bool
) -> None:
    store = S3ObjectStore(
        S3Settings(endpoint="127.0.0.1:9", access_key="a", secret_key="b", bucket="c")
    )
    try:

        def refuse() -> None:
            raise _s3_error(code, status)

        with pytest.raises(StorageError) as caught:
            await store._run(refuse)
        assert isinstance(caught.value, StorageFull) is full
    finally:
        await store.close()


async def test_a_full_disk_keeps_the_acknowledged_bytes_of_a_partly_filled_segment(
    make_client: MakeClient, small_fs: Path
) -> None:
    """Encrypted uploads re-seal their last, partly filled segment with the bytes that
    follow it: a full disk must refuse that write before it touches the segment's
    acknowledged bytes (a segment written halfway no longer authenticates, and HEAD went
    back to the segment before it: here to 0)."""
    client = await make_client(
        data_dir=small_fs, max_size=8 * 1024 * KiB, encryption="envelope", encryption_keys=(_KEY,)
    )
    data = os.urandom(1024 * KiB)
    path = await create(client, len(data))
    acknowledged = 100 * KiB  # inside the first segment
    resp = await patch(client, path, 0, data[:acknowledged])
    assert resp.status == 204
    assert int(resp.headers["Upload-Offset"]) == acknowledged

    filler = fill(small_fs, leave=60 * KiB)
    resp = await patch(client, path, acknowledged, data[acknowledged : acknowledged + 300 * KiB])
    assert resp.status == 507, await resp.text()
    stored = int((await head(client, path)).headers["Upload-Offset"])
    assert stored >= acknowledged, f"acknowledged {acknowledged}, HEAD now says {stored}"

    filler.unlink()
    resp = await patch(client, path, stored, data[stored:])
    assert resp.status == 204, await resp.text()
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_full_temporary_directory_under_the_s3_chunk_store_is_507(
    aiohttp_client: Any,
    tmp_path: Path,
    s3_server: Any,
    small_fs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checksummed PATCH to the S3 chunk store is spooled to a temporary file until its
    checksum is known: a full temporary filesystem is a full disk (507), not a 500."""
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}",
        auth="none",
        sweep_interval=0,
        chunk_store="s3",
        object_store="s3",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_server.bucket,
        s3_secure=False,
        s3_chunk_prefix=f"spool-{secrets.token_hex(4)}/",
    )
    client = await aiohttp_client(create_app(config))
    data = os.urandom(2 * 1024 * KiB)
    path = await create(client, len(data))
    monkeypatch.setattr(tempfile, "tempdir", str(small_fs))  # as TMPDIR=<the small fs>
    filler = fill(small_fs, leave=100 * KiB)
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    resp = await client.patch(
        path,
        data=io.BytesIO(data),
        headers={**TUS, **OCTET, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {digest}"},
    )
    assert resp.status == 507, await resp.text()
    assert "storage is full" in await resp.text()
    assert (await head(client, path)).headers["Upload-Offset"] == "0"
    filler.unlink()
    resp = await client.patch(
        path,
        data=io.BytesIO(data),
        headers={**TUS, **OCTET, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {digest}"},
    )
    assert resp.status == 204, await resp.text()
