"""One contract for every ChunkStore: local disk, S3 (SeaweedFS) and the encrypted local store.

Each test runs against the three stores and asks for optional abilities the way the service
does, by the Protocols of storage_backends.base (Finisher, Concatenater, PartLimited,
UnfinishedReader, ServerSideCopier, LocalFileAccess, Lifecycle): a store that declares an
ability is held to it, a store that does not is not asked. A "restart" is a second instance
of the store over the same directory or bucket prefix, as after a crash of the server.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage_backends.base import (
    ChunkStore,
    Concatenater,
    Finisher,
    Lifecycle,
    LocalFileAccess,
    ObjectStore,
    PartLimited,
    ServerSideCopier,
    StorageError,
    UnfinishedReader,
    UploadDataMissing,
    UploadLister,
)
from storage_backends.encryption import (
    EncryptedChunkStore,
    EncryptedObjectStore,
    KeyRing,
    generate_key_spec,
)
from storage_backends.local import LocalChunkStore, LocalObjectStore
from storage_backends.s3 import S3ChunkStore, S3ObjectStore, S3Settings
from storage_backends.s3 import chunks as s3_chunks

MiB = 1024 * 1024
#: Small segments, so that every test of the encrypted store crosses several of them.
SEGMENT = 4096
_KEYS = KeyRing.from_specs([generate_key_spec("chunk-contract")])

STORES = ["local", pytest.param("s3", marks=pytest.mark.s3), "encrypted"]


@dataclass
class Harness:
    """Makes instances of one kind of store over the same place (a restart makes another)."""

    kind: str
    make: Callable[[], ChunkStore]
    #: The object store a commit from this chunk store goes to in production.
    make_objects: Callable[[], ObjectStore]

    async def open(self) -> ChunkStore:
        store = self.make()
        if isinstance(store, Lifecycle):
            await store.open()
        return store


def _s3_settings(s3: Any) -> S3Settings:
    return S3Settings(
        endpoint=s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        bucket=s3.bucket,
        region=s3.region,
        secure=False,
        part_size=5 * MiB,
        parallel_parts=2,
    )


@pytest.fixture(params=STORES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    kind: str = request.param
    if kind == "local":
        return Harness(
            kind,
            lambda: LocalChunkStore(tmp_path / "uploads", max_size=64 * MiB),
            lambda: LocalObjectStore(tmp_path / "objects"),
        )
    if kind == "encrypted":
        return Harness(
            kind,
            lambda: EncryptedChunkStore(
                tmp_path / "uploads", _KEYS, segment_size=SEGMENT, max_size=64 * MiB
            ),
            lambda: EncryptedObjectStore(
                LocalObjectStore(tmp_path / "objects"), _KEYS, segment_size=SEGMENT
            ),
        )
    s3 = request.getfixturevalue("s3_server")
    prefix = f"chunk-contract-{secrets.token_hex(6)}/"  # one per test: the bucket is shared
    return Harness(
        kind,
        lambda: S3ChunkStore(_s3_settings(s3), prefix=prefix, max_size=64 * MiB),
        lambda: S3ObjectStore(_s3_settings(s3)),
    )


@pytest.fixture
async def store(harness: Harness) -> AsyncIterator[ChunkStore]:
    opened = await harness.open()
    try:
        yield opened
    finally:
        if isinstance(opened, Lifecycle):
            await opened.close()


async def blocks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def failing_after(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """The body of a client that sends ``data`` and then drops the connection."""
    async for block in blocks(data, size):
        yield block
    raise ConnectionResetError("the client went away")


def new_id() -> str:
    return secrets.token_hex(16)


def can_read_unfinished(store: ChunkStore) -> bool:
    return not isinstance(store, Finisher) or isinstance(store, UnfinishedReader)


async def read_all(store: ChunkStore, upload_id: str, start: int, length: int) -> bytes:
    return b"".join([b async for b in store.read(upload_id, start, length)])


async def finished(store: ChunkStore, upload_id: str) -> None:
    if isinstance(store, Finisher):
        await store.finish(upload_id)


async def write_all(
    store: ChunkStore, upload_id: str, data: bytes, pieces: Iterable[int], *, at: int = 0
) -> int:
    """Write ``data`` in several PATCHes of the given sizes (the rest in the last)."""
    offset = at
    rest = data
    for size in [*pieces, len(data)]:
        if not rest:
            break
        chunk, rest = rest[:size], rest[size:]
        offset += await store.write(upload_id, offset, blocks(chunk, 777))
    assert offset == at + len(data)
    return offset


# --- create, write, offset ------------------------------------------------------------------


async def test_a_new_upload_holds_nothing(store: ChunkStore) -> None:
    uid = new_id()
    await store.create(uid, length=1000)
    assert await store.get_offset(uid) == 0
    if can_read_unfinished(store):
        assert await read_all(store, uid, 0, 0) == b""


async def test_writes_at_offsets_append_and_read_back(store: ChunkStore) -> None:
    data = os.urandom(3 * SEGMENT + 123)
    uid = new_id()
    await store.create(uid, length=len(data))
    offset = 0
    for size in (1, SEGMENT - 1, 1500, SEGMENT + 7, len(data)):
        chunk = data[offset : offset + size]
        written = await store.write(uid, offset, blocks(chunk, 500))
        assert written == len(chunk)
        offset += written
        assert await store.get_offset(uid) == offset
        if offset == len(data):
            break
    assert offset == len(data)
    if can_read_unfinished(store):
        assert await read_all(store, uid, 0, len(data)) == data
    await finished(store, uid)
    assert await store.get_offset(uid) == len(data)
    assert await read_all(store, uid, 0, len(data)) == data


async def test_an_empty_write_changes_nothing(store: ChunkStore) -> None:
    uid = new_id()
    await store.create(uid)
    assert await store.write(uid, 0, blocks(b"")) == 0
    await store.write(uid, 0, blocks(b"abc"))
    assert await store.write(uid, 3, blocks(b"")) == 0
    assert await store.get_offset(uid) == 3


async def test_deferred_length_uploads_take_bytes(store: ChunkStore) -> None:
    data = os.urandom(10_000)
    uid = new_id()
    await store.create(uid, length=None)
    await write_all(store, uid, data, [4000])
    await finished(store, uid)
    assert await read_all(store, uid, 0, len(data)) == data


async def test_a_large_upload_crosses_parts_and_segments(store: ChunkStore) -> None:
    """More than one S3 part (5 MiB) and many segments, written in blocks of 64 KiB."""
    data = os.urandom(6 * MiB + 17)
    uid = new_id()
    await store.create(uid, length=len(data))
    offset = await store.write(uid, 0, blocks(data[: 5 * MiB + 1], 64 * 1024))
    offset += await store.write(uid, offset, blocks(data[offset:], 64 * 1024))
    assert offset == len(data)
    assert await store.get_offset(uid) == len(data)
    await finished(store, uid)
    got = await read_all(store, uid, 0, len(data))
    assert len(got) == len(data) and got == data


# --- interruptions and restarts -------------------------------------------------------------


async def test_the_offset_survives_a_restart(harness: Harness, store: ChunkStore) -> None:
    data = os.urandom(2 * SEGMENT + 999)
    uid = new_id()
    await store.create(uid, length=len(data))
    half = len(data) // 2 + 1
    await store.write(uid, 0, blocks(data[:half]))
    again = await harness.open()  # the server restarted
    try:
        assert await again.get_offset(uid) == half
        await again.write(uid, half, blocks(data[half:]))
        assert await again.get_offset(uid) == len(data)
        await finished(again, uid)
        assert await read_all(again, uid, 0, len(data)) == data
    finally:
        if isinstance(again, Lifecycle):
            await again.close()


async def test_an_interrupted_body_keeps_what_it_received(
    harness: Harness, store: ChunkStore
) -> None:
    """The source fails: the error propagates, the offset is at most what was received and
    says exactly what the store holds (never more), and the upload resumes from there."""
    data = os.urandom(3 * SEGMENT + 500)
    uid = new_id()
    await store.create(uid, length=len(data))
    await store.write(uid, 0, blocks(data[:1000]))
    sent = 2 * SEGMENT + 10
    with pytest.raises(ConnectionResetError):
        await store.write(uid, 1000, failing_after(data[1000:sent]))
    offset = await store.get_offset(uid)
    assert offset <= sent
    if not isinstance(store, PartLimited):
        # Local stores keep every byte received; S3 may fall back to the last whole part.
        assert offset == sent
    again = await harness.open()  # what a restart sees is the same
    try:
        assert await again.get_offset(uid) == offset
    finally:
        if isinstance(again, Lifecycle):
            await again.close()
    await store.write(uid, offset, blocks(data[offset:]))
    await finished(store, uid)
    assert await read_all(store, uid, 0, len(data)) == data


async def test_a_chunk_that_fails_verification_is_discarded(store: ChunkStore) -> None:
    data = os.urandom(2 * SEGMENT + 5)
    uid = new_id()
    await store.create(uid, length=len(data))
    await store.write(uid, 0, blocks(data[:100]))

    def reject() -> None:
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError, match="checksum mismatch"):
        await store.write(uid, 100, blocks(os.urandom(SEGMENT)), verify=reject)
    assert await store.get_offset(uid) == 100
    checked: list[bool] = []
    written = await store.write(
        uid, 100, blocks(data[100:]), verify=lambda: checked.append(True), fsync=True
    )
    assert written == len(data) - 100 and checked == [True]
    assert await store.get_offset(uid) == len(data)
    await finished(store, uid)
    assert await read_all(store, uid, 0, len(data)) == data


# --- reading --------------------------------------------------------------------------------


async def test_read_ranges(store: ChunkStore) -> None:
    data = os.urandom(4 * SEGMENT + 321)
    uid = new_id()
    await store.create(uid, length=len(data))
    await write_all(store, uid, data, [SEGMENT + 1, 2 * SEGMENT])
    await finished(store, uid)
    n = len(data)
    for start, length in [
        (0, n),
        (0, 1),
        (n - 1, 1),
        (SEGMENT - 1, 2),
        (SEGMENT, SEGMENT),
        (123, 3 * SEGMENT),
        (n - 321, 321),
        (5, 0),
    ]:
        assert await read_all(store, uid, start, length) == data[start : start + length], (
            start,
            length,
        )


async def test_unfinished_uploads_read_back_where_declared(store: ChunkStore) -> None:
    data = os.urandom(SEGMENT + 77)
    uid = new_id()
    await store.create(uid, length=2 * len(data))
    await store.write(uid, 0, blocks(data))
    if not can_read_unfinished(store):
        pytest.skip(f"{type(store).__name__} does not declare UnfinishedReader")
    assert await read_all(store, uid, 0, len(data)) == data
    assert await read_all(store, uid, 10, SEGMENT) == data[10 : 10 + SEGMENT]


# --- finish, concatenation, commit ----------------------------------------------------------


async def test_finish_is_idempotent(harness: Harness, store: ChunkStore) -> None:
    if not isinstance(store, Finisher):
        pytest.skip(f"{type(store).__name__} is not a Finisher")
    for data in (b"", os.urandom(SEGMENT), os.urandom(SEGMENT + 3)):
        uid = new_id()
        await store.create(uid, length=len(data))
        await store.write(uid, 0, blocks(data))
        await store.finish(uid)
        await store.finish(uid)
        assert await store.get_offset(uid) == len(data)
        assert await read_all(store, uid, 0, len(data)) == data
        again = await harness.open()
        try:
            await again.finish(uid)  # type: ignore[attr-defined]
            assert await again.get_offset(uid) == len(data)
        finally:
            if isinstance(again, Lifecycle):
                await again.close()


async def test_concatenate_where_declared(store: ChunkStore) -> None:
    if not isinstance(store, Concatenater):
        pytest.skip(f"{type(store).__name__} is not a Concatenater")
    parts = [os.urandom(n) for n in (SEGMENT + 1, 0, 3 * SEGMENT - 2, 10)]
    ids = []
    for data in parts:
        uid = new_id()
        await store.create(uid, length=len(data))
        await store.write(uid, 0, blocks(data))
        await finished(store, uid)
        ids.append(uid)
    final = new_id()
    total = await store.concatenate(final, ids, fsync=False)
    assert total == sum(map(len, parts))
    await finished(store, final)
    assert await store.get_offset(final) == total
    assert await read_all(store, final, 0, total) == b"".join(parts)
    # The parts are left as they were.
    assert await read_all(store, ids[0], 0, len(parts[0])) == parts[0]


async def test_concatenating_a_missing_part_fails(store: ChunkStore) -> None:
    if not isinstance(store, Concatenater):
        pytest.skip(f"{type(store).__name__} is not a Concatenater")
    with pytest.raises(UploadDataMissing):
        await store.concatenate(new_id(), [new_id()], fsync=False)


async def test_commit_by_server_side_copy_where_declared(
    harness: Harness, store: ChunkStore
) -> None:
    """A ServerSideCopier commits into its own kind of object store (True, and the object
    reads back as the upload); into a foreign one it answers False and changes nothing."""
    if not isinstance(store, ServerSideCopier):
        pytest.skip(f"{type(store).__name__} is not a ServerSideCopier")
    data = os.urandom(2 * SEGMENT + 9)
    uid = new_id()
    await store.create(uid, length=len(data))
    await store.write(uid, 0, blocks(data))
    await finished(store, uid)
    objects = harness.make_objects()
    await objects.open()
    try:
        key = f"chunk-contract-{secrets.token_hex(6)}/obj.bin"
        foreign = object()
        assert not await store.copy_into(uid, foreign, key, content_type="a/b", metadata={})
        ok = await store.copy_into(
            uid, objects, key, content_type="image/png", metadata={"sha256": "ab" * 32}
        )
        assert ok
        info = await objects.stat(key)
        assert info is not None and info.size == len(data)
        assert info.content_type == "image/png"
        assert dict(info.metadata)["sha256"] == "ab" * 32
        assert b"".join([b async for b in objects.get(key)]) == data
        await objects.delete(key)
    finally:
        if isinstance(objects, Lifecycle):
            await objects.close()


async def test_local_file_access_is_the_upload(store: ChunkStore) -> None:
    if not isinstance(store, LocalFileAccess):
        pytest.skip(f"{type(store).__name__} does not declare LocalFileAccess")
    data = os.urandom(5000)
    uid = new_id()
    await store.create(uid, length=len(data))
    await store.write(uid, 0, blocks(data))
    assert store.local_path(uid).read_bytes() == data


# --- delete, missing data -------------------------------------------------------------------


async def test_delete_removes_the_upload(store: ChunkStore) -> None:
    uid = new_id()
    await store.create(uid, length=10)
    await store.write(uid, 0, blocks(b"0123456789"))
    await finished(store, uid)
    await store.delete(uid)
    with pytest.raises(UploadDataMissing):
        await store.get_offset(uid)
    await store.delete(uid)  # already gone: no error


async def test_an_unknown_upload_is_data_missing(store: ChunkStore) -> None:
    uid = new_id()
    with pytest.raises(UploadDataMissing):
        await store.get_offset(uid)
    with pytest.raises(UploadDataMissing):
        await store.write(uid, 0, blocks(b"abc"))
    with pytest.raises(UploadDataMissing):
        await read_all(store, uid, 0, 3)
    await store.delete(uid)  # no error


async def test_reading_past_what_is_held_is_an_error(store: ChunkStore) -> None:
    uid = new_id()
    await store.create(uid, length=100)
    await store.write(uid, 0, blocks(b"x" * 50))
    await finished(store, uid)
    with pytest.raises(StorageError):
        await read_all(store, uid, 0, 100)


# --- limits ---------------------------------------------------------------------------------


async def test_limits_are_declared(store: ChunkStore) -> None:
    assert store.capabilities.max_size == 64 * MiB
    if isinstance(store, PartLimited):
        uid = new_id()
        await store.create(uid, length=None)
        first = await store.append_limit(uid, 0)
        assert first > 0
        assert await store.append_limit(uid, 1000) == first - 1000
        assert await store.append_limit(uid, first) == 0
        assert await store.append_limit(uid, first + 1) == 0


async def test_upload_ids_cannot_escape_the_store(store: ChunkStore) -> None:
    if isinstance(store, PartLimited):
        pytest.skip("S3 keys are opaque: there is no path to escape")
    for bad in ("../x", "a/b", "", "x" * 65, "a\x00b"):
        with pytest.raises(StorageError):
            await store.create(bad)


# --- listing, for the orphan sweep ----------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def listed(store: ChunkStore, before: dt.datetime) -> collections.Counter[str]:
    """How many pieces of each upload the store lists as last written before ``before``."""
    assert isinstance(store, UploadLister)
    return collections.Counter(
        [p.upload_id async for p in store.list_uploads(modified_before=before)]
    )


async def test_every_store_lists_its_uploads_by_when_it_wrote_them(store: ChunkStore) -> None:
    """Every store of the project can list: an entry a crash left without its row is found.
    (Each test has a directory or S3 prefix of its own: the listing holds only its uploads.)"""
    assert isinstance(store, UploadLister)
    # S3 keeps LastModified to the second: the bounds leave a second's room either side.
    started = _now() - dt.timedelta(seconds=2)
    empty, some, done = new_id(), new_id(), new_id()
    await store.create(empty, length=10)
    await store.create(some)
    await store.write(some, 0, blocks(b"abcde"))
    await store.create(done, length=3)
    await store.write(done, 0, blocks(b"xyz"))
    await finished(store, done)
    soon = _now() + dt.timedelta(seconds=2)
    assert set(await listed(store, soon)) == {empty, some, done}
    assert not await listed(store, started)  # nothing of theirs is that old
    times = [p.modified async for p in store.list_uploads(modified_before=soon)]
    assert all(started <= t <= soon and t.utcoffset() == dt.timedelta(0) for t in times)


async def test_remove_orphan_leaves_nothing_of_the_upload(store: ChunkStore) -> None:
    assert isinstance(store, UploadLister)
    keep, gone, done = new_id(), new_id(), new_id()
    for uid in (keep, gone, done):
        await store.create(uid, length=10)
        await store.write(uid, 0, blocks(b"01234"))
    await store.write(done, 5, blocks(b"56789"))
    await finished(store, done)
    await store.remove_orphan(gone)
    await store.remove_orphan(done)
    for uid in (gone, done):
        with pytest.raises(UploadDataMissing):
            await store.get_offset(uid)
    assert set(await listed(store, _now() + dt.timedelta(seconds=2))) == {keep}
    assert await store.get_offset(keep) == 5
    await store.remove_orphan(gone)  # gone already: no error


async def _crash_leftover(harness: Harness, store: ChunkStore) -> str:
    """What a process killed in the middle of ``create`` leaves, that ``delete`` alone
    would not find or that has no data file: a staged chunk alone (local), a key sidecar
    alone (encrypted: it is written before the data file), a multipart upload no ``.info``
    names (S3: the ``.info`` is written after it)."""
    uid = new_id()
    if isinstance(store, LocalChunkStore):
        (store.root / f"{uid}.stage").write_bytes(b"half a chunk")
    elif isinstance(store, EncryptedChunkStore):
        await store.create(uid)
        (store.root / uid).unlink()
    else:
        assert isinstance(store, S3ChunkStore)
        key = store._key(uid)
        headers = {"Content-Type": "application/octet-stream"}
        await store._run(store._client._create_multipart_upload, store._s.bucket, key, headers)
    return uid


async def _multipart_keys(store: ChunkStore) -> list[str]:
    if not isinstance(store, S3ChunkStore):
        return []
    result = await store._run(
        store._client._list_multipart_uploads, store._s.bucket, prefix=store._prefix
    )
    return [u.object_name for u in result.uploads]


async def test_what_a_crash_in_create_leaves_is_listed_and_removed(
    harness: Harness, store: ChunkStore
) -> None:
    assert isinstance(store, UploadLister)
    whole = new_id()
    await store.create(whole, length=3)
    left = await _crash_leftover(harness, store)
    soon = _now() + dt.timedelta(seconds=2)
    assert set(await listed(store, soon)) == {whole, left}
    await store.remove_orphan(left)
    assert set(await listed(store, soon)) == {whole}
    assert await _multipart_keys(store) == ([store._key(whole)] if harness.kind == "s3" else [])
    assert await store.get_offset(whole) == 0


async def test_the_listing_goes_a_page_at_a_time(
    harness: Harness, store: ChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of two (directory entries, S3 keys, multipart uploads): every upload is listed,
    each of its pieces once."""
    monkeypatch.setattr("storage_backends.fileio.LIST_PAGE", 2)
    monkeypatch.setattr(s3_chunks, "_LIST_PAGE", 2)
    ids = {new_id() for _ in range(5)}
    for uid in ids:
        await store.create(uid)
    counts = await listed(store, _now() + dt.timedelta(seconds=2))
    assert set(counts) == ids
    # local: the file; encrypted: the file and its key; S3: the .info and the multipart upload
    assert set(counts.values()) == {1 if harness.kind == "local" else 2}
