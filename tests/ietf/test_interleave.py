"""One upload, two protocols: tus 1.0.0 and the draft share the upload records."""

from __future__ import annotations

import base64

from tests.app_fixtures import OCTET, TUS, get_committed
from tests.ietf.helpers import (
    DRAFT,
    Client,
    append,
    create,
    created,
    head,
    path_of,
    problem,
)


async def tus_create(client: Client, length: int | None, body: bytes = b"", **headers: str) -> str:
    h = {**TUS, **headers}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    if body:
        h.update(OCTET)
    resp = await client.post("/uploads/", data=body or None, headers=h)
    assert resp.status == 201, await resp.text()
    return path_of(resp.headers["Location"])


async def tus_patch(client: Client, path: str, offset: int, body: bytes, **headers: str) -> int:
    resp = await client.patch(
        path, data=body, headers={**TUS, **OCTET, "Upload-Offset": str(offset), **headers}
    )
    assert resp.status == 204, await resp.text()
    return int(resp.headers["Upload-Offset"])


async def download(client: Client, path: str) -> bytes:
    resp = await get_committed(client, path)
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_tus_upload_resumed_with_the_draft(client: Client) -> None:
    data = b"0123456789"
    path = await tus_create(client, len(data))
    assert await tus_patch(client, path, 0, data[:4]) == 4
    state = await head(client, path)
    assert (state.status, state.headers["Upload-Offset"]) == (204, "4")
    assert (state.headers["Upload-Length"], state.headers["Upload-Complete"]) == ("10", "?0")
    assert (await append(client, path, 4, data[4:7])).status == 204
    resp = await append(client, path, 7, data[7:], complete=True)
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")
    tus_state = await client.head(path, headers=TUS)
    assert tus_state.headers["Upload-Offset"] == "10"
    assert await download(client, path) == data


async def test_deferred_tus_upload_completed_by_the_draft(client: Client) -> None:
    path = await tus_create(client, None)
    await tus_patch(client, path, 0, b"abc")
    assert "Upload-Length" not in (await head(client, path)).headers
    resp = await append(client, path, 3, b"def", complete=True)
    assert resp.status == 200
    tus_state = await client.head(path, headers=TUS)
    assert (tus_state.headers["Upload-Length"], tus_state.headers["Upload-Offset"]) == ("6", "6")
    assert await download(client, path) == b"abcdef"


async def test_draft_upload_resumed_with_tus(client: Client) -> None:
    path = await created(
        client,
        b"abc",
        **{"Content-Disposition": 'inline; filename="notes.txt"', "Content-Type": "text/plain"},
    )
    tus_state = await client.head(path, headers=TUS)
    assert tus_state.status == 200
    assert tus_state.headers["Upload-Offset"] == "3"
    assert tus_state.headers["Upload-Defer-Length"] == "1"
    meta = dict(p.split(" ") for p in tus_state.headers["Upload-Metadata"].split(","))
    assert base64.b64decode(meta["filename"]) == b"notes.txt"
    assert base64.b64decode(meta["filetype"]) == b"text/plain"
    # tus declares the length with its last chunk; the draft sees the upload complete.
    assert await tus_patch(client, path, 3, b"def", **{"Upload-Length": "6"}) == 6
    state = await head(client, path)
    assert (state.headers["Upload-Complete"], state.headers["Upload-Length"]) == ("?1", "6")
    assert await download(client, path) == b"abcdef"


async def test_protocols_alternate_on_one_upload(client: Client) -> None:
    path = await created(client, b"a", **{"Upload-Length": "5"})
    assert await tus_patch(client, path, 1, b"b") == 2
    assert (await append(client, path, 2, b"c")).status == 204
    assert await tus_patch(client, path, 3, b"d") == 4
    # A stale offset is refused the same way by both.
    await problem(await append(client, path, 3, b"x"), 409)
    resp = await client.patch(path, data=b"x", headers={**TUS, **OCTET, "Upload-Offset": "3"})
    assert resp.status == 409
    resp = await append(client, path, 4, b"e", complete=True)
    assert resp.status == 200
    assert await download(client, path) == b"abcde"


async def test_tus_termination_of_a_draft_upload(client: Client) -> None:
    path = await created(client, b"abc")
    assert (await client.delete(path, headers=TUS)).status == 204
    await problem(await head(client, path), 410)


async def test_draft_cancellation_of_a_tus_upload(client: Client) -> None:
    path = await tus_create(client, 10)
    assert (await client.delete(path, headers=DRAFT)).status == 204
    assert (await client.head(path, headers=TUS)).status == 410


async def test_tus_sees_a_completed_draft_upload_as_finished(client: Client) -> None:
    resp = await create(client, b"payload", complete=True)
    path = path_of(resp.headers["Location"])
    tus_state = await client.head(path, headers=TUS)
    assert (tus_state.headers["Upload-Offset"], tus_state.headers["Upload-Length"]) == ("7", "7")
    # tus refuses more bytes on a finished upload.
    resp = await client.patch(path, data=b"x", headers={**TUS, **OCTET, "Upload-Offset": "7"})
    assert resp.status == 413
    assert await download(client, path) == b"payload"


async def test_tus_final_upload_is_not_appendable_by_the_draft(client: Client) -> None:
    a = await tus_create(client, 2, **{"Upload-Concat": "partial"})
    await tus_patch(client, a, 0, b"ab")
    b = await tus_create(client, 2, **{"Upload-Concat": "partial"})
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert resp.status == 201
    final = path_of(resp.headers["Location"])
    # Complete for the draft while it waits for its parts (it takes no content), not an
    # upload at offset 0 whose append is then refused.
    state = await head(client, final)
    assert (state.status, state.headers["Upload-Complete"]) == (204, "?1")
    assert state.headers["Upload-Offset"] == "4"
    doc = await problem(await append(client, final, 4, b"zz"), 400)
    assert "complete" in doc["detail"]
    # The partial upload, though, completes with the draft, and the final one with it.
    assert (await append(client, b, 0, b"cd", complete=True)).status == 200
    state = await head(client, final)
    assert (state.headers["Upload-Complete"], state.headers["Upload-Offset"]) == ("?1", "4")


async def test_reaching_the_declared_length_completes(client: Client) -> None:
    """Shared state: a tus upload is finished when its offset reaches its length, so an
    append with Upload-Complete: ?0 that reaches a declared length completes the upload too,
    and says so (Upload-Complete: ?1); see docs/ietf-draft.md."""
    path = await created(client, b"ab", **{"Upload-Length": "4"})
    resp = await append(client, path, 2, b"cd")
    assert (resp.status, resp.headers["Upload-Complete"]) == (200, "?1")
    assert (await head(client, path)).headers["Upload-Complete"] == "?1"
