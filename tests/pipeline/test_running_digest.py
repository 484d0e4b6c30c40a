"""The sha256 of an upload computed as its bytes arrive (tusserver.uploads.digests).

The pipeline uses it instead of reading the finished file again only when it covers exactly
the bytes stored; whatever breaks the chain (a refused chunk, another process's writes, an
evicted state) makes it fall back to reading the file. Either way the recorded sha256 must
be that of the stored bytes: downloads are checked against it.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from aiohttp.test_utils import TestClient

from tests.app_fixtures import OCTET, TUS, MakeClient, get_committed
from tests.pipeline.helpers import runtime, upload_id_of
from tests.pipeline.test_local_pipeline import meta, wait_file
from tests.protocol.test_core import create
from tests.protocol.test_extensions import digest
from tusserver.uploads.digests import TRACK_MIN, RunningDigests

Client = TestClient[Any, Any]
MiB = 1024 * 1024


async def patch(client: Client, path: str, offset: int, body: bytes, **headers: str) -> Any:
    """A PATCH with a body of a few MiB (streamed: aiohttp warns about big raw bytes)."""
    return await client.patch(
        path,
        data=io.BytesIO(body),
        headers={**TUS, **OCTET, "Upload-Offset": str(offset), **headers},
    )


def states(client: Client) -> RunningDigests:
    digests = runtime(client).uploads.digests
    assert digests is not None, "one process with the in-process locker keeps states"
    assert runtime(client).pipeline.digests is digests
    return digests


async def test_an_upload_in_several_patches_is_hashed_as_it_arrives(
    make_client: MakeClient,
) -> None:
    client = await make_client(locker="memory", max_size=64 * MiB)
    data = os.urandom(3 * MiB + 12345)
    path = await create(client, len(data), **{"Upload-Metadata": meta(filename="a.bin")})
    uid = upload_id_of(path)
    digests = states(client)
    step = MiB + 7
    offset = 0
    while offset + step < len(data):
        r = await patch(client, path, offset, data[offset : offset + step])
        assert r.status == 204, await r.text()
        offset += step
        # The state covers exactly what is stored, and nothing more.
        assert digests._states[uid][0] == offset
    r = await patch(client, path, offset, data[offset:])
    assert r.status == 204, await r.text()
    info = await wait_file(client, path)
    assert info["status"] == "committed"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert uid not in digests._states  # taken by the pipeline
    assert await (await get_committed(client, path)).read() == data
    body = await (await client.get(info["content_url"])).read()
    assert body == data


async def test_a_refused_chunk_drops_the_state_and_the_file_is_read_instead(
    make_client: MakeClient,
) -> None:
    client = await make_client(locker="memory", max_size=64 * MiB)
    data = os.urandom(2 * MiB)
    half = MiB
    path = await create(client, len(data))
    uid = upload_id_of(path)
    digests = states(client)
    r = await patch(client, path, 0, data[:half])
    assert r.status == 204
    assert digests._states[uid][0] == half
    # A chunk whose checksum does not match is discarded: nothing stored, state dropped.
    wrong = digest("sha256", b"something else")
    r = await patch(client, path, half, data[half:], **{"Upload-Checksum": wrong})
    assert r.status == 460, await r.text()
    assert uid not in digests._states
    r = await patch(client, path, half, data[half:])
    assert r.status == 204
    assert uid not in digests._states  # not restarted in the middle of the upload
    info = await wait_file(client, path)
    assert info["status"] == "committed"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_state_that_does_not_cover_the_file_is_not_used(make_client: MakeClient) -> None:
    client = await make_client(locker="memory", max_size=64 * MiB)
    data = os.urandom(2 * MiB)
    path = await create(client, len(data))
    uid = upload_id_of(path)
    digests = states(client)
    r = await patch(client, path, 0, data[:MiB])
    assert r.status == 204
    # As if the bytes had changed behind this process's back (its state says otherwise):
    # a state for another length is never taken for the file's.
    digests.put(uid, MiB + 1, hashlib.sha256(b"not these bytes"))
    r = await patch(client, path, MiB, data[MiB:])
    assert r.status == 204
    info = await wait_file(client, path)
    assert info["sha256"] == hashlib.sha256(data).hexdigest()


async def test_no_states_when_other_processes_may_write_the_uploads(
    make_client: MakeClient,
) -> None:
    client = await make_client(locker="file")
    assert runtime(client).uploads.digests is None
    assert runtime(client).pipeline.digests is None


def test_states_are_bounded_and_exact() -> None:
    digests = RunningDigests(limit=3)
    assert digests.take_for_append("small", 0, TRACK_MIN - 1) is None
    for i in range(5):
        h = digests.take_for_append(f"u{i}", 0, None)
        assert h is not None
        h.update(b"x" * i)
        digests.put(f"u{i}", i, h)
    assert len(digests) == 3  # the least recently used went first
    assert digests.take_for_append("u0", 0 + 0, None) is not None  # offset 0: a new state
    assert digests.take_for_append("u2", 1, None) is None  # not where the state ends
    assert digests.take_for_append("u2", 2, None) is None  # dropped by the miss above
    assert digests.take_whole("u3", 4) is None  # the wrong size; dropped too
    assert digests.take_whole("u3", 3) is None
    assert digests.take_whole("u4", 4) == hashlib.sha256(b"xxxx").hexdigest()
