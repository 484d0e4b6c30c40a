"""Files API edges: folder lengths, racing deletes and renames, what counts as a download,
raw uploads that break."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from tests.api.helpers import Client, api_client, file_row, insert_files, jwt_client
from tests.api.test_analytics import analytics, tus_upload
from tests.app_fixtures import MakeClient
from tests.auth.helpers import bearer, make_users

NOW = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
TEXT = b"hello there\n" * 50


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await api_client(make_client)


async def test_folder_normalized_past_1024_chars_is_a_4xx(client: Client) -> None:
    # 8 segments of 127 characters: 1023 characters as sent (within the documented 1024),
    # but "/" + 8 * (127 + "/") = 1025 once normalized: longer than the folder column.
    raw = "/".join(["a" * 127] * 8)
    assert len(raw) <= 1024
    resp = await client.post("/api/v1/folders", json={"path": raw})
    assert resp.status < 500, await resp.text()

    owner = None
    row = file_row(name="f.txt", owner=owner, created_at=NOW)
    await insert_files(client, [row])
    resp = await client.patch(f"/api/v1/file/{row['id']}", json={"folder": raw})
    assert resp.status < 500, await resp.text()


async def test_concurrent_deletes_of_one_file_count_one_deletion(make_client: MakeClient) -> None:
    """Two DELETEs of the same file racing: the file is deleted once, so analytics must say
    one deletion (and one of the two requests should not claim to have deleted it)."""

    client = await jwt_client(make_client, cache_ttl=0)
    users = await make_users(client, alice="user")
    alice = users["alice"]
    info = await tus_upload(client, alice, TEXT, filename="a.txt", filetype="text/plain")
    assert info["status"] == "committed", info

    responses = await asyncio.gather(
        *(
            client.delete(f"/api/v1/file/{info['id']}", headers=bearer(alice.access))
            for _ in range(5)
        )
    )
    statuses = sorted(r.status for r in responses)
    body = await analytics(client, alice)
    deleted = body["totals"]["file.deleted"]
    assert deleted == {"count": 1, "bytes": info["size"]}, (statuses, deleted)


async def test_rename_racing_a_delete_is_never_a_500(make_client: MakeClient) -> None:
    """A PATCH that loses the race with a DELETE of the same file: 404 (the file is gone),
    not a 500 from ``assert updated is not None`` in FilesApi.update_file."""

    client = await jwt_client(make_client)
    users = await make_users(client, alice="user")
    alice = users["alice"]
    statuses: list[int] = []
    for i in range(10):
        row = file_row(name=f"r{i}.txt", owner=alice.id, created_at=NOW)
        await insert_files(client, [row])
        url = f"/api/v1/file/{row['id']}"
        h = bearer(alice.access)
        patched, deleted = await asyncio.gather(
            client.patch(url, json={"name": "new.txt"}, headers=h),
            client.delete(url, headers=h),
        )
        statuses.append(patched.status)
        assert deleted.status == 204
    assert all(s < 500 for s in statuses), statuses


async def test_a_head_or_a_416_on_content_is_not_an_audited_download(
    make_client: MakeClient,
) -> None:
    """audit_log `file.download` means "a download through /file/<id>/content"
    (docs/security.md). A HEAD (no byte sent) and a 416 (nothing served) are audited as
    downloads all the same; analytics, rightly, records neither."""
    from sqlalchemy import select

    from tusserver.app import RUNTIME
    from tusserver.catalog.schema import audit_log, events

    client = await jwt_client(make_client)
    alice = (await make_users(client, alice="user"))["alice"]
    info = await tus_upload(client, alice, TEXT, filename="a.txt", filetype="text/plain")
    assert info["status"] == "committed", info
    h = bearer(alice.access)
    head = await client.head(info["content_url"], headers=h)
    assert head.status == 200
    ranged = await client.get(info["content_url"], headers={**h, "Range": "bytes=99999-"})
    assert ranged.status == 416

    rt = client.server.app[RUNTIME]
    await rt.events.flush()
    await rt.gateway.audit_log.flush()
    async with rt.db.engine.connect() as conn:
        audited = list(
            (
                await conn.execute(
                    select(audit_log).where(
                        audit_log.c.action == "file.download", audit_log.c.target == info["id"]
                    )
                )
            ).mappings()
        )
        downloaded = list(
            (
                await conn.execute(
                    select(events).where(
                        events.c.kind == "file.downloaded", events.c.file_id == info["id"]
                    )
                )
            ).mappings()
        )
    assert downloaded == []
    assert audited == [], [(r["action"], r["target"]) for r in audited]


async def test_a_raw_upload_cut_short_does_not_hold_its_declared_length(
    make_client: MakeClient,
) -> None:
    """POST /upload with the file as the body (Content-Length 1,000,000) whose connection
    breaks after 10 bytes: the client is never told the upload's id (so can neither resume
    nor delete it), yet the quota keeps counting the whole declared length until the
    upload expires (24 h by default)."""

    client = await jwt_client(make_client, default_quota=2_000_000)
    alice = (await make_users(client, alice="user"))["alice"]
    me = await (await client.get("/api/v1/auth/me", headers=bearer(alice.access))).json()
    assert me["usage_bytes"] == 0

    host, port = client.server.host, client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            "POST /api/v1/upload?filename=big.bin HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\n"
            f"Authorization: Bearer {alice.access}\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Length: 1000000\r\n\r\n"
        ).encode()
        + b"0123456789"
    )
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()
    await asyncio.sleep(1.0)

    me = await (await client.get("/api/v1/auth/me", headers=bearer(alice.access))).json()
    # At most what arrived is held; the declared million is not.
    assert me["usage_bytes"] <= 10, me


async def test_a_raw_upload_into_an_overlong_folder_is_refused_before_it_is_stored(
    client: Client,
) -> None:
    """The same folder, on POST /upload: the file is stored and then the move fails with a
    500, so the client is told the upload failed while a file now exists."""
    raw = "/".join(["a" * 127] * 8)
    resp = await client.post(
        "/api/v1/upload",
        params={"filename": "x.txt", "folder": raw},
        data=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    status = resp.status
    listed = await (await client.get("/api/v1/files")).json()
    assert status < 500, (status, [f["name"] for f in listed["files"]])
