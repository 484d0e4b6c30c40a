"""The S3 chunk store as several instances see it: no instance trusts a stale cache."""

from __future__ import annotations

import os
from typing import Any

import pytest

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
