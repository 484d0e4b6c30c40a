"""Usage after tus DELETEs of uploads that became files, refused form files, and what a
refusal by the quota says."""

from __future__ import annotations

from typing import Any

from aiohttp import FormData

from tests.app_fixtures import TUS, MakeClient
from tests.pipeline.test_local_pipeline import png_bytes

from .helpers import Client, auth_client, bearer, create_upload, make_users, patch, runtime
from .test_quota_abuse import _file_status, _me


async def _usage(client: Client, token: str) -> int:
    return int((await _me(client, token))["usage_bytes"])


async def test_tus_delete_of_a_rejected_files_upload_frees_its_usage(
    make_client: MakeClient,
) -> None:
    client = await auth_client(
        make_client, default_quota=4000, allowed_categories=("video",), early_type_check=False
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    data = png_bytes(extra=2000)
    path = await create_upload(client, owner, len(data))
    assert (await patch(client, owner, path, 0, data)).status == 204
    assert await _file_status(client, owner, path) == "rejected"
    assert await _usage(client, owner) == len(data)
    # The owner terminates the upload: its bytes (the quarantined copy) are deleted ...
    resp = await client.delete(path, headers={**TUS, **bearer(owner)})
    assert resp.status == 204, await resp.text()
    store_file = runtime(client).config.uploads_dir / path.rsplit("/", 1)[1]
    assert not store_file.exists()
    # ... so nothing is held any more: the usage must say so.
    assert await _usage(client, owner) == 0


async def test_a_tus_delete_leaves_the_bytes_of_a_file_being_checked_to_the_pipeline(
    make_client: MakeClient,
) -> None:
    """Terminating the upload of a file still being checked deleted its bytes under the
    pipeline: the file failed ("the uploaded bytes are missing") and stayed counted. The
    upload ends (410), the file goes on: it is deleted through the files API."""
    client = await auth_client(
        make_client,
        default_quota=4000,
        clamd_url="tcp://127.0.0.1:9",
        clamd_required=True,
        pipeline_retry_base=30,
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    path = await create_upload(client, owner, 1000)
    assert (await patch(client, owner, path, 0, b"h" * 1000)).status == 204
    head = await client.head(path, headers={**TUS, **bearer(owner)})
    assert head.headers["X-File-Status"] in ("received", "validating")
    resp = await client.delete(path, headers={**TUS, **bearer(owner)})
    assert resp.status == 204, await resp.text()
    assert (await client.head(path, headers={**TUS, **bearer(owner)})).status == 410
    store_file = runtime(client).config.uploads_dir / path.rsplit("/", 1)[1]
    assert store_file.exists()
    assert await _usage(client, owner) == 1000
    files = await (await client.get("/api/v1/files", headers=bearer(owner))).json()
    assert [f["status"] for f in files["items"]] in (["received"], ["validating"])


async def test_a_form_file_refused_for_the_quota_holds_nothing_afterwards(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    form = FormData()
    form.add_field("file", b"x" * 1500, filename="big.bin", content_type="application/octet-stream")
    resp = await client.post("/api/v1/upload", data=form, headers=bearer(owner))
    body = await resp.json()
    assert body["files"][0].get("status_code") == 413, body
    # Nothing was stored as a file: the usage must be back to 0, as for a raw body.
    assert await _usage(client, owner) == 0, body


async def test_a_raw_chunked_body_refused_for_the_quota_holds_nothing_afterwards(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access

    async def chunked() -> Any:
        for _ in range(15):
            yield b"x" * 100

    resp = await client.post(
        "/api/v1/upload?filename=big.bin", data=chunked(), headers=bearer(owner)
    )
    assert resp.status == 413, await resp.text()
    assert await _usage(client, owner) == 0


async def test_a_chunked_body_stopped_by_the_quota_says_quota(make_client: MakeClient) -> None:
    """docs/security.md: over the quota the answer is 413 `storage quota exceeded`."""
    client = await auth_client(make_client, default_quota=1000)  # no max_size
    owner = (await make_users(client, owner="user"))["owner"].access
    p = await create_upload(client, owner, None, **{"Upload-Defer-Length": "1"})

    async def chunked() -> Any:
        for _ in range(15):
            yield b"x" * 100

    resp = await client.patch(
        p,
        data=chunked(),
        headers={
            **TUS,
            **bearer(owner),
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
        },
    )
    text = await resp.text()
    assert resp.status == 413, text
    assert "quota" in text, text
