"""libmagic decides the type from the bytes; the file name and the declared type do not."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from tests.app_fixtures import MakeClient
from tests.pipeline.helpers import runtime
from tests.pipeline.test_local_pipeline import meta, png_bytes, upload, wait_file
from tests.protocol.test_core import create, head, patch
from tusserver.catalog.schema import file_uploads


async def test_png_named_mp4_is_committed_as_png(make_client: MakeClient) -> None:
    client = await make_client(allowed_categories=("image", "video"))
    data = png_bytes(extra=4000)
    path = await upload(client, data, filename="holiday.mp4", filetype="video/mp4")
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["detected_type"] == "image/png"
    assert info["declared_type"] == "video/mp4"
    assert info["type_mismatch"] is True
    assert info["category"] == "image"
    assert info["name"] == "holiday.mp4"
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    # The object is stored (and would be served) with the detected type, not the claimed one.
    row = await runtime(client).files.get(info["id"])
    assert row is not None and row.storage_key is not None
    stored = await runtime(client).objects.stat(row.storage_key)
    assert stored is not None
    assert stored.content_type == "image/png"
    assert await (await client.get(info["content_url"])).read() == data


async def test_png_named_mp4_is_refused_at_the_first_patch_when_only_video_is_allowed(
    make_client: MakeClient,
) -> None:
    client = await make_client(allowed_categories=("video",))
    data = png_bytes(extra=4000)
    path = await create(
        client,
        len(data),
        **{"Upload-Metadata": meta(filename="holiday.mp4", filetype="video/mp4")},
    )
    r = await patch(client, path, 0, data[:2000])
    assert r.status == 415, await r.text()
    assert "image/png" in await r.text()
    # The upload is over: nothing more is accepted, and no file came of it.
    assert (await patch(client, path, 0, data[:2000])).status == 410
    h = await head(client, path)
    assert h.status == 410
    assert "X-File-Id" not in h.headers
    upload_id = path.rsplit("/", 1)[1]
    async with runtime(client).db.engine.connect() as conn:
        rows = await conn.execute(
            select(file_uploads.c.file_id).where(file_uploads.c.upload_id == upload_id)
        )
        assert rows.all() == []
    assert not (runtime(client).config.uploads_dir / upload_id).exists()


async def test_real_declared_type_is_no_mismatch(make_client: MakeClient) -> None:
    client = await make_client()
    info = await wait_file(
        client, await upload(client, png_bytes(1000), filename="a.png", filetype="image/png")
    )
    assert info["status"] == "committed"
    assert (info["detected_type"], info["type_mismatch"]) == ("image/png", False)
