"""Concatenation and creation when something fails on the way, on every chunk store: the
client learns where what exists is, and nothing is left that no client can reach."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from storage_backends.base import StorageError
from tests.app_fixtures import TUS, MakeClient, get_committed
from tusserver.app import RUNTIME
from tusserver.errors import CatalogUnavailable

from .test_core import create, head, patch

Client = TestClient[Any, Any]
DRAFT = {"Upload-Draft-Interop-Version": "8"}


async def partial(client: Client, data: bytes, *, finish: bool = True) -> str:
    path = await create(client, len(data), **{"Upload-Concat": "partial"})
    if finish and data:
        assert (await patch(client, path, 0, data)).status == 204
    return path


async def final(client: Client, paths: list[str], *, absolute: bool = False) -> Any:
    base = f"http://{client.host}:{client.port}" if absolute else ""
    urls = " ".join(base + p for p in paths)
    return await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{urls}"})


async def test_a_final_whose_concatenation_fails_at_creation_is_answered_with_its_url(
    client: Client,
) -> None:
    """Every partial is finished, and the concatenation the POST runs fails (the store is
    briefly unavailable). The final exists: it is answered 201 with its Location, and its
    HEAD concatenates it once the store is back (a 503 without Location left a final no
    client could reach, counted against the owner until it expired)."""
    service = client.app[RUNTIME].uploads
    concatenater = service._concatenater
    real = concatenater.concatenate

    async def failing(*args: Any, **kwargs: Any) -> int:
        raise StorageError("the store is briefly unavailable")

    a = await partial(client, b"abc")
    b = await partial(client, b"def")
    concatenater.concatenate = failing  # type: ignore[method-assign]
    try:
        resp = await final(client, [a, b])
    finally:
        concatenater.concatenate = real  # type: ignore[method-assign]
    assert resp.status == 201, await resp.text()
    path = URL(resp.headers["Location"]).path
    service._final_retries.clear()  # (no back-off wait in a test)
    h = await head(client, path)
    assert (h.status, h.headers.get("Upload-Offset")) == (200, "6"), dict(h.headers)
    assert await (await get_committed(client, path)).read() == b"abcdef"


async def test_a_creation_whose_row_cannot_be_written_leaves_nothing_in_the_store(
    make_client: MakeClient,
) -> None:
    """The store's upload is made before the catalog's row: when the row cannot be written
    (the database fails), the store's upload goes too (nothing would ever remove it)."""
    client = await make_client()
    rt = client.app[RUNTIME]
    real = rt.uploads.repo.insert

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("database unavailable")

    rt.uploads.repo.insert = failing  # type: ignore[method-assign]
    try:
        resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "10"})
        assert resp.status >= 500
    finally:
        rt.uploads.repo.insert = real  # type: ignore[method-assign]
    if rt.config.chunk_store == "s3":
        store: Any = rt.store
        keys = [k async for k in store._objects.list_keys() if k.startswith(store._prefix)]
        assert keys == [], keys
    else:
        # (The encrypted store's own marker file is not an upload's.)
        left = [p.name for p in rt.config.uploads_dir.iterdir() if not p.name.startswith(".")]
        assert left == [], left


async def test_a_creation_whose_commit_went_unanswered_keeps_the_store_s_upload(
    make_client: MakeClient,
) -> None:
    """A catalog that did not answer (PostgreSQL's deadline passed with the COMMIT sent) may
    have written the row: the store's upload is kept, so that a row that exists never names
    bytes that are gone. Without a row, the orphan sweep removes it (it is empty)."""
    client = await make_client()
    rt = client.app[RUNTIME]
    real = rt.uploads.repo.insert
    made: list[str] = []

    async def committed_unanswered(record: Any, *args: Any, **kwargs: Any) -> None:
        await real(record, *args, **kwargs)
        made.append(record.id)
        raise CatalogUnavailable("no answer from the database", headers={"Retry-After": "5"})

    rt.uploads.repo.insert = committed_unanswered  # type: ignore[method-assign]
    try:
        resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "10"})
        assert resp.status == 503
    finally:
        rt.uploads.repo.insert = real  # type: ignore[method-assign]
    (upload_id,) = made
    assert await rt.store.get_offset(upload_id) == 0  # the row's upload is whole
    h = await head(client, f"/uploads/{upload_id}")
    assert (h.status, h.headers.get("Upload-Offset")) == (200, "0"), dict(h.headers)
    assert (await patch(client, f"/uploads/{upload_id}", 0, b"0123456789")).status == 204


async def test_a_final_may_name_its_partials_by_absolute_urls(make_client: MakeClient) -> None:
    """tus-js-client names the partials by the absolute URLs it was given: 150 of them did
    not fit in aiohttp's 8 KiB limit of a header's value (400 before max_concat_parts was
    even looked at)."""
    client = await make_client(max_concat_parts=150)
    paths = [await partial(client, b"a") for _ in range(150)]
    resp = await final(client, paths, absolute=True)
    assert resp.status == 201, await resp.text()
    path = URL(resp.headers["Location"]).path
    assert await (await get_committed(client, path)).read() == b"a" * 150


async def test_a_tus_final_waiting_for_its_partials_is_complete_for_the_draft(
    client: Client,
) -> None:
    """A draft HEAD on a tus final still waiting for its partials said offset 0, incomplete:
    an invitation to append that was then refused (403). It is complete for the draft (it
    takes no content), and an append is refused as one to a complete upload."""
    a = await partial(client, b"abc", finish=False)
    resp = await final(client, [a])
    path = URL(resp.headers["Location"]).path
    h = await client.head(path, headers=DRAFT)
    assert h.status == 204
    assert (h.headers["Upload-Complete"], h.headers["Upload-Offset"]) == ("?1", "3")
    p = await client.patch(
        path,
        data=b"abc",
        headers={
            **DRAFT,
            "Upload-Offset": "3",
            "Upload-Complete": "?1",
            "Content-Type": "application/partial-upload",
        },
    )
    assert p.status in (400, 409), await p.text()
    assert "complete" in (await p.text())
    assert (await patch(client, a, 0, b"abc")).status == 204
    assert await (await get_committed(client, path)).read() == b"abc"
