"""The server-side cache on one instance, on SQLite and on PostgreSQL.

TTLs are long here (10 minutes), so whatever a test sees change was invalidated by the write,
not expired.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import update

from tests.api.helpers import Client, jwt_client, runtime
from tests.app_fixtures import MakeClient
from tests.auth.helpers import bearer, make_users
from tusserver.cache import ANALYTICS, USERS
from tusserver.catalog.files import FileStatus
from tusserver.catalog.schema import users

from .helpers import add_file, cached_file, file_hits, get_file

LONG = {"cache_ttl": 600, "revocation_check_interval": 600}


async def cached_client(make_client: MakeClient, **overrides: Any) -> Client:
    return await jwt_client(make_client, **{**LONG, **overrides})


async def test_file_reads_are_cached_and_every_write_invalidates(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    alice = (await make_users(client, alice="user"))["alice"]
    rt = runtime(client)
    fid = await add_file(client, alice.id, "first.txt")

    # warm: the second read is a hit, and the content route uses the same entry
    assert (await get_file(client, fid, alice.access))[1]["name"] == "first.txt"
    hits = file_hits(client)
    status, info = await get_file(client, fid, alice.access)
    assert (status, info["name"]) == (200, "first.txt")
    assert file_hits(client) == hits + 1
    # (the row has no bytes: a conditional GET answers from the record alone)
    etag = {"If-None-Match": f'"{info["sha256"]}"'}
    content = await client.get(
        f"/api/v1/file/{fid}/content", headers={**bearer(alice.access), **etag}
    )
    assert content.status == 304
    assert file_hits(client) == hits + 2

    # rename, move, tag (PATCH /file/{id}): the next read sees each at once
    for body, field, want in (
        ({"name": "second.txt"}, "name", "second.txt"),
        ({"folder": "/a/b"}, "folder", "/a/b/"),
        ({"tags": ["x", "y"]}, "tags", ["x", "y"]),
    ):
        assert cached_file(client, fid) is not None
        resp = await client.patch(f"/api/v1/file/{fid}", json=body, headers=bearer(alice.access))
        assert resp.status == 200, await resp.text()
        assert cached_file(client, fid) is None
        assert (await get_file(client, fid, alice.access))[1][field] == want

    # the pipeline's status changes go through FileRepository.update
    await get_file(client, fid, alice.access)
    await rt.files.update(
        fid,
        status=FileStatus.REJECTED,
        reason="virus found: Eicar",
        updated_at=dt.datetime.now(dt.UTC),
    )
    assert cached_file(client, fid) is None
    status, body = await get_file(client, fid, alice.access)
    assert (status, body["status"]) == (200, "rejected")
    gone = await client.get(f"/api/v1/file/{fid}/content", headers=bearer(alice.access))
    assert gone.status == 404

    # operator retry touches every pending row: the whole namespace goes
    await get_file(client, fid, alice.access)
    assert cached_file(client, fid) is not None
    await rt.files.make_all_due()
    assert cached_file(client, fid) is None

    # delete
    await get_file(client, fid, alice.access)
    resp = await client.delete(f"/api/v1/file/{fid}", headers=bearer(alice.access))
    assert resp.status == 204
    assert (await get_file(client, fid, alice.access))[0] == 404


async def test_claim_invalidates(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    alice = (await make_users(client, alice="user"))["alice"]
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    # pending, not leased, not due: no worker of the server takes it on its own
    fid = await add_file(
        client, alice.id, "pending.bin", status="received", lease_until=None, next_attempt_at=far
    )
    assert (await get_file(client, fid, alice.access))[1]["status"] == "received"
    assert cached_file(client, fid) is not None
    # (Claimed as a worker would once it is due: a claim waits out next_attempt_at.)
    due = far + dt.timedelta(seconds=1)
    assert not await runtime(client).files.claim(fid, dt.datetime.now(dt.UTC), dt.timedelta(1))
    assert await runtime(client).files.claim(fid, due, dt.timedelta(days=1))
    assert (await get_file(client, fid, alice.access))[1]["status"] == "validating"


async def test_cached_records_are_still_owner_checked(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    u = await make_users(client, alice="user", bob="user", root="admin")
    fid = await add_file(client, u["alice"].id, "mine.txt")
    assert (await get_file(client, fid, u["alice"].access))[0] == 200
    assert cached_file(client, fid) is not None
    hits = file_hits(client)
    # bob gets the cached record, and the same 404 as for a file that does not exist
    status, body = await get_file(client, fid, u["bob"].access)
    assert file_hits(client) == hits + 1
    assert (status, body["error"]) == (404, "not_found")
    content = await client.get(f"/api/v1/file/{fid}/content", headers=bearer(u["bob"].access))
    assert content.status == 404
    assert (await get_file(client, fid, u["root"].access))[0] == 200


async def test_user_changes_apply_at_once(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    u = await make_users(client, alice="user", bob="user", carol="user", root="admin")
    rt = runtime(client)
    gw = rt.gateway

    async def me(token: str) -> int:
        return (await client.get("/api/v1/auth/me", headers=bearer(token))).status

    # disable (the CLI's calls): refused at once despite a 10-minute cache
    assert await me(u["alice"].access) == 200
    before = rt.cache.hits.get(USERS, 0)
    assert await me(u["alice"].access) == 200
    assert rt.cache.hits.get(USERS, 0) > before  # the user came from the cache
    await gw.users.update(u["alice"].id, disabled=True)
    await gw.users.revoke_tokens(u["alice"].id)
    assert await me(u["alice"].access) == 401

    # a role change: the former admin no longer sees other people's files
    fid = await add_file(client, u["bob"].id, "bobs.txt")
    assert (await get_file(client, fid, u["root"].access))[0] == 200
    await gw.users.update(u["root"].id, role="user")
    assert (await get_file(client, fid, u["root"].access))[0] == 404

    # logout and password change end the other sessions at once
    assert await me(u["bob"].access) == 200
    other = await client.post(
        "/api/v1/auth/login", json={"username": u["bob"].name, "password": "correct horse battery"}
    )
    resp = await client.post(
        "/api/v1/auth/logout", headers=bearer((await other.json())["access_token"])
    )
    assert resp.status == 200
    assert await me(u["bob"].access) == 401
    assert await me(u["carol"].access) == 200
    resp = await client.post(
        "/api/v1/auth/password",
        headers=bearer(u["carol"].access),
        json={"old_password": "correct horse battery", "new_password": "another long one"},
    )
    assert resp.status == 200
    assert await me(u["carol"].access) == 401


async def test_cache_ttl_zero_caches_nothing(make_client: MakeClient) -> None:
    client = await jwt_client(make_client, cache_ttl=0, revocation_check_interval=600)
    u = await make_users(client, alice="user")
    rt = runtime(client)
    assert not rt.cache.active
    fid = await add_file(client, u["alice"].id, "a.txt")
    for _ in range(3):
        assert (await get_file(client, fid, u["alice"].access))[0] == 200
    assert (await client.get("/api/v1/analytics", headers=bearer(u["alice"].access))).status == 200
    assert rt.cache.hits == {} and len(rt.cache) == 0
    # not even users: a change no invalidation announces shows at once
    async with rt.db.engine.begin() as conn:
        await conn.execute(update(users).where(users.c.id == u["alice"].id).values(disabled=True))
    assert (await get_file(client, fid, u["alice"].access))[0] == 401


async def test_analytics_cached_per_caller_and_query(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    u = await make_users(client, alice="user", bob="user", root="admin")
    rt = runtime(client)

    async def report(who: str, **params: str) -> dict[str, Any]:
        resp = await client.get("/api/v1/analytics", params=params, headers=bearer(u[who].access))
        assert resp.status == 200, await resp.text()
        assert resp.headers["Cache-Control"] == "private, max-age=5"
        body: dict[str, Any] = await resp.json()
        return body

    def hits() -> int:
        return rt.cache.hits.get(ANALYTICS, 0)

    first = await report("alice")
    assert hits() == 0
    assert await report("alice") == first
    assert await report("alice", user=u["alice"].id) == first  # the same normalized query
    assert hits() == 2
    # another caller, another granularity, another range: each its own entry
    await report("bob")
    await report("alice", granularity="hour", **{"from": "2024-01-01", "to": "2024-01-02"})
    service = await report("root")
    assert hits() == 2
    assert service["scope"] == "service"
    assert (await report("root", user=u["alice"].id))["scope"] == "user"
    # permissions are checked before the cache is asked
    resp = await client.get(
        "/api/v1/analytics", params={"user": u["bob"].id}, headers=bearer(u["alice"].access)
    )
    assert resp.status == 400


async def test_metrics_export_the_cache(make_client: MakeClient) -> None:
    client = await cached_client(make_client)
    alice = (await make_users(client, alice="user"))["alice"]
    fid = await add_file(client, alice.id, "m.txt")
    await get_file(client, fid, alice.access)
    await get_file(client, fid, alice.access)
    text = await (await client.get("/metrics")).text()
    assert 'tusserver_cache_hits_total{namespace="file"} 1.0' in text
    assert 'tusserver_cache_misses_total{namespace="file"}' in text
    assert "tusserver_cache_listening 1.0" in text
