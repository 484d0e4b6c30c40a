"""The S3 chunk store as several instances see it: no instance trusts a stale cache."""

from __future__ import annotations

import os
from typing import Any

import pytest

from storage_backends.base import StorageError
from storage_backends.s3 import S3ChunkStore
from tests.storage.test_s3_sse import blocks, prefix, settings

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
