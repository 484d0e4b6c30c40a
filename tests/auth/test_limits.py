"""Rate limits, brute-force throttling and storage quotas; the token buckets themselves."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from yarl import URL

from auth import ratelimit
from auth.ratelimit import MemoryRateLimiter, PostgresRateLimiter, RateLimiter
from tests.app_fixtures import OCTET, TUS, MakeClient
from tusserver import TusServerConfig, create_app
from tusserver.app import RUNTIME
from tusserver.catalog.db import create_database
from tusserver.catalog.migrate import upgrade

from .helpers import (
    PASSWORD,
    SECRET,
    Client,
    auth_client,
    bearer,
    create_upload,
    make_users,
    patch,
)

LOGIN = "/api/v1/auth/login"


def _retry_after(resp: Any) -> int:
    value = int(resp.headers["Retry-After"])
    assert value >= 1
    return value


async def _post(client: Client, token: str, length: int = 10) -> Any:
    return await client.post(
        "/uploads/", headers={**TUS, **bearer(token), "Upload-Length": str(length)}
    )


# --- rate limits over HTTP ----------------------------------------------------------------


async def test_creations_are_rate_limited_per_user(make_client: MakeClient) -> None:
    client = await auth_client(make_client, rate_limit_creations=1, rate_limit_creations_burst=2)
    users = await make_users(client, owner="user", other="user")
    owner = users["owner"].access
    start = time.monotonic()
    statuses = []
    while 429 not in statuses and len(statuses) < 6:
        resp = await _post(client, owner)
        statuses.append(resp.status)
    elapsed = time.monotonic() - start
    # The burst, then 429 (the third within a second; a slow machine may earn one more).
    assert statuses[:2] == [201, 201] and statuses[-1] == 429, statuses
    assert statuses.count(201) <= 2 + int(elapsed * 1), (statuses, elapsed)
    assert _retry_after(resp) <= 2
    # Someone else's bucket is untouched.
    assert (await _post(client, users["other"].access)).status == 201


async def test_login_brute_force_is_throttled(make_client: MakeClient) -> None:
    client = await auth_client(make_client, rate_limit_logins=0.01, rate_limit_logins_burst=3)
    owner = (await make_users(client, owner="user"))["owner"]
    for _ in range(3):
        resp = await client.post(LOGIN, json={"username": owner.name, "password": "guess it"})
        assert resp.status == 401
    resp = await client.post(LOGIN, json={"username": owner.name, "password": "guess again"})
    assert resp.status == 429
    _retry_after(resp)
    # While throttled even the right password is refused: no free guesses by timing the 429.
    resp = await client.post(LOGIN, json={"username": owner.name, "password": PASSWORD})
    assert resp.status == 429, await resp.text()
    _retry_after(resp)


async def test_made_up_usernames_do_not_reset_a_throttled_login(make_client: MakeClient) -> None:
    """The memory limiter keeps a bounded number of buckets (here 40): a flood of made-up
    usernames must not forget the buckets in use, a victim's login throttle above all (it
    cleared every bucket when full, giving the guesser a fresh burst)."""
    client = await auth_client(
        make_client,
        rate_limit_logins=0.0001,
        rate_limit_logins_burst=3,
        rate_limit_logins_wide=0.0001,
        rate_limit_logins_wide_burst=1000,
    )
    victim = (await make_users(client, victim="user"))["victim"]
    client.server.app[RUNTIME].gateway.limiter._max_keys = 40
    for i in range(3):
        resp = await client.post(LOGIN, json={"username": victim.name, "password": f"guess{i}"})
        assert resp.status == 401
    for i in range(60):
        resp = await client.post(LOGIN, json={"username": f"junk{i}", "password": "x" * 8})
        assert resp.status in (401, 429)
        # ... while the guesser keeps at the victim, whose bucket stays in use
        resp = await client.post(LOGIN, json={"username": victim.name, "password": f"more{i}"})
        assert resp.status == 429, (i, await resp.text())
    resp = await client.post(LOGIN, json={"username": victim.name, "password": PASSWORD})
    assert resp.status == 429


async def test_memory_rate_limiter_forgets_the_least_recently_used_bucket(clock: Clock) -> None:
    limiter = MemoryRateLimiter(max_keys=3)

    async def take(key: str) -> bool:
        return (await limiter.take(key, rate=0.001, burst=1)).allowed

    assert await take("a") and not await take("a")  # a is spent
    assert await take("b") and await take("c")
    assert not await take("a")  # used again: now the most recent
    assert await take("d")  # forgets b, the least recently used, not a
    assert not await take("a")
    assert await take("b")  # a new bucket: full again


async def test_patch_bytes_are_rate_limited(make_client: MakeClient) -> None:
    client = await auth_client(make_client, rate_limit_patch_bytes=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    path = await create_upload(client, owner, 200_000)
    resp = await patch(client, owner, path, 0, b"x" * 100_000)
    assert resp.status == 429, await resp.text()
    assert _retry_after(resp) >= 30  # (100000 - 60000 burst) / 1000 per second
    # A chunk within the burst goes through.
    assert (await patch(client, owner, path, 0, b"x" * 1000)).status == 204


async def test_chunked_patch_bodies_pay_for_their_bytes(make_client: MakeClient) -> None:
    """No Content-Length, no refusal up front: the bytes are charged once in, into debt,
    and the next PATCH waits for it."""
    client = await auth_client(make_client, rate_limit_patch_bytes=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    path = await create_upload(client, owner, 200_000)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 10_000

    resp = await client.patch(
        path,
        data=chunked(),
        headers={**TUS, **OCTET, **bearer(owner), "Upload-Offset": "0"},
    )
    assert resp.status == 204, await resp.text()
    assert "Content-Length" not in resp.request_info.headers  # it really was chunked
    assert resp.headers["Upload-Offset"] == "100000"
    after = await patch(client, owner, path, 100_000, b"x")
    assert after.status == 429, await after.text()
    assert _retry_after(after) >= 30  # 100000 - 60000 burst = 40000 bytes of debt at 1000/s


async def test_chunked_ietf_content_pays_for_its_bytes(make_client: MakeClient) -> None:
    """The same for the IETF draft's uploads: creation with content, without Content-Length."""
    client = await auth_client(make_client, rate_limit_patch_bytes=1000)
    owner = (await make_users(client, owner="user"))["owner"].access

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 10_000

    draft = {"Upload-Draft-Interop-Version": "8", **bearer(owner)}
    resp = await client.post(
        "/uploads/", data=chunked(), headers={**draft, "Upload-Complete": "?0"}
    )
    assert resp.status == 201, await resp.text()
    assert "Content-Length" not in resp.request_info.headers
    path = URL(resp.headers["Location"]).path
    after = await client.patch(
        path,
        data=b"y",
        headers={
            **draft,
            "Content-Type": "application/partial-upload",
            "Upload-Offset": "100000",
            "Upload-Complete": "?0",
        },
    )
    assert after.status == 429, await after.text()
    assert _retry_after(after) >= 30


async def test_chunked_bodies_sent_side_by_side_share_one_byte_budget(
    make_client: MakeClient,
) -> None:
    """Eight chunked PATCHes at once: each may start (the budget is not in debt), but their
    blocks are granted before they are read, from one budget, so together they store about
    the burst, then go at the budget's pace; they no longer each start on the whole
    budget (1.6 MB stored at once against a 60,000-byte burst)."""
    block = 16 * 1024
    client = await auth_client(make_client, rate_limit_patch_bytes=1000, write_buffer_size=block)
    owner = (await make_users(client, owner="user"))["owner"].access
    size = 200_000
    paths = [await create_upload(client, owner, size) for _ in range(8)]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * (size // 20)
            await asyncio.sleep(0.01)

    async def send(path: str) -> None:
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            await client.patch(
                path,
                data=chunked(),
                headers={**TUS, **OCTET, **bearer(owner), "Upload-Offset": "0"},
                timeout=aiohttp.ClientTimeout(total=2),
            )

    started = time.monotonic()
    await asyncio.gather(*(send(p) for p in paths))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.2)  # (the bodies cut by the client's timeout are stored)
    stored = 0
    for path in paths:
        resp = await client.head(path, headers={**TUS, **bearer(owner)})
        stored += int(resp.headers["Upload-Offset"])
    burst = 60 * 1000
    # (A block is granted while the budget is half full: the other half stays for the
    # caller's other requests.)
    assert burst / 2 <= stored <= burst + block + 1000 * (elapsed + 1), stored


async def test_a_paced_body_leaves_room_for_the_caller_s_other_patches(
    make_client: MakeClient,
) -> None:
    """A chunked body read at the budget's pace takes its blocks only while the budget is
    half full: a PATCH with Content-Length (which needs its whole cost at once) from the same
    user gets through beside it, instead of a 429 after every Retry-After while the paced
    body took each token as it came back."""
    client = await auth_client(
        make_client, rate_limit_patch_bytes=10_000, write_buffer_size=16 * 1024
    )
    owner = (await make_users(client, owner="user"))["owner"].access
    streaming = await create_upload(client, owner, 2_000_000)
    other = await create_upload(client, owner, 8192)
    done = asyncio.Event()

    async def chunked() -> AsyncIterator[bytes]:
        while not done.is_set():
            yield b"x" * 16384
            await asyncio.sleep(0)

    async def stream() -> None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await client.patch(
                streaming,
                data=chunked(),
                headers={**TUS, **OCTET, **bearer(owner), "Upload-Offset": "0"},
                timeout=aiohttp.ClientTimeout(total=20),
            )

    task = asyncio.create_task(stream())
    try:
        await asyncio.sleep(1.0)  # the paced body has drained the first half of the burst
        for _ in range(5):
            resp = await patch(client, owner, other, 0, b"y" * 8192)
            if resp.status != 429:
                break
            await asyncio.sleep(_retry_after(resp))
        assert resp.status == 204, await resp.text()
    finally:
        done.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- quotas --------------------------------------------------------------------------------


async def test_quota_limits_upload_lengths(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1000)
    users = await make_users(client, owner="user", admin="admin")
    owner = users["owner"].access
    resp = await _post(client, owner, 1001)
    assert resp.status == 413
    assert "quota" in (await resp.text()).lower()
    assert (await _post(client, owner, 600)).status == 201
    resp = await _post(client, owner, 600)
    assert resp.status == 413, await resp.text()
    assert "400 bytes left" in await resp.text()
    assert (await _post(client, owner, 400)).status == 201
    # Admins have no quota.
    assert (await _post(client, users["admin"].access, 5000)).status == 201
    me = await (await client.get("/api/v1/auth/me", headers=bearer(owner))).json()
    assert me["quota_bytes"] == 1000 and me["usage_bytes"] == 1000


async def test_quota_limits_deferred_length_uploads(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1000)
    owner = (await make_users(client, owner="user"))["owner"].access
    path = await create_upload(client, owner, None, **{"Upload-Defer-Length": "1"})
    resp = await patch(client, owner, path, 0, b"x" * 1001)
    assert resp.status == 413, await resp.text()
    assert (await patch(client, owner, path, 0, b"x" * 600)).status == 204
    resp = await patch(client, owner, path, 600, b"x" * 401)
    assert resp.status == 413, await resp.text()
    # Declaring a length past the quota is refused too.
    resp = await client.patch(
        path,
        data=b"x" * 10,
        headers={**TUS, **OCTET, **bearer(owner), "Upload-Offset": "600", "Upload-Length": "1500"},
    )
    assert resp.status == 413, await resp.text()
    # Other uploads count: 300 more elsewhere leaves this one 100.
    assert (await _post(client, owner, 300)).status == 201
    assert (await patch(client, owner, path, 600, b"x" * 101)).status == 413
    assert (await patch(client, owner, path, 600, b"x" * 100)).status == 204


# --- two instances, one PostgreSQL ---------------------------------------------------------


@pytest.mark.postgres
async def test_rate_limit_holds_across_instances(
    aiohttp_client: Any, pg_url: str, tmp_path: Path
) -> None:
    def app(name: str) -> Any:
        config = TusServerConfig(
            data_dir=tmp_path / name,
            database_url=pg_url,
            sweep_interval=0,
            auth="jwt",
            jwt_secret=SECRET,
            rate_limit_creations=0.01,
            rate_limit_creations_burst=2,
        )
        return create_app(config)

    a: Client = await aiohttp_client(app("a"))
    b: Client = await aiohttp_client(app("b"))
    owner = (await make_users(a, owner="user"))["owner"].access
    assert (await _post(a, owner)).status == 201
    assert (await _post(b, owner)).status == 201
    for client in (a, b):
        resp = await _post(client, owner)
        assert resp.status == 429, await resp.text()
        _retry_after(resp)


# --- the token buckets ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A fake clock for auth.ratelimit only (the event loop keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake, time=fake))
    return fake


async def _bucket_math(limiter: RateLimiter, clock: Clock) -> None:
    key = f"test:{uuid.uuid4().hex}"

    async def take(cost: float = 1.0, *, k: str = key) -> ratelimit.Decision:
        return await limiter.take(k, rate=2.0, burst=3.0, cost=cost)

    # A new bucket is full: the burst goes through at once.
    assert [(await take()).allowed for _ in range(3)] == [True, True, True]
    denied = await take()
    assert not denied.allowed and denied.retry_after == pytest.approx(0.5)
    # A refused take costs nothing: half a token after 0.25 s.
    clock.now += 0.25
    denied = await take()
    assert not denied.allowed and denied.retry_after == pytest.approx(0.25)
    clock.now += 0.25
    assert (await take()).allowed
    assert not (await take()).allowed
    # Refill stops at the burst.
    clock.now += 3600
    assert [(await take()).allowed for _ in range(4)] == [True, True, True, False]
    # A cost above the burst is never allowed, and says how long it would take.
    clock.now += 3600
    big = await take(5)
    assert not big.allowed and big.retry_after == pytest.approx(1.0)
    assert (await take(3)).allowed  # the refused big take cost nothing
    # Buckets are independent.
    assert (await take(k=key + ":other")).allowed
    # Forced takes go into debt (a cost known afterwards); later takes wait for it.
    clock.now += 3600
    forced = await limiter.take(key, rate=2.0, burst=3.0, cost=7, force=True)
    assert forced.allowed
    owed = await take()
    assert not owed.allowed and owed.retry_after == pytest.approx(2.5)  # from -4 to 1
    clock.now += 2.5
    assert (await take()).allowed
    # Rate 0: once the burst is gone it never comes back.
    zero = f"{key}:zero"
    assert (await limiter.take(zero, rate=0, burst=1)).allowed
    never = await limiter.take(zero, rate=0, burst=1)
    assert not never.allowed and never.retry_after == float("inf")


async def test_memory_rate_limiter_bucket_math(clock: Clock) -> None:
    await _bucket_math(MemoryRateLimiter(), clock)


@pytest.mark.postgres
async def test_postgres_rate_limiter_bucket_math(clock: Clock, pg_url: str) -> None:
    db = create_database(pg_url)
    try:
        await upgrade(db)
        await _bucket_math(PostgresRateLimiter(db), clock)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgres_rate_limiter_is_atomic_under_concurrency(pg_url: str) -> None:
    dbs = [create_database(pg_url), create_database(pg_url)]  # two "instances"
    try:
        await upgrade(dbs[0])
        limiters = [PostgresRateLimiter(db) for db in dbs]
        key = f"test:{uuid.uuid4().hex}"
        decisions = await asyncio.gather(
            *(limiters[i % 2].take(key, rate=0.001, burst=5) for i in range(20))
        )
        assert sum(d.allowed for d in decisions) == 5
    finally:
        for db in dbs:
            await db.dispose()


async def test_registrations_are_limited_per_address(make_client: MakeClient) -> None:
    """One address cannot sign up account after account (each may get `default_quota`):
    its registrations have a budget of their own. A sign-up that makes no account (a
    taken name, bad input) costs nothing; another address has its own budget."""
    client = await auth_client(
        make_client,
        rate_limit_registrations=0.001,
        rate_limit_registrations_burst=2,
        trust_proxy_headers=True,
    )
    url = "/api/v1/auth/register"

    async def register(name: str, ip: str = "203.0.113.7") -> Any:
        return await client.post(
            url, json={"username": name, "password": PASSWORD}, headers={"X-Forwarded-For": ip}
        )

    first = uuid.uuid4().hex[:12]
    assert (await register(first)).status == 201
    for _ in range(3):  # taken: no account made, nothing charged
        assert (await register(first)).status == 409
    bad = await client.post(
        url,
        json={"username": "has space", "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert bad.status == 400
    assert (await register(uuid.uuid4().hex[:12])).status == 201
    refused = await register(uuid.uuid4().hex[:12])
    assert refused.status == 429
    assert _retry_after(refused) > 60
    # Another address is not held back by this one.
    assert (await register(uuid.uuid4().hex[:12], ip="198.51.100.9")).status == 201
