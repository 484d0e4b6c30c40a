"""Sign-in hardening (issue #16, items 5-9) through HTTP against the real server.

Every test runs on SQLite and PostgreSQL (the rate buckets live in the catalog there). Each
test signs in from addresses of its own (``X-Forwarded-For`` behind a trusted proxy), so the
buckets of other tests sharing the PostgreSQL database never interfere.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import secrets
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tests.app_fixtures import MakeClient
from tusserver.catalog.schema import users as users_table

from .helpers import PASSWORD, Client, auth_client, bearer, make_users, runtime, unique

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
PASSWORD_URL = "/api/v1/auth/password"
ME = "/api/v1/auth/me"


def address() -> str:
    """A client address no other test uses."""
    return "10.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))


def via(ip: str, token: str | None = None) -> dict[str, str]:
    return {"X-Forwarded-For": ip, **bearer(token)}


async def metric(client: Client, name: str, **labels: str) -> float:
    """A sample's value as /metrics exports it (0 if absent)."""
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def audit_entries(client: Client, action: str) -> list[dict[str, Any]]:
    log = runtime(client).gateway.audit_log
    await log.flush()
    return [e for e in await log.recent(1000) if e["action"] == action]


async def hardened(make_client: MakeClient, **overrides: Any) -> Client:
    """A server whose sign-in budgets refill so slowly that a test never sees a refill."""
    settings: dict[str, Any] = {
        "trust_proxy_headers": True,
        "rate_limit_logins": 0.001,
        "rate_limit_logins_burst": 5,
        "rate_limit_logins_wide": 0.001,
        "rate_limit_logins_wide_burst": 1000,
    }
    settings.update(overrides)
    return await auth_client(make_client, **settings)


async def _login(client: Client, name: str, password: str, ip: str) -> Any:
    return await client.post(LOGIN, json={"username": name, "password": password}, headers=via(ip))


# --- item 5: the throttle is charged before the password is checked -------------------------


async def test_concurrent_wrong_passwords_check_at_most_the_burst(
    make_client: MakeClient,
) -> None:
    client = await hardened(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    ip = address()
    checked_before = await metric(
        client, "tusserver_signin_failures_total", reason="wrong_password"
    )
    answers = await asyncio.gather(
        *(_login(client, owner.name, f"guess number {i}", ip) for i in range(30))
    )
    statuses = sorted(r.status for r in answers)
    # Exactly the burst reached the password check; the rest were refused before it.
    assert statuses.count(401) == 5 and statuses.count(429) == 25, statuses
    checked = await metric(client, "tusserver_signin_failures_total", reason="wrong_password")
    assert checked - checked_before == 5
    # Each password check that failed left one entry: five, not thirty.
    denied = [
        e
        for e in await audit_entries(client, "auth.login")
        if e["target"] == owner.name and e["outcome"] == "denied"
    ]
    assert len(denied) == 5, denied
    # The budget is spent: the right password is refused too, with a Retry-After.
    resp = await _login(client, owner.name, PASSWORD, ip)
    assert resp.status == 429, await resp.text()
    assert int(resp.headers["Retry-After"]) >= 1


async def test_the_right_password_in_a_burst_gets_in_only_within_the_budget(
    make_client: MakeClient,
) -> None:
    client = await hardened(make_client, rate_limit_logins_burst=3)
    owner = (await make_users(client, owner="user"))["owner"]
    ip = address()
    attempts = [f"wrong {i}" for i in range(12)]
    attempts.insert(6, PASSWORD)
    answers = await asyncio.gather(*(_login(client, owner.name, pw, ip) for pw in attempts))
    statuses = [r.status for r in answers]
    # At most the burst of wrong passwords was checked; the right one got in only if it
    # came within the budget (its charge then goes back, which may let one more be checked).
    assert statuses.count(401) <= 3, statuses
    if statuses[6] == 429:
        assert statuses.count(401) == 3 and statuses.count(429) == len(attempts) - 3, statuses
    else:
        assert statuses[6] == 200 and statuses.count(429) >= len(attempts) - 4, statuses


# --- item 6: password changes are throttled like logins -----------------------------------


async def test_password_change_is_throttled_whatever_the_password(
    make_client: MakeClient,
) -> None:
    client = await hardened(make_client, rate_limit_logins_burst=3)
    owner = (await make_users(client, owner="user"))["owner"]
    ip = address()

    async def change(old: str) -> Any:
        return await client.post(
            PASSWORD_URL,
            json={"old_password": old, "new_password": "a brand new password"},
            headers=via(ip, owner.access),
        )

    for i in range(3):
        resp = await change(f"wrong guess {i}")
        assert resp.status == 401, await resp.text()
    resp = await change("wrong guess again")
    assert resp.status == 429
    # Over budget, the right password is refused as well: a stolen token guesses nothing.
    resp = await change(PASSWORD)
    assert resp.status == 429, await resp.text()
    assert (await _login(client, owner.name, PASSWORD, address())).status == 200
    # Concurrent guesses through a stolen token check at most the burst too.
    other = (await make_users(client, other="user"))["other"]
    ip2 = address()
    answers = await asyncio.gather(
        *(
            client.post(
                PASSWORD_URL,
                json={"old_password": f"guess {i}", "new_password": "a brand new password"},
                headers=via(ip2, other.access),
            )
            for i in range(12)
        )
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(401) == 3 and statuses.count(429) == 9, statuses
    throttled = await audit_entries(client, "rate_limit")
    assert any(e["target"] == other.name and e["outcome"] == "throttled" for e in throttled)


# --- item 7: one address cannot lock the owner out ------------------------------------------


async def test_a_guesser_at_one_address_does_not_lock_the_owner_out(
    make_client: MakeClient,
) -> None:
    client = await hardened(make_client, rate_limit_logins_wide_burst=50)
    owner = (await make_users(client, owner="user"))["owner"]
    attacker = address()
    statuses = [
        (await _login(client, owner.name, f"guess {i}", attacker)).status for i in range(10)
    ]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 5, statuses
    # The owner, elsewhere, signs in at once.
    resp = await _login(client, owner.name, PASSWORD, address())
    assert resp.status == 200, await resp.text()


async def test_many_addresses_share_the_per_username_budget(make_client: MakeClient) -> None:
    client = await hardened(make_client, rate_limit_logins_wide_burst=8)
    owner = (await make_users(client, owner="user"))["owner"]
    statuses = []
    for _ in range(6):  # six addresses, two guesses each: 12 guesses against a budget of 8
        ip = address()
        statuses += [(await _login(client, owner.name, "wrong!!", ip)).status for _ in range(2)]
    assert statuses.count(401) == 8 and statuses[8:] == [429] * 4, statuses


async def test_a_refused_sign_in_costs_no_other_budget(make_client: MakeClient) -> None:
    """A sign-in refused by one bucket checked no password: the buckets it was charged to
    before are refunded. Someone who keeps trying a throttled account from their address
    can still sign in to another one from it."""
    client = await hardened(make_client, rate_limit_logins_wide_burst=8)
    users = await make_users(client, owner="user", other="user")
    owner, other = users["owner"], users["other"]
    for _ in range(4):  # guessers at four addresses use up the owner's budget
        ip = address()
        assert [(await _login(client, owner.name, "wrong!!", ip)).status for _ in range(2)] == [
            401,
            401,
        ]
    mine = address()
    for _ in range(10):  # the owner is throttled: refused before the password is checked
        assert (await _login(client, owner.name, PASSWORD, mine)).status == 429
    resp = await _login(client, other.name, PASSWORD, mine)
    assert resp.status == 200, await resp.text()


# --- item 8: reuse of a rotated refresh token ends the session ------------------------------


async def _refresh(client: Client, token: str) -> Any:
    return await client.post(REFRESH, json={"refresh_token": token})


async def test_refresh_token_reuse_revokes_the_whole_family(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    users = await make_users(client, owner="user")
    owner = users["owner"]
    other_session = (await _login(client, owner.name, PASSWORD, "127.0.0.1")).status
    assert other_session == 200
    resp = await _refresh(client, owner.refresh)
    assert resp.status == 200
    rotated = (await resp.json())["refresh_token"]
    reused_before = await metric(client, "tusserver_signin_failures_total", reason="refresh_reused")
    # The thief (or the owner) replays the spent token: refused, and the session is over.
    assert (await _refresh(client, owner.refresh)).status == 401
    resp = await _refresh(client, rotated)
    assert resp.status == 401, "the token the reused one was rotated into must die with it"
    reused = await metric(client, "tusserver_signin_failures_total", reason="refresh_reused")
    assert reused - reused_before == 1
    denied = await audit_entries(client, "auth.refresh")
    assert any(
        e["actor"] == owner.id and e["outcome"] == "denied" and e["detail"]["reason"]
        for e in denied
    )


async def test_concurrent_use_of_one_refresh_token_ends_the_session(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    answers = await asyncio.gather(*(_refresh(client, owner.refresh) for _ in range(4)))
    statuses = sorted(r.status for r in answers)
    assert statuses == [200, 401, 401, 401], statuses
    winner = next(r for r in answers if r.status == 200)
    # Two holders of one token: whichever won, its new token is revoked with the family.
    assert (await _refresh(client, (await winner.json())["refresh_token"])).status == 401


async def test_sign_out_is_not_reported_as_theft(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    before = await metric(client, "tusserver_signin_failures_total", reason="refresh_reused")
    assert (await client.post("/api/v1/auth/logout", headers=bearer(owner.access))).status == 200
    assert (await _refresh(client, owner.refresh)).status == 401
    after = await metric(client, "tusserver_signin_failures_total", reason="refresh_reused")
    assert after == before


# --- item 9: registration conflicts and password hashes -----------------------------------


async def test_taken_username_is_a_409_of_its_own(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    name = unique("taken")
    body = {"username": name, "password": "long enough password"}
    assert (await client.post("/api/v1/auth/register", json=body)).status == 201
    resp = await client.post("/api/v1/auth/register", json=body)
    assert resp.status == 409
    assert (await resp.json())["error"] == "username_taken"


def _legacy_scrypt(password: str) -> str:
    """A hash as earlier versions stored it (scrypt, n = 2^14)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=2**14, r=8, p=1, maxmem=64 * 1024**2, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt$14$8$1${b64(salt).decode()}${b64(digest).decode()}"


async def _stored_hash(client: Client, user_id: str) -> str:
    async with runtime(client).db.engine.connect() as conn:
        row = await conn.execute(
            select(users_table.c.password_hash).where(users_table.c.id == user_id)
        )
        return str(row.scalar_one())


async def test_new_hashes_are_argon2id_and_old_ones_are_upgraded_on_login(
    make_client: MakeClient,
) -> None:
    client = await auth_client(make_client)
    name = unique("reg")
    resp = await client.post(
        "/api/v1/auth/register", json={"username": name, "password": "long enough password"}
    )
    assert resp.status == 201
    fresh = await _stored_hash(client, (await resp.json())["id"])
    assert fresh.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), fresh
    # A user from before: the old hash still signs in, and is replaced by today's kind.
    gw = runtime(client).gateway
    old = await gw.users.create(unique("old"), _legacy_scrypt(PASSWORD))
    wrong = await _login(client, old.username, "not the password", address())
    assert wrong.status == 401
    assert (await _stored_hash(client, old.id)).startswith("scrypt$")  # not on a failure
    assert (await _login(client, old.username, PASSWORD, address())).status == 200
    upgraded = await _stored_hash(client, old.id)
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$"), upgraded
    assert (await _login(client, old.username, PASSWORD, address())).status == 200
    assert await _stored_hash(client, old.id) == upgraded  # once is enough


# --- bad tokens are counted -----------------------------------------------------------------


async def test_bad_and_revoked_tokens_are_counted(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    name = "tusserver_token_rejections_total"
    invalid, revoked = (
        await metric(client, name, reason="invalid"),
        await metric(client, name, reason="revoked"),
    )
    assert (await client.get(ME, headers=bearer(owner.access + "x"))).status == 401
    assert (await client.post("/api/v1/auth/logout", headers=bearer(owner.access))).status == 200
    assert (await client.get(ME, headers=bearer(owner.access))).status == 401
    assert await metric(client, name, reason="invalid") == invalid + 1
    assert await metric(client, name, reason="revoked") == revoked + 1
    entries = [e for e in await audit_entries(client, "auth.token") if e["actor"] == owner.id]
    assert [e["detail"] for e in entries] == [{"reason": "revoked"}]


async def test_cookie_must_be_a_boolean(make_client: MakeClient) -> None:
    """ "cookie": "false" (a string) asked for a session cookie: only true or false count."""
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    body = {"username": owner.name, "password": PASSWORD}
    resp = await client.post(LOGIN, json={**body, "cookie": "false"})
    assert resp.status == 400, await resp.text()
    resp = await client.post(LOGIN, json={**body, "cookie": False})
    assert resp.status == 200 and "Set-Cookie" not in resp.headers
