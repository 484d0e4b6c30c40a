"""Storage accounting against a hostile user (issue #16, items 1-4), through HTTP.

Every test runs on SQLite and on PostgreSQL (``make_client`` is parametrized over both).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from tests.app_fixtures import TUS, MakeClient
from tests.pipeline.test_local_pipeline import png_bytes

from .helpers import Client, auth_client, bearer, create_upload, make_users, patch, runtime

KIB = 1024
ME = "/api/v1/auth/me"


async def _me(client: Client, token: str) -> dict[str, Any]:
    resp = await client.get(ME, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def _partial(client: Client, token: str, length: int | None) -> str:
    if length is None:
        return await create_upload(
            client, token, None, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"}
        )
    return await create_upload(client, token, length, **{"Upload-Concat": "partial"})


async def _final(client: Client, token: str, *parts: str) -> Any:
    return await client.post(
        "/uploads/",
        headers={**TUS, **bearer(token), "Upload-Concat": "final;" + " ".join(parts)},
    )


def _path(resp: Any) -> str:
    location: str = resp.headers["Location"]
    return location[location.index("/uploads/") :]


async def _fill(client: Client, token: str, path: str, data: bytes, *, length: bool) -> Any:
    """PATCH all of ``data`` at 0; with ``length`` the deferred length is declared with it."""
    headers = {"Upload-Length": str(len(data))} if length else {}
    return await client.patch(
        path,
        data=data,
        headers={
            **TUS,
            **bearer(token),
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
            **headers,
        },
    )


async def _head(client: Client, token: str, path: str) -> Any:
    return await client.head(path, headers={**TUS, **bearer(token)})


async def _file_status(client: Client, token: str, path: str, timeout: float = 15.0) -> str:
    """The status of the file an upload became, once the pipeline is done with it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        h = await _head(client, token, path)
        status = h.headers.get("X-File-Status")
        if status not in (None, "received", "validating"):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the file of {path} is not done: {dict(h.headers)}")
        await asyncio.sleep(0.05)


# --- 1. concatenation ---------------------------------------------------------------------


async def test_a_final_may_name_a_partial_only_once(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1024 * KIB)
    owner = (await make_users(client, owner="user"))["owner"].access
    part = await _partial(client, owner, None)
    # The audit's request: one deferred partial named 40 times, then 512 KiB into it.
    resp = await _final(client, owner, *[part] * 40)
    assert resp.status == 400, await resp.text()
    assert "more than once" in await resp.text()
    resp = await _final(client, owner, part, part)
    assert resp.status == 400, await resp.text()
    assert (await _fill(client, owner, part, b"x" * 512 * KIB, length=True)).status == 204
    # Nothing was multiplied: the partial's own 512 KiB is all the user holds.
    assert (await _me(client, owner))["usage_bytes"] == 512 * KIB


async def test_the_number_of_parts_is_bounded(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_concat_parts=3)
    owner = (await make_users(client, owner="user"))["owner"].access
    parts = [await _partial(client, owner, 1) for _ in range(4)]
    resp = await _final(client, owner, *parts)
    assert resp.status == 400, await resp.text()
    assert "at most 3" in await resp.text()
    assert (await _final(client, owner, *parts[:3])).status == 201


async def test_a_final_over_max_size_is_413_at_creation(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_size=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    a, b = await _partial(client, owner, 600), await _partial(client, owner, 600)
    resp = await _final(client, owner, a, b)
    assert resp.status == 413, await resp.text()
    assert "1200" in await resp.text()


async def test_a_final_of_deferred_parts_over_max_size_is_refused(make_client: MakeClient) -> None:
    """Lengths unknown at creation: checked at concatenation, before any byte is copied."""
    client = await auth_client(make_client, max_size=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    a, b = await _partial(client, owner, None), await _partial(client, owner, None)
    resp = await _final(client, owner, a, b)
    assert resp.status == 201, await resp.text()
    final = _path(resp)
    assert (await _fill(client, owner, a, b"a" * 600, length=True)).status == 204
    assert (await _fill(client, owner, b, b"b" * 600, length=True)).status == 204
    h = await _head(client, owner, final)
    assert h.status == 413
    assert "X-File-Id" not in h.headers
    resp = await client.get(final, headers=bearer(owner))
    assert resp.status == 413
    assert "maximum size" in await resp.text()
    files = await (await client.get("/api/v1/files", headers=bearer(owner))).json()
    assert files["items"] == []
    # No 1200-byte copy was made: the user holds the two partials only.
    assert (await _me(client, owner))["usage_bytes"] == 1200


async def test_a_final_counts_against_the_quota(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    # Known lengths: 300 + 300 held in partials, 600 more for the final: 1200 > 1000.
    a, b = await _partial(client, owner, 300), await _partial(client, owner, 300)
    assert (await _fill(client, owner, a, b"a" * 300, length=False)).status == 204
    assert (await _fill(client, owner, b, b"b" * 300, length=False)).status == 204
    resp = await _final(client, owner, a, b)
    assert resp.status == 413, await resp.text()
    assert "quota" in await resp.text()
    assert (await _me(client, owner))["usage_bytes"] == 600
    # A final that fits is counted the moment its length is known (the file it becomes).
    c = await _partial(client, owner, 100)
    assert (await _fill(client, owner, c, b"c" * 100, length=False)).status == 204
    resp = await _final(client, owner, c)
    assert resp.status == 201, await resp.text()
    assert await _file_status(client, owner, _path(resp)) == "committed"
    assert (await _me(client, owner))["usage_bytes"] == 600 + 100 + 100


async def test_a_final_of_deferred_parts_over_the_quota_is_refused(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    a, b = await _partial(client, owner, None), await _partial(client, owner, None)
    resp = await _final(client, owner, a, b)
    assert resp.status == 201, await resp.text()
    final = _path(resp)
    assert (await _fill(client, owner, a, b"a" * 300, length=True)).status == 204
    assert (await _fill(client, owner, b, b"b" * 300, length=True)).status == 204
    # Both parts are done: 600 bytes held, 600 more for the final would pass 1000.
    h = await _head(client, owner, final)
    assert h.status == 413
    resp = await client.get(final, headers=bearer(owner))
    assert "quota" in await resp.text()
    assert (await _me(client, owner))["usage_bytes"] == 600


# --- 2. partial uploads -------------------------------------------------------------------


async def test_partials_count_against_the_quota(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=256 * KIB)
    owner = (await make_users(client, owner="user"))["owner"].access
    # The audit's request: 800 KiB is refused as a plain upload and as a partial one alike.
    resp = await client.post(
        "/uploads/", headers={**TUS, **bearer(owner), "Upload-Length": str(800 * KIB)}
    )
    assert resp.status == 413
    resp = await client.post(
        "/uploads/",
        headers={
            **TUS,
            **bearer(owner),
            "Upload-Length": str(800 * KIB),
            "Upload-Concat": "partial",
        },
    )
    assert resp.status == 413, await resp.text()
    # A deferred-length partial is counted as its bytes arrive.
    part = await _partial(client, owner, None)
    resp = await _fill(client, owner, part, b"x" * 800 * KIB, length=False)
    assert resp.status == 413, await resp.text()
    assert (await _fill(client, owner, part, b"x" * 200 * KIB, length=False)).status == 204
    assert (await _me(client, owner))["usage_bytes"] == 200 * KIB
    # And it leaves less for anything else.
    resp = await client.post(
        "/uploads/", headers={**TUS, **bearer(owner), "Upload-Length": str(100 * KIB)}
    )
    assert resp.status == 413, await resp.text()
    assert (await _partial(client, owner, 56 * KIB)).startswith("/uploads/")
    assert (await _me(client, owner))["usage_bytes"] == 256 * KIB


async def test_finished_partials_expire_and_free_the_quota(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1000, expiration=4.0)
    owner = (await make_users(client, owner="user"))["owner"].access
    part = await _partial(client, owner, 400)
    assert (await _fill(client, owner, part, b"p" * 400, length=False)).status == 204
    h = await _head(client, owner, part)
    assert h.status == 200 and h.headers["Upload-Offset"] == "400"
    assert "Upload-Expires" in h.headers  # finished, and still expiring
    assert (await _me(client, owner))["usage_bytes"] == 400
    await asyncio.sleep(4.2)
    assert (await _head(client, owner, part)).status == 410
    rt = runtime(client)
    assert await rt.uploads.expire_due() == 1
    store_file = rt.config.uploads_dir / part.rsplit("/", 1)[1]
    assert not store_file.exists()
    assert (await _me(client, owner))["usage_bytes"] == 0
    # An expired partial cannot be concatenated.
    assert (await _final(client, owner, part)).status == 400


async def test_tus_get_serves_no_partial_to_anyone(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    users = await make_users(client, owner="user", admin="admin")
    owner = users["owner"].access
    part = await _partial(client, owner, 5)
    assert (await _fill(client, owner, part, b"hello", length=False)).status == 204
    for token in (owner, users["admin"].access):
        resp = await client.get(part, headers=bearer(token))
        assert resp.status == 403, await resp.text()
        assert "partial" in await resp.text()
        assert b"hello" not in await resp.read()


async def test_tus_get_serves_nothing_still_being_validated(make_client: MakeClient) -> None:
    # clamd is required and unreachable: the file waits in `validating`.
    client = await auth_client(
        make_client, clamd_url="tcp://127.0.0.1:9", clamd_required=True, pipeline_retry_base=30
    )
    users = await make_users(client, owner="user", admin="admin")
    owner = users["owner"].access
    path = await create_upload(client, owner, 5)
    assert (await patch(client, owner, path, 0, b"hello")).status == 204
    deadline = asyncio.get_running_loop().time() + 10
    while (await _head(client, owner, path)).headers.get("X-File-Status") != "validating":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    for token in (owner, users["admin"].access):
        resp = await client.get(path, headers=bearer(token))
        assert resp.status == 409, await resp.text()
        assert "validated" in await resp.text()
        assert resp.headers["Retry-After"] == "2"


# --- 3. everything held counts ------------------------------------------------------------


async def test_rejected_files_count_until_deleted(make_client: MakeClient) -> None:
    client = await auth_client(
        make_client, default_quota=4000, allowed_categories=("video",), early_type_check=False
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    data = png_bytes(extra=2000)
    path = await create_upload(client, owner, len(data))
    assert (await patch(client, owner, path, 0, data)).status == 204
    assert await _file_status(client, owner, path) == "rejected"
    # Kept in quarantine, so counted: no parking of unlimited bytes.
    assert (await _me(client, owner))["usage_bytes"] == len(data)
    resp = await client.post(
        "/uploads/", headers={**TUS, **bearer(owner), "Upload-Length": str(4000 - len(data) + 1)}
    )
    assert resp.status == 413, await resp.text()
    # The owner may delete it, and the bytes stop counting.
    file_id = (await _head(client, owner, path)).headers["X-File-Id"]
    resp = await client.delete(f"/api/v1/file/{file_id}", headers=bearer(owner))
    assert resp.status == 204, await resp.text()
    assert (await _me(client, owner))["usage_bytes"] == 0


async def test_rejected_files_stop_counting_once_purged(make_client: MakeClient) -> None:
    client = await auth_client(
        make_client,
        default_quota=4000,
        allowed_categories=("video",),
        early_type_check=False,
        quarantine_retention=0.5,
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    data = png_bytes(extra=1000)
    path = await create_upload(client, owner, len(data))
    assert (await patch(client, owner, path, 0, data)).status == 204
    assert await _file_status(client, owner, path) == "rejected"
    assert (await _me(client, owner))["usage_bytes"] == len(data)
    await asyncio.sleep(0.7)
    assert await runtime(client).pipeline.purge_quarantine() == 1
    assert (await _me(client, owner))["usage_bytes"] == 0


async def test_upload_metadata_is_no_storage_outside_the_quota(make_client: MakeClient) -> None:
    """Metadata is held for the owner (upload and file rows, listed by GET /files) and is not
    counted: it is bounded instead. 128 pairs of a 64 KiB header (what the server reads, for
    Upload-Concat) held 45 KiB per empty upload: at the creations' rate, megabytes a minute
    past a 1000-byte quota."""
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    pair = "k{} " + base64.b64encode(b"z" * 350).decode()
    huge = ",".join(pair.format(i) for i in range(128))
    resp = await client.post(
        "/uploads/",
        headers={**TUS, **bearer(owner), "Upload-Length": "0", "Upload-Metadata": huge},
    )
    assert resp.status == 400, await resp.text()
    assert "Upload-Metadata" in await resp.text()
    files = await (await client.get("/api/v1/files", headers=bearer(owner))).json()
    assert files["items"] == []
    # What a client sends (a name, a type, a checksum, a few fields) is far below the bound.
    fits = ",".join(pair.format(i) for i in range(16))
    resp = await client.post(
        "/uploads/",
        headers={**TUS, **bearer(owner), "Upload-Length": "0", "Upload-Metadata": fits},
    )
    assert resp.status == 201, await resp.text()


# --- 4. one number, seen by the owner, held under concurrency -----------------------------


async def test_me_shows_usage_and_limit(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=5000)
    users = await make_users(client, owner="user", admin="admin")
    owner, admin = users["owner"].access, users["admin"].access
    await create_upload(client, owner, 1000)
    part = await _partial(client, owner, None)
    assert (await _fill(client, owner, part, b"z" * 300, length=False)).status == 204
    me = await _me(client, owner)
    assert me["usage_bytes"] == 1300 and me["quota_bytes"] == 5000
    # What /me says is left is exactly what the next creation may take.
    left = me["quota_bytes"] - me["usage_bytes"]
    assert (await client.post(
        "/uploads/", headers={**TUS, **bearer(owner), "Upload-Length": str(left + 1)}
    )).status == 413  # fmt: skip
    assert (await client.post(
        "/uploads/", headers={**TUS, **bearer(owner), "Upload-Length": str(left)}
    )).status == 201  # fmt: skip
    assert (await _me(client, owner))["usage_bytes"] == 5000
    # Administrators have no quota, and /me says so.
    me = await _me(client, admin)
    assert me["quota_bytes"] is None
    assert (await create_upload(client, admin, 50_000)).startswith("/uploads/")


async def test_concurrent_creations_cannot_exceed_the_quota_together(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access

    async def create(length: int, **extra: str) -> int:
        resp = await client.post(
            "/uploads/",
            headers={**TUS, **bearer(owner), "Upload-Length": str(length), **extra},
        )
        return resp.status

    statuses = await asyncio.gather(
        *[create(300) for _ in range(6)],
        *[create(300, **{"Upload-Concat": "partial"}) for _ in range(6)],
    )
    assert sorted(statuses) == [201] * 3 + [413] * 9, statuses
    assert (await _me(client, owner))["usage_bytes"] == 900


async def test_concurrent_bodies_of_deferred_uploads_cannot_exceed_the_quota(
    make_client: MakeClient,
) -> None:
    """Without a length nothing is counted at creation: each body's bytes are reserved
    before it is read, so bodies sent at once cannot share the same free space."""
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    deferred = {"Upload-Defer-Length": "1"}
    paths = [await create_upload(client, owner, None, **deferred) for _ in range(4)]
    responses = await asyncio.gather(*[patch(client, owner, p, 0, b"x" * 600) for p in paths])
    assert sorted(r.status for r in responses) == [204, 413, 413, 413]
    assert (await _me(client, owner))["usage_bytes"] == 600

    # Chunked bodies (no Content-Length): they share the 400 bytes left, never more.
    async def chunked() -> Any:
        for _ in range(10):
            yield b"y" * 100
            await asyncio.sleep(0.01)

    more = [await create_upload(client, owner, None, **deferred) for _ in range(3)]
    responses = await asyncio.gather(
        *[
            client.patch(
                p,
                data=chunked(),
                headers={
                    **TUS,
                    **bearer(owner),
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Offset": "0",
                },
            )
            for p in more
        ]
    )
    assert all(r.status in (204, 413) for r in responses), [r.status for r in responses]
    stored = [int((await _head(client, owner, p)).headers["Upload-Offset"]) for p in more]
    assert sum(stored) <= 400, stored
    assert (await _me(client, owner))["usage_bytes"] == 600 + sum(stored) <= 1000
    # What a refused body did not bring is not counted: the free space is still usable.
    left = 1000 - 600 - sum(stored)
    if left:
        spare = await create_upload(client, owner, None, **deferred)
        assert (await patch(client, owner, spare, 0, b"z" * left)).status == 204
    assert (await _me(client, owner))["usage_bytes"] == 1000
