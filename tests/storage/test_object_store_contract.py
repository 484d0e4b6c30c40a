"""One contract for every ObjectStore: LocalObjectStore (a directory) and S3ObjectStore (SeaweedFS).

Each test runs against both stores; a few at the end are specific to one of them (local key
confinement, S3 credentials, presigned URLs).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage_backends.base import ObjectStore, StorageError
from storage_backends.encryption import EncryptedObjectStore, KeyRing, generate_key_spec
from storage_backends.local import LocalObjectStore
from storage_backends.s3 import S3ObjectStore, S3Settings

MiB = 1024 * 1024


def _s3_settings(s3: Any, **changes: Any) -> S3Settings:
    values: dict[str, Any] = {
        "endpoint": s3.endpoint,
        "access_key": s3.access_key,
        "secret_key": s3.secret_key,
        "bucket": s3.bucket,
        "region": s3.region,
        "secure": False,
        "part_size": 5 * MiB,
        "parallel_parts": 2,
    }
    values.update(changes)
    return S3Settings(**values)


class Store:
    """The store under test, and a per-test key prefix (the S3 bucket is shared by a worker)."""

    def __init__(self, kind: str, store: ObjectStore) -> None:
        self.kind = kind
        self.store = store
        self.prefix = f"contract-{secrets.token_hex(6)}"

    def key(self, rest: str) -> str:
        return f"{self.prefix}/{rest}"


#: Envelope encryption wraps either store; small segments so every test crosses several.
_KEYS = KeyRing.from_specs([generate_key_spec("contract")])


@pytest.fixture(params=["local", "s3", "enc-local", "enc-s3"])
async def obj(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store: ObjectStore
    if request.param.endswith("local"):
        store = LocalObjectStore(tmp_path / "objects")
    else:
        store = S3ObjectStore(_s3_settings(request.getfixturevalue("s3_server")))
    if request.param.startswith("enc-"):
        store = EncryptedObjectStore(
            store, _KEYS, segment_size=4096, check_key=f"{secrets.token_hex(6)}.check"
        )
    await store.open()
    try:
        yield Store(request.param, store)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()


async def read_all(
    store: ObjectStore, key: str, start: int = 0, length: int | None = None
) -> bytes:
    return b"".join([block async for block in store.get(key, start, length)])


async def blocks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


META = {
    "file-id": "0123456789abcdef0123456789abcdef",
    "owner": "alice",
    "original-name": "Straße — 写真 ☃ (1) 100%.png",
    "sha256": "ab" * 32,
}


# --- put / stat / get ---------------------------------------------------------------------


async def test_put_file_round_trip(obj: Store, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    src = write(tmp_path / "src.bin", data)
    key = obj.key("a/b/file.bin")
    await obj.store.put_file(key, src, content_type="image/png", metadata=META)
    info = await obj.store.stat(key)
    assert info is not None
    assert info.key == key
    assert info.size == len(data)
    assert info.content_type == "image/png"
    assert dict(info.metadata) == META
    assert await read_all(obj.store, key) == data
    # Without consume, the source file stays where it was.
    assert src.read_bytes() == data


async def test_put_file_consume_stores_the_bytes(obj: Store, tmp_path: Path) -> None:
    data = os.urandom(5000)
    src = write(tmp_path / "chunk", data)
    key = obj.key("consumed.bin")
    await obj.store.put_file(
        key, src, content_type="application/octet-stream", metadata={}, consume=True
    )
    assert await read_all(obj.store, key) == data
    if obj.kind == "local":
        assert not src.exists()  # moved, not copied


async def test_put_stream_round_trip(obj: Store) -> None:
    data = os.urandom(300_000)
    key = obj.key("stream.bin")
    await obj.store.put_stream(
        key, blocks(data, 65_536), size=len(data), content_type="text/plain", metadata=META
    )
    info = await obj.store.stat(key)
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (len(data), "text/plain", META)
    assert await read_all(obj.store, key) == data


async def test_put_replaces_an_existing_object(obj: Store, tmp_path: Path) -> None:
    key = obj.key("same.bin")
    await obj.store.put_stream(
        key, blocks(b"first"), size=5, content_type="text/plain", metadata={"sha256": "1"}
    )
    await obj.store.put_file(
        key, write(tmp_path / "s", b"second!"), content_type="image/png", metadata={"sha256": "2"}
    )
    info = await obj.store.stat(key)
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (7, "image/png", {"sha256": "2"})
    assert await read_all(obj.store, key) == b"second!"


@pytest.mark.parametrize("actual", [999, 0, 1001], ids=["short", "empty", "long"])
async def test_put_stream_size_mismatch_is_an_error_and_stores_nothing(
    obj: Store, actual: int
) -> None:
    key = obj.key(f"mismatch-{actual}.bin")
    with pytest.raises(StorageError):
        await obj.store.put_stream(
            key,
            blocks(os.urandom(actual), 100),
            size=1000,
            content_type="application/octet-stream",
            metadata={},
        )
    assert await obj.store.stat(key) is None


async def test_zero_byte_object(obj: Store) -> None:
    key = obj.key("empty")
    await obj.store.put_stream(key, blocks(b""), size=0, content_type="text/plain", metadata={})
    info = await obj.store.stat(key)
    assert info is not None
    assert info.size == 0
    assert await read_all(obj.store, key) == b""
    assert await read_all(obj.store, key, 0, 0) == b""


@pytest.mark.parametrize(
    "value",
    [
        "Ünïcødé 文件 😀.png",
        "100% real; a=b, c&d #x ?y",
        "%41%42 looks encoded",
        "tab\tand\nnewline",
        "  padded name  ",
        "",
    ],
    ids=["unicode", "punctuation", "percent", "controls", "padded", "empty"],
)
async def test_metadata_values_round_trip_exactly(obj: Store, value: str) -> None:
    key = obj.key("meta.bin")
    meta = {"original-name": value, "owner": "bob"}
    await obj.store.put_stream(
        key, blocks(b"x"), size=1, content_type="application/pdf", metadata=meta
    )
    info = await obj.store.stat(key)
    assert info is not None
    assert dict(info.metadata) == meta


# --- ranges -------------------------------------------------------------------------------


RANGES = [
    (0, None),
    (0, 1000),
    (0, 1),
    (999, 1),
    (999, None),
    (500, 10_000),  # past the end: what exists
    (10, 0),
    (0, 0),
    (1000, 0),
]


async def test_get_ranges(obj: Store) -> None:
    data = os.urandom(1000)
    key = obj.key("ranges.bin")
    await obj.store.put_stream(key, blocks(data), size=len(data), content_type="x/y", metadata={})
    for start, length in RANGES:
        want = data[start:] if length is None else data[start : start + length]
        got = await read_all(obj.store, key, start, length)
        assert got == want, (start, length)


async def test_get_range_across_read_blocks(obj: Store) -> None:
    data = os.urandom(600_000)  # more than two 256 KiB read blocks
    key = obj.key("big-ranges.bin")
    await obj.store.put_stream(
        key, blocks(data, 100_000), size=len(data), content_type="x/y", metadata={}
    )
    for start, length in [(262_143, 2), (1, 599_998), (524_288, 75_712)]:
        assert await read_all(obj.store, key, start, length) == data[start : start + length]


# --- missing objects, delete --------------------------------------------------------------


async def test_stat_of_missing_is_none_and_get_of_missing_is_an_error(obj: Store) -> None:
    assert await obj.store.stat(obj.key("nothing/here.bin")) is None
    with pytest.raises(StorageError):
        await read_all(obj.store, obj.key("nothing/here.bin"))


async def test_delete_is_idempotent(obj: Store) -> None:
    key = obj.key("d/gone.bin")
    await obj.store.put_stream(key, blocks(b"abc"), size=3, content_type="x/y", metadata={"a": "b"})
    await obj.store.delete(key)
    assert await obj.store.stat(key) is None
    await obj.store.delete(key)
    await obj.store.delete(obj.key("never/existed.bin"))
    assert await obj.store.stat(key) is None
    # The key can be used again, and carries only the new metadata.
    await obj.store.put_stream(key, blocks(b"new"), size=3, content_type="x/z", metadata={})
    info = await obj.store.stat(key)
    assert info is not None
    assert dict(info.metadata) == {}
    assert await read_all(obj.store, key) == b"new"


@pytest.mark.parametrize(
    "rest",
    [
        "Ünïcødé/文件 name.png",
        "émilie/2024/05/01/ab12/Résumé final (2).pdf",
        "emoji 😀/spaces and + plus/file%20name.txt",
    ],
)
async def test_keys_with_unicode_segments(obj: Store, rest: str, tmp_path: Path) -> None:
    key = obj.key(rest)
    data = rest.encode() * 10
    await obj.store.put_file(key, write(tmp_path / "u", data), content_type="x/y", metadata={})
    info = await obj.store.stat(key)
    assert info is not None
    assert info.size == len(data)
    assert await read_all(obj.store, key, 3, 5) == data[3:8]
    await obj.store.delete(key)
    assert await obj.store.stat(key) is None


async def test_multipart_sized_object_round_trips(obj: Store, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB)  # three 5 MiB parts on S3
    digest = hashlib.sha256(data).hexdigest()
    src = write(tmp_path / "big.bin", data)
    key_file, key_stream = obj.key("big/file.bin"), obj.key("big/stream.bin")
    await obj.store.put_file(key_file, src, content_type="video/mp4", metadata={"sha256": digest})
    await obj.store.put_stream(
        key_stream,
        blocks(data, 256 * 1024),
        size=len(data),
        content_type="video/mp4",
        metadata={"sha256": digest},
    )
    for key in (key_file, key_stream):
        info = await obj.store.stat(key)
        assert info is not None
        assert info.size == len(data)
        assert info.metadata["sha256"] == digest
        got = hashlib.sha256()
        async for block in obj.store.get(key):
            got.update(block)
        assert got.hexdigest() == digest
        start = 5 * MiB - 10  # across a part boundary
        assert await read_all(obj.store, key, start, 20) == data[start : start + 20]


# --- presigned URLs -----------------------------------------------------------------------


async def test_presign_get(obj: Store) -> None:
    data = os.urandom(10_000)
    key = obj.key("presigned/Ünï file.bin")
    await obj.store.put_stream(key, blocks(data), size=len(data), content_type="x/y", metadata={})
    url = await obj.store.presign_get(key, expires=dt.timedelta(minutes=5), filename=None)
    if obj.kind != "s3":  # local disk, or encrypted: no presigned URLs
        assert url is None
        return
    assert url is not None
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    # The signature covers the key: another key with the same signature is refused.
    assert "presigned" in url
    forged = url.replace("presigned", "presigneX", 1)
    async with aiohttp.ClientSession() as session, session.get(forged) as resp:
        assert resp.status == 403


async def test_presign_get_with_filename_names_the_download(obj: Store) -> None:
    key = obj.key("presigned/named.bin")
    await obj.store.put_stream(key, blocks(b"hello"), size=5, content_type="x/y", metadata={})
    url = await obj.store.presign_get(
        key, expires=dt.timedelta(minutes=5), filename="report 2024.pdf"
    )
    if obj.kind != "s3":  # local disk, or encrypted: no presigned URLs
        assert url is None
        return
    assert url is not None
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == b"hello"
        # A Content-Disposition a browser understands: an attachment with that file name
        # (RFC 6266), not the bare name (which reads as an unknown disposition type).
        header = resp.headers.get("Content-Disposition", "")
        kind, _, params = header.partition(";")
        assert kind.strip().lower() == "attachment", header
        assert 'filename="report 2024.pdf"' in params, header


# --- local: keys stay inside the directory ------------------------------------------------


BAD_KEYS = [
    "../escape.bin",
    "a/../../escape.bin",
    "a/./b.bin",
    "/etc/passwd",
    "a//b.bin",
    "a/b/",
    "",
    ".meta/x.json",
    "..",
    "a/\x00b",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_local_refuses_keys_that_climb_or_are_absolute(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store" / "objects"
    store = LocalObjectStore(root)
    await store.open()
    src = write(tmp_path / "src", b"data")
    with pytest.raises(StorageError):
        await store.put_file(key, src, content_type="x/y", metadata={})
    with pytest.raises(StorageError):
        await store.put_stream(key, blocks(b"data"), size=4, content_type="x/y", metadata={})
    with pytest.raises(StorageError):
        await store.stat(key)
    with pytest.raises(StorageError):
        await read_all(store, key)
    with pytest.raises(StorageError):
        await store.delete(key)
    assert src.read_bytes() == b"data"
    # Nothing was written anywhere: only the (empty) metadata directory exists.
    written = [p for p in _walk(tmp_path) if p.is_file() and p != src]
    assert written == []
    assert not (tmp_path / "store" / "escape.bin").exists()


def _walk(root: Path) -> Iterable[Path]:
    return root.rglob("*")


async def test_local_metadata_never_collides_with_objects(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    await store.open()
    await store.put_stream(
        "a/b.json", blocks(b"object"), size=6, content_type="x/y", metadata={"k": "1"}
    )
    await store.put_stream("a/b", blocks(b"other"), size=5, content_type="x/z", metadata={"k": "2"})
    one, two = await store.stat("a/b.json"), await store.stat("a/b")
    assert one is not None and two is not None
    assert (one.content_type, dict(one.metadata)) == ("x/y", {"k": "1"})
    assert (two.content_type, dict(two.metadata)) == ("x/z", {"k": "2"})


# --- S3: credentials ----------------------------------------------------------------------


async def test_s3_wrong_secret_key_is_a_storage_error(s3_server: Any, tmp_path: Path) -> None:
    good = S3ObjectStore(_s3_settings(s3_server))
    bad = S3ObjectStore(_s3_settings(s3_server, secret_key="not-the-secret"))
    key = f"contract-{secrets.token_hex(6)}/creds.bin"
    try:
        await good.put_stream(key, blocks(b"kept"), size=4, content_type="x/y", metadata={})
        with pytest.raises(StorageError):
            await bad.open()
        with pytest.raises(StorageError):
            await bad.put_file(
                key + ".2", write(tmp_path / "s", b"data"), content_type="x/y", metadata={}
            )
        with pytest.raises(StorageError):
            await bad.put_stream(
                key + ".3", blocks(b"data"), size=4, content_type="x/y", metadata={}
            )
        # Refused is not "absent": a caller must never conclude the object is missing.
        with pytest.raises(StorageError):
            await bad.stat(key)
        with pytest.raises(StorageError):
            await read_all(bad, key)
        with pytest.raises(StorageError):
            await bad.delete(key)
        assert await good.stat(key + ".2") is None
        assert await good.stat(key + ".3") is None
        assert await read_all(good, key) == b"kept"
    finally:
        await good.close()
        await bad.close()


async def test_s3_open_creates_a_missing_bucket(s3_server: Any) -> None:
    bucket = f"tus-contract-{secrets.token_hex(4)}"
    store = S3ObjectStore(_s3_settings(s3_server, bucket=bucket))
    try:
        await store.open()
        await store.open()  # idempotent
        assert s3_server.client().bucket_exists(bucket)
        await store.put_stream("k", blocks(b"1"), size=1, content_type="x/y", metadata={})
        await store.delete("k")
    finally:
        await store.close()
        s3_server.client().remove_bucket(bucket)


async def test_presigned_headers_never_carry_control_characters(obj: Store) -> None:
    if obj.kind != "s3":
        pytest.skip("only S3 presigns")
    key = obj.key("presigned/crlf.bin")
    await obj.store.put_stream(key, blocks(b"hello"), size=5, content_type="x/y", metadata={})
    with pytest.raises(ValueError):
        await obj.store.presign_get(
            key,
            expires=dt.timedelta(minutes=1),
            filename=None,
            content_disposition='attachment; filename="a"\r\nSet-Cookie: x=1',
        )
    url = await obj.store.presign_get(
        key, expires=dt.timedelta(minutes=1), filename="a\r\nSet-Cookie: x=1.pdf"
    )
    assert url is not None
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "Set-Cookie" not in resp.headers
        assert "\r" not in resp.headers["Content-Disposition"]
