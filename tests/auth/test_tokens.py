"""Token lifecycle (refresh rotation, logout, disabling, password change), registration, and
what the auth API does with hostile input. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.app_fixtures import TUS, MakeClient

from .helpers import (
    PASSWORD,
    Client,
    auth_client,
    bearer,
    create_upload,
    login,
    make_users,
    runtime,
    start_of_second,
    unique,
)

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"


async def _me(client: Client, token: str) -> int:
    return (await client.get(ME, headers=bearer(token))).status


async def _refresh(client: Client, token: str) -> Any:
    return await client.post(REFRESH, json={"refresh_token": token})


async def test_refresh_rotates_the_refresh_token(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    resp = await _refresh(client, owner.refresh)
    assert resp.status == 200, await resp.text()
    fresh = await resp.json()
    assert fresh["refresh_token"] != owner.refresh
    assert await _me(client, fresh["access_token"]) == 200
    # The new one works (once), and so on down the chain.
    resp = await _refresh(client, fresh["refresh_token"])
    assert resp.status == 200, await resp.text()
    newest = await resp.json()
    assert (await _refresh(client, newest["refresh_token"])).status == 200
    # A spent one is refused (and, being reuse, ends the session: tests below).
    assert (await _refresh(client, fresh["refresh_token"])).status == 401
    # An access token is no refresh token.
    assert (await _refresh(client, fresh["access_token"])).status == 401
    assert (await _refresh(client, "not-a-jwt")).status == 401


async def test_logout_revokes_access_and_refresh_tokens(make_client: MakeClient) -> None:
    client = await auth_client(make_client, revocation_check_interval=0)
    owner = (await make_users(client, owner="user"))["owner"]
    # Sign in and out within one wall-clock second (JWT iat has a resolution of 1 s).
    await start_of_second()
    session = await login(client, owner.name, PASSWORD)
    access, refresh = session["access_token"], session["refresh_token"]
    resp = await client.post("/api/v1/auth/logout", headers=bearer(access))
    assert resp.status == 200, await resp.text()
    assert await _me(client, access) == 401
    assert (await client.head("/uploads/x", headers={**TUS, **bearer(access)})).status == 401
    assert (await _refresh(client, refresh)).status == 401
    # Every earlier session of the user ends too.
    assert await _me(client, owner.access) == 401
    assert (await _refresh(client, owner.refresh)).status == 401
    # Signing in again works at once.
    again = await login(client, owner.name, PASSWORD)
    assert await _me(client, again["access_token"]) == 200


async def test_disabled_user_is_refused_everywhere(make_client: MakeClient) -> None:
    client = await auth_client(make_client, revocation_check_interval=0)
    owner = (await make_users(client, owner="user"))["owner"]
    assert await _me(client, owner.access) == 200
    await runtime(client).gateway.users.update(owner.id, disabled=True)
    assert await _me(client, owner.access) == 401
    assert (await _refresh(client, owner.refresh)).status == 401
    denied = await client.post(LOGIN, json={"username": owner.name, "password": PASSWORD})
    assert denied.status == 401
    assert (await denied.json())["message"] == "wrong username or password"


async def test_password_change_revokes_tokens(make_client: MakeClient) -> None:
    client = await auth_client(make_client, revocation_check_interval=0)
    owner = (await make_users(client, owner="user"))["owner"]
    url = "/api/v1/auth/password"
    new = "a much better passphrase"
    auth = bearer(owner.access)
    wrong = await client.post(url, headers=auth, json={"old_password": "nope", "new_password": new})
    assert wrong.status == 401
    weak = await client.post(
        url, headers=auth, json={"old_password": PASSWORD, "new_password": "short"}
    )
    assert weak.status == 400
    assert await _me(client, owner.access) == 200  # failures changed nothing
    anonymous = await client.post(url, json={"old_password": PASSWORD, "new_password": new})
    assert anonymous.status == 401
    # Sign in and change the password within one wall-clock second (iat resolution: 1 s).
    await start_of_second()
    session = await login(client, owner.name, PASSWORD)
    resp = await client.post(
        url,
        headers=bearer(session["access_token"]),
        json={"old_password": PASSWORD, "new_password": new},
    )
    assert resp.status == 200, await resp.text()
    for access, refresh in (
        (session["access_token"], session["refresh_token"]),
        (owner.access, owner.refresh),
    ):
        assert await _me(client, access) == 401
        assert (await _refresh(client, refresh)).status == 401
    old = await client.post(LOGIN, json={"username": owner.name, "password": PASSWORD})
    assert old.status == 401
    fresh = await login(client, owner.name, new)
    assert await _me(client, fresh["access_token"]) == 200


async def test_register(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    url = "/api/v1/auth/register"
    name = unique("newbie")
    # A client cannot pick its own role.
    resp = await client.post(url, json={"username": name, "password": PASSWORD, "role": "admin"})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["username"] == name and created["role"] == "user"
    assert "password" not in str(created) and "hash" not in str(created)
    body = await login(client, name, PASSWORD)
    assert body["user"]["id"] == created["id"]
    dup = await client.post(url, json={"username": name, "password": "another password"})
    assert dup.status == 409
    assert (await dup.json())["error"] == "username_taken"
    for bad in (
        {"username": unique("weak"), "password": "short"},
        {"username": "has space", "password": PASSWORD},
        {"username": "-leading-dash", "password": PASSWORD},
        {"username": "x" * 65, "password": PASSWORD},
        {"username": "", "password": PASSWORD},
        {"username": "nul\x00byte", "password": PASSWORD},
        {"username": 42, "password": PASSWORD},
        {"username": unique("nopw")},
    ):
        resp = await client.post(url, json=bad)
        assert resp.status == 400, (bad, resp.status, await resp.text())


async def test_registration_can_be_closed(make_client: MakeClient) -> None:
    client = await auth_client(make_client, registration_enabled=False)
    resp = await client.post(
        "/api/v1/auth/register", json={"username": unique("late"), "password": PASSWORD}
    )
    assert resp.status == 403


async def test_malformed_authorization_headers_are_401(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    for value in (
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Basic dXNlcjpwYXNz",
        "bearer",
        "Token abc",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer \u00e9\u00e8",
        "Bearer " + "a" * 8000,  # past the token length limit, within aiohttp's header limit
    ):
        for method, path, extra in (("GET", ME, {}), ("HEAD", "/uploads/abc", TUS)):
            headers = {**extra, "Authorization": value}
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 401, (value[:40], method, resp.status)


async def test_oversized_authorization_header_is_a_client_error(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    resp = await client.get(ME, headers={"Authorization": "Bearer " + "a" * 10000})
    # aiohttp refuses header fields past 8190 bytes before the app sees them.
    assert resp.status in (400, 401, 431), resp.status


async def test_json_bodies_are_bounded_and_typed(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    big = b'{"username": "' + b"a" * (17 * 1024) + b'", "password": "x"}'
    json_ct = {"Content-Type": "application/json"}
    resp = await client.post(LOGIN, data=big, headers=json_ct)
    assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    resp = await client.post(LOGIN, data=chunks(), headers=json_ct)
    assert resp.status == 413
    for data, ctype, status in (
        (b'{"username": "a", "password": "b"}', "text/plain", 415),
        (b"username=a&password=b", "application/x-www-form-urlencoded", 415),
        (b"{not json", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'["a", "b"]', "application/json", 400),
        (b"", "application/json", 400),
        (b'{"username": ["a"], "password": "b"}', "application/json", 400),
    ):
        for url in (LOGIN, REFRESH, "/api/v1/auth/register"):
            resp = await client.post(url, data=data, headers={"Content-Type": ctype})
            assert resp.status == status, (url, data, ctype, resp.status, await resp.text())


async def test_failed_logins_all_look_alike(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    answers = set()
    for username, password in (
        (owner.name, "wrong password"),
        (unique("nobody"), PASSWORD),
        ("' OR 1=1 --", PASSWORD),
        ("admin' --", "' OR '1'='1"),
        ("admin\x00", PASSWORD),
        (owner.name + "\x00", PASSWORD),
        # The name in another case is the same account (test_username_case.py): a wrong
        # password for it is refused like any other.
        (owner.name.upper(), "wrong password"),
        (owner.name + " ", PASSWORD),
    ):
        resp = await client.post(LOGIN, json={"username": username, "password": password})
        assert resp.status == 401, (username, resp.status, await resp.text())
        answers.add(await resp.text())
    assert len(answers) == 1, answers
    assert "wrong username or password" in answers.pop()


async def test_login_timing_does_not_reveal_unknown_users(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]

    async def timed(username: str) -> float:
        start = time.perf_counter()
        resp = await client.post(LOGIN, json={"username": username, "password": "wrong one!"})
        elapsed = time.perf_counter() - start
        assert resp.status == 401
        return elapsed

    await timed(owner.name)  # warm up
    rounds = []
    for _ in range(3):  # a real oracle shows in every round, load noise rarely does
        unknown, wrong = [], []
        for i in range(15):  # interleaved, alternating order, so drift hits both alike
            pair = [("unknown", unique("ghost")), ("wrong", owner.name)]
            for kind, name in pair if i % 2 else reversed(pair):
                (unknown if kind == "unknown" else wrong).append(await timed(name))
        a, b = statistics.median(unknown), statistics.median(wrong)
        rounds.append((round(a, 4), round(b, 4)))
        if abs(a - b) < 0.5 * min(a, b):
            return
    raise AssertionError(f"unknown-user vs wrong-password medians differ: {rounds}")


async def test_audit_log_records_logins_and_creations(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    resp = await client.post(LOGIN, json={"username": owner.name, "password": "not it at all"})
    assert resp.status == 401
    path = await create_upload(client, owner.access, 10)
    audit = runtime(client).gateway.audit_log
    await audit.flush()
    entries = await audit.recent(1000)
    logins = [e for e in entries if e["action"] == "auth.login"]
    assert any(e["outcome"] == "denied" and e["target"] == owner.name for e in logins)
    assert any(e["outcome"] == "ok" and e["actor"] == owner.id for e in logins)
    upload_id = path.rsplit("/", 1)[1]
    created = [e for e in entries if e["action"] == "upload.create" and e["target"] == upload_id]
    assert len(created) == 1 and created[0]["actor"] == owner.id, created
    mine = [e for e in entries if owner.id in (e["actor"], e["target"]) or e in logins]
    assert all(e["ip"] for e in mine)
    # Never a secret in the log.
    text = repr(entries)
    assert PASSWORD not in text and "not it at all" not in text and owner.access not in text


async def test_remembered_access_tokens_still_expire_and_stay_typed() -> None:
    from auth.tokens import InvalidToken, TokenService

    service = TokenService(
        algorithm="HS256",
        secret="k" * 40,
        issuer="tusserver",
        audience="tusserver",
        leeway=0,
        access_ttl=1.0,
        refresh_ttl=60.0,
    )
    token, _, _ = service.issue(subject="u1", token_type="access", role="user")
    first = await service.verify(token)
    assert (await service.verify(token)) is first  # remembered: the same claims object
    # A remembered access token is not a refresh token, and a forged copy is not the token.
    with pytest.raises(InvalidToken):
        await service.verify(token, token_type="refresh")
    head, payload, sig = token.split(".")
    with pytest.raises(InvalidToken):
        await service.verify(f"{head}.{payload}.{sig[:-2]}AA")
    await asyncio.sleep(1.3)
    with pytest.raises(InvalidToken, match="expired"):
        await service.verify(token)
