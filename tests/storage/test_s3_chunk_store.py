"""The S3 chunk store as several instances see it: no instance trusts a stale cache."""

from __future__ import annotations

import datetime as dt
import io
import os
import secrets
from typing import Any

import pytest

from storage_backends.base import ListingRefused, StorageError
from storage_backends.s3 import S3ChunkStore
from tests.storage.test_s3_sse import PART, blocks, prefix, settings

pytestmark = pytest.mark.s3


async def test_an_upload_completed_by_another_instance_reports_its_offset(
    s3_server: Any,
) -> None:
    base = prefix()
    a = S3ChunkStore(settings(s3_server, ""), prefix=base)
    b = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await a.open()
    await b.open()
    try:
        data = os.urandom(70_000)
        await a.create("up", length=len(data))
        assert await a.write("up", 0, blocks(data)) == len(data)
        assert await a.get_offset("up") == len(data)  # A now caches the multipart id
        await b.finish("up")  # B completes it: the multipart upload is gone
        assert await a.get_offset("up") == len(data)
        assert b"".join([x async for x in a.read("up", 0, len(data))]) == data
    finally:
        await a.close()
        await b.close()


def _left_behind(s3_server: Any, base: str) -> tuple[list[str], list[str]]:
    client = s3_server.client()
    objects = [
        o.object_name for o in client.list_objects(s3_server.bucket, prefix=base, recursive=True)
    ]
    uploads = client._list_multipart_uploads(s3_server.bucket, prefix=base).uploads
    return objects, [u.object_name for u in uploads]


async def test_a_delete_that_cannot_reach_s3_says_so_and_a_later_one_deletes_all(
    s3_server: Any,
) -> None:
    """Deleting an unfinished upload while S3 is unreachable raises (it returned as if done,
    leaving the multipart upload and its objects for good); the next delete, S3 back,
    leaves nothing."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    try:
        await store.create("up", length=1000)
        await store.write("up", 0, blocks(os.urandom(500)))
        store._info_cache.clear()  # (as in another instance: the id is read from .info)
        run = store._objects._run

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise StorageError("S3 unreachable: [Errno 111] Connection refused")

        store._objects._run = unreachable  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await store.delete("up")
        store._objects._run = run  # type: ignore[method-assign]
        assert _left_behind(s3_server, base) != ([], [])
        await store.delete("up")
        assert _left_behind(s3_server, base) == ([], [])
        await store.delete("up")  # gone already: fine
    finally:
        await store.close()


async def test_a_finish_stopped_before_its_info_is_finished_on_the_next_look(
    s3_server: Any,
) -> None:
    """finish() completes the multipart upload, then writes the .info that says so: stopped
    in between (a crash, S3 unreachable for that one write), the upload is whole in S3, and
    the next look (another instance, a restart) says so and repairs .info; it answered 410."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    data = os.urandom(100_000)
    try:
        await store.create("up", length=len(data))
        await store.write("up", 0, blocks(data))
        write_info = store._write_info

        async def stops(upload_id: str, info: dict[str, Any]) -> None:
            if info.get("mp") is None:
                raise StorageError("S3 unreachable: injected")
            await write_info(upload_id, info)

        store._write_info = stops  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await store.finish("up")
    finally:
        await store.close()
    for look in ("get_offset", "finish"):
        again = S3ChunkStore(settings(s3_server, ""), prefix=base)
        await again.open()
        try:
            if look == "finish":
                await again.finish("up")
            assert await again.get_offset("up") == len(data)
            assert b"".join([b async for b in again.read("up", 0, len(data))]) == data
        finally:
            await again.close()


async def test_a_concatenation_done_again_leaves_no_multipart_upload(s3_server: Any) -> None:
    """Partials under 5 MiB are concatenated through this process, in a multipart upload of
    the final's: an attempt that failed must not leave its multipart upload when the next one
    makes a new one (nothing would ever remove it)."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    try:
        a, b = os.urandom(1000), os.urandom(2000)
        for upload_id, data in (("pa", a), ("pb", b)):
            await store.create(upload_id, length=len(data))
            await store.write(upload_id, 0, blocks(data))
            await store.finish(upload_id)
        finish = store.finish
        calls = 0

        async def once_failing(upload_id: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StorageError("S3 unreachable: injected")
            await finish(upload_id)

        store.finish = once_failing  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await store.concatenate("final", ["pa", "pb"], fsync=False)
        assert await store.concatenate("final", ["pa", "pb"], fsync=False) == 3000
        assert await store.get_offset("final") == 3000  # the first attempt's tail is gone
        assert b"".join([x async for x in store.read("final", 0, 3000)]) == a + b
        assert _left_behind(s3_server, base)[1] == []
    finally:
        await store.close()


def _failing_part(store: S3ChunkStore, number: int) -> Any:
    """Make the upload of part ``number`` fail once, after the parts beside it were sent."""
    upload_part = store._upload_part
    failed: list[int] = []

    async def flaky(upload_id: str, mp: str, n: int, data: bytes) -> None:
        if n == number and not failed:
            failed.append(n)
            raise StorageError("S3 unreachable: injected")
        await upload_part(upload_id, mp, n, data)

    store._upload_part = flaky  # type: ignore[method-assign]
    return upload_part


async def _finish_and_check(store: S3ChunkStore, data: bytes) -> None:
    """Send what the upload lacks from the offset the store reports, finish, read it back."""
    offset = await store.get_offset("up")
    if offset < len(data):
        assert await store.write("up", offset, blocks(data[offset:])) == len(data) - offset
    await store.finish("up")
    assert b"".join([b async for b in store.read("up", 0, len(data))]) == data


@pytest.mark.parametrize("resend", ["shorter", "whole"])
async def test_a_part_stored_after_a_failed_part_holds_its_place(
    s3_server: Any, resend: str
) -> None:
    """Parts go up two at a time: part 1 fails and part 2 is stored. Part 2 holds the
    upload's bytes of its place whatever request stored it: once a resend fills part 1, it
    counts, and a shorter resend's tail (bytes part 2 holds too) is dropped. The offset
    jumped over part 2 and counted the tail after it (the file silently corrupt); a server
    that lists a part uploaded again twice made a whole resend fall short."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    other = S3ChunkStore(settings(s3_server, ""), prefix=base)  # another instance
    await store.open()
    await other.open()
    data = os.urandom(2 * PART + 1000)
    try:
        await store.create("up", length=len(data))
        assert await other.get_offset("up") == 0  # it caches what the .info says now
        _failing_part(store, 1)
        with pytest.raises(StorageError):
            await store.write("up", 0, blocks(data[: 2 * PART]))
        assert await store.get_offset("up") == 0
        assert await other.get_offset("up") == 0
        sent = PART + 1000 if resend == "shorter" else len(data)
        assert await store.write("up", 0, blocks(data[:sent])) == sent
        expected = 2 * PART if resend == "shorter" else len(data)
        assert await store.get_offset("up") == expected
        assert await other.get_offset("up") == expected
        await _finish_and_check(other, data)
        assert _left_behind(s3_server, base)[1] == []
    finally:
        await store.close()
        await other.close()


async def test_a_failed_part_that_reaches_s3_late_holds_its_place(s3_server: Any) -> None:
    """Part 1's request fails for the client but reaches S3 after the resend (the same
    bytes): the parts count on every instance, the resend's tail does not."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    other = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    await other.open()
    data = os.urandom(2 * PART + 1000)
    try:
        await store.create("up", length=len(data))
        assert await other.get_offset("up") == 0
        upload_part = _failing_part(store, 1)
        with pytest.raises(StorageError):
            await store.write("up", 0, blocks(data[: 2 * PART]))
        assert await store.write("up", 0, blocks(data[: PART + 1000])) == PART + 1000
        await upload_part("up", store._info_cache["up"], 1, data[:PART])  # late
        assert await store.get_offset("up") == 2 * PART
        assert await other.get_offset("up") == 2 * PART
        await _finish_and_check(other, data)
    finally:
        await store.close()
        await other.close()


async def test_a_late_last_part_makes_the_tail_after_it_stale(s3_server: Any) -> None:
    """The last part of a PATCH fails (its request reaches S3 late) and the resend is
    shorter than a part, so it goes to the tail. When the late part lands, the tail (bytes
    the part holds too) no longer counts after it: the offset counted them twice."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    data = os.urandom(2 * PART + 1000)
    try:
        await store.create("up", length=len(data))
        upload_part = _failing_part(store, 2)
        with pytest.raises(StorageError):
            await store.write("up", 0, blocks(data[: 2 * PART]))
        assert await store.get_offset("up") == PART
        assert await store.write("up", PART, blocks(data[PART : PART + 1000])) == 1000
        assert await store.get_offset("up") == PART + 1000
        await upload_part("up", store._info_cache["up"], 2, data[PART : 2 * PART])  # late
        assert await store.get_offset("up") == 2 * PART
        await _finish_and_check(store, data)
    finally:
        await store.close()


async def test_a_failed_part_costs_no_part_number(s3_server: Any, monkeypatch: Any) -> None:
    """An upload whose length fills S3's part limit exactly (a 48.8 GiB upload in 10,000
    parts of 5 MiB; scaled down here to 3 parts) is still completed after a failed part."""
    from storage_backends.s3 import chunks

    monkeypatch.setattr(chunks, "MAX_PARTS", 3)
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    data = os.urandom(3 * PART)
    try:
        await store.create("up", length=len(data))
        _failing_part(store, 1)
        with pytest.raises(StorageError):
            await store.write("up", 0, blocks(data[: 2 * PART]))
        assert await store.get_offset("up") == 0
        assert await store.append_limit("up", 0) >= len(data)
        await _finish_and_check(store, data)
    finally:
        await store.close()


async def test_a_write_at_an_offset_a_late_part_moved_stores_nothing(s3_server: Any) -> None:
    """The service reads the offset (a part and a tail), checks the client's Upload-Offset,
    then writes. A failed part that reaches S3 late in between moves the offset: the write
    is refused and touches nothing (it put the body after the late part, shifted)."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    data = os.urandom(2 * PART + 1000)
    try:
        await store.create("up", length=len(data))
        upload_part = _failing_part(store, 2)
        with pytest.raises(StorageError):
            await store.write("up", 0, blocks(data[: 2 * PART]))
        assert await store.write("up", PART, blocks(data[PART : PART + 1000])) == 1000
        offset = await store.get_offset("up")  # what the service reads under the lock
        assert offset == PART + 1000
        await upload_part("up", store._info_cache["up"], 2, data[PART : 2 * PART])  # late
        with pytest.raises(StorageError, match="reached S3 late"):
            await store.write("up", offset, blocks(data[offset:]))
        assert await store.get_offset("up") == 2 * PART
        await _finish_and_check(store, data)
    finally:
        await store.close()


async def test_a_failed_part_upload_keeps_the_acknowledged_tail(s3_server: Any) -> None:
    """The tail holds acknowledged bytes: a PATCH whose part upload fails (S3 answers 503)
    must leave them. The tail was deleted before the part went up, and the offset went back
    to 0."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    data = os.urandom(2 * PART + 1000)
    try:
        await store.create("up", length=len(data))
        assert await store.write("up", 0, blocks(data[:1000])) == 1000  # a tail
        _failing_part(store, 1)
        with pytest.raises(StorageError):
            await store.write("up", 1000, blocks(data[1000 : PART + 5000]))
        assert await store.get_offset("up") == 1000
        await _finish_and_check(store, data)
        assert _left_behind(s3_server, base)[0] == [f"{base}up", f"{base}up.info"]
    finally:
        await store.close()


# --- the listing for the orphan sweep --------------------------------------------------------


def _soon() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)


@pytest.mark.parametrize("own", ["", "tus", "tus/uploads"])
async def test_without_a_prefix_of_its_own_the_store_does_not_list(
    s3_server: Any, own: str
) -> None:
    """With an empty prefix the bucket's other objects (committed files under a flat key
    template) could carry names like an upload's pieces; with one that does not end in a
    ``/``, a neighbouring prefix's (``tus-b<id>.info`` under ``tus``): no listing, so no
    orphan sweep."""
    store = S3ChunkStore(settings(s3_server, ""), prefix=own)
    with pytest.raises(ListingRefused):
        [p async for p in store.list_uploads(modified_before=_soon())]
    await store.close()


async def test_only_the_pieces_right_under_the_prefix_are_listed(s3_server: Any) -> None:
    """Keys deeper under the prefix, and names that are not an upload's ``.info`` or
    multipart upload, are someone else's: never listed, so never removed."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    await store.open()
    try:
        await store.create("mine", length=3)
        client, bucket = s3_server.client(), s3_server.bucket
        other = secrets.token_hex(16)
        for key in (f"{base}deeper/{other}.info", f"{base}{other}.txt", f"{base}a b.info"):
            client.put_object(bucket, key, io.BytesIO(b"{}"), 2)
        client._create_multipart_upload(bucket, f"{base}deeper/{other}", {})
        client._create_multipart_upload(bucket, f"{base}{other}.bin", {})
        pieces = [p.upload_id async for p in store.list_uploads(modified_before=_soon())]
        assert sorted(pieces) == ["mine", "mine"]  # its .info and its multipart upload
    finally:
        await store.close()


async def test_an_info_that_is_not_the_stores_is_left_alone(s3_server: Any) -> None:
    """An object named like a ``.info`` whose content is not this store's is listed (by
    its name) but not removed: the orphan sweep reports the error and goes on."""
    base = prefix()
    store = S3ChunkStore(settings(s3_server, ""), prefix=base)
    try:
        client, bucket = s3_server.client(), s3_server.bucket
        client.put_object(bucket, f"{base}theirs.info", io.BytesIO(b"not json"), 8)
        client.put_object(bucket, f"{base}theirs", io.BytesIO(b"a file"), 6)
        assert [p.upload_id async for p in store.list_uploads(modified_before=_soon())] == [
            "theirs"
        ]
        with pytest.raises(StorageError):
            await store.remove_orphan("theirs")
        assert sorted(_left_behind(s3_server, base)[0]) == [f"{base}theirs", f"{base}theirs.info"]
    finally:
        await store.close()
