"""Who may do what: every tus method and API endpoint against every kind of caller.

Owners and admins succeed; another user gets 404 exactly like a missing id (no existence
oracle); no token or any defective token gets 401. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import jwt

from tests.app_fixtures import OCTET, TUS, MakeClient
from tests.pipeline.test_local_pipeline import png_bytes

from .helpers import (
    PASSWORD,
    SECRET,
    Client,
    User,
    auth_client,
    bearer,
    create_upload,
    make_users,
    patch,
)

OK, DENIED, MISSING, UNAUTH = "ok", "denied", "missing", "unauth"


def _claims(subject: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": "tusserver",
        "aud": "tusserver",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": secrets.token_hex(8),
        "typ": "access",
        "role": "user",
    }
    claims.update(over)
    return claims


def _tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    i = len(sig) // 2  # not the last char: its low bits are base64 padding
    flipped = "A" if sig[i] != "A" else "B"
    return ".".join([head, payload, sig[:i] + flipped + sig[i + 1 :]])


def bad_tokens(owner: User) -> dict[str, str]:
    """Tokens that must all be refused, each for one reason, all naming the owner."""
    now = int(time.time())
    return {
        "expired": jwt.encode(
            _claims(owner.id, iat=now - 7200, nbf=now - 7200, exp=now - 3600), SECRET, "HS256"
        ),
        "tampered": _tampered(owner.access),
        "wrong_audience": jwt.encode(_claims(owner.id, aud="someone-else"), SECRET, "HS256"),
        "wrong_issuer": jwt.encode(_claims(owner.id, iss="someone-else"), SECRET, "HS256"),
        "alg_none": jwt.encode(_claims(owner.id), None, algorithm="none"),
        "other_secret": jwt.encode(_claims(owner.id), "y" * 40, "HS256"),
        "refresh_as_access": owner.refresh,
        "unknown_subject": jwt.encode(_claims(secrets.token_hex(16)), SECRET, "HS256"),
    }


def callers(users: dict[str, User]) -> dict[str, tuple[dict[str, str], str]]:
    """caller name -> (headers, how an action on the owner's resource must end)."""
    out: dict[str, tuple[dict[str, str], str]] = {
        "owner": (bearer(users["owner"].access), OK),
        "admin": (bearer(users["admin"].access), OK),
        "other": (bearer(users["other"].access), DENIED),
        "anonymous": ({}, UNAUTH),
    }
    for name, token in bad_tokens(users["owner"]).items():
        out[name] = (bearer(token), UNAUTH)
    return out


class Matrix:
    """Collects mismatches, so one run shows the whole table."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def expect(self, what: str, resp: Any, status: int, body: bytes) -> None:
        if resp.status != status:
            self.errors.append(f"{what}: {resp.status} (expected {status}): {body[:200]!r}")
        elif status == 401 and "WWW-Authenticate" not in resp.headers:
            self.errors.append(f"{what}: 401 without WWW-Authenticate")

    def same(self, what: str, denied: tuple[int, bytes], missing: tuple[int, bytes]) -> None:
        if denied != missing:
            self.errors.append(f"{what}: other's resource {denied!r} != missing id {missing!r}")

    def check(self) -> None:
        assert not self.errors, "\n".join(self.errors)


async def _setup(make_client: MakeClient, **overrides: Any) -> tuple[Client, dict[str, User]]:
    client = await auth_client(make_client, **overrides)
    users = await make_users(client, owner="user", other="user", admin="admin")
    return client, users


async def _send(client: Client, method: str, path: str, **kw: Any) -> tuple[Any, bytes]:
    resp = await client.request(method, path, **kw)
    return resp, await resp.read()


async def _committed_file(client: Client, token: str, data: bytes) -> tuple[str, str]:
    """Upload ``data`` as ``token``; wait for the committed file. Returns (path, file id)."""
    path = await create_upload(client, token, len(data))
    r = await patch(client, token, path, 0, data)
    assert r.status == 204, await r.text()
    for _ in range(200):
        h = await client.head(path, headers={**TUS, **bearer(token)})
        file_id = h.headers.get("X-File-Id")
        if file_id:
            info = await (await client.get(f"/file/{file_id}", headers=bearer(token))).json()
            if info["status"] == "committed":
                return path, file_id
            assert info["status"] in ("received", "validating"), info
        await asyncio.sleep(0.05)
    raise AssertionError(f"no committed file for {path}")


# --- the tus endpoint ---------------------------------------------------------------------


async def test_tus_methods_by_caller(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    owner = users["owner"].access
    data = b"hello"
    head_path = await create_upload(client, owner, 10)
    done_path = await create_upload(client, owner, len(data))
    assert (await patch(client, owner, done_path, 0, data)).status == 204
    missing = "/uploads/" + secrets.token_hex(16)
    m = Matrix()
    for name, (auth, outcome) in callers(users).items():
        # POST: anyone signed in may create an upload of their own.
        resp, body = await _send(
            client, "POST", "/uploads/", headers={**TUS, **auth, "Upload-Length": "10"}
        )
        m.expect(f"{name} POST", resp, 401 if outcome == UNAUTH else 201, body)

        status = {OK: 200, DENIED: 404, UNAUTH: 401}[outcome]
        resp, body = await _send(client, "HEAD", head_path, headers={**TUS, **auth})
        m.expect(f"{name} HEAD", resp, status, body)
        if outcome == DENIED:
            r2, b2 = await _send(client, "HEAD", missing, headers={**TUS, **auth})
            m.same(f"{name} HEAD", (resp.status, body), (r2.status, b2))
        # A finished upload is answered without the lock (with a shared locker): the same.
        resp, body = await _send(client, "HEAD", done_path, headers={**TUS, **auth})
        m.expect(f"{name} HEAD finished", resp, status, body)
        if outcome == DENIED:
            r2, b2 = await _send(client, "HEAD", missing, headers={**TUS, **auth})
            m.same(f"{name} HEAD finished", (resp.status, body), (r2.status, b2))

        target = await create_upload(client, owner, 10)
        patch_headers = {**TUS, **OCTET, **auth, "Upload-Offset": "0"}
        resp, body = await _send(client, "PATCH", target, headers=patch_headers, data=b"12345")
        m.expect(f"{name} PATCH", resp, 204 if outcome == OK else status, body)
        if outcome == DENIED:
            r2, b2 = await _send(client, "PATCH", missing, headers=patch_headers, data=b"12345")
            m.same(f"{name} PATCH", (resp.status, body), (r2.status, b2))

        target = await create_upload(client, owner, 10)
        resp, body = await _send(client, "DELETE", target, headers={**TUS, **auth})
        m.expect(f"{name} DELETE", resp, 204 if outcome == OK else status, body)
        if outcome == DENIED:
            r2, b2 = await _send(client, "DELETE", missing, headers={**TUS, **auth})
            m.same(f"{name} DELETE", (resp.status, body), (r2.status, b2))
            # ... and the owner's upload is still there.
            still = await client.head(target, headers={**TUS, **bearer(owner)})
            m.expect(f"{name} DELETE left the upload", still, 200, b"")

        resp, body = await _send(client, "GET", done_path, headers=auth)
        m.expect(f"{name} GET", resp, status, body)
        if outcome == OK and resp.status == 200 and body != data:
            m.errors.append(f"{name} GET: wrong bytes {body!r}")
        if outcome == DENIED:
            r2, b2 = await _send(client, "GET", missing, headers=auth)
            m.same(f"{name} GET", (resp.status, body), (r2.status, b2))
    m.check()


async def test_options_needs_no_token(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    path = await create_upload(client, users["owner"].access)
    for url in ("/uploads/", path, "/uploads/" + secrets.token_hex(16)):
        resp = await client.options(url)
        assert resp.status == 204, (url, await resp.text())
        assert resp.headers["Tus-Version"] == "1.0.0"


async def test_concatenation_takes_only_the_callers_own_partials(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    owner, other = users["owner"].access, users["other"].access
    partial = {"Upload-Concat": "partial"}
    mine = await create_upload(client, owner, 3, **partial)
    theirs = await create_upload(client, other, 3, **partial)
    assert (await patch(client, owner, mine, 0, b"abc")).status == 204
    assert (await patch(client, other, theirs, 0, b"def")).status == 204
    missing = "/uploads/" + secrets.token_hex(16)

    async def final(token: str, *paths: str) -> tuple[int, str]:
        resp = await client.post(
            "/uploads/",
            headers={**TUS, **bearer(token), "Upload-Concat": "final;" + " ".join(paths)},
        )
        return resp.status, await resp.text()

    stolen = await final(other, mine, theirs)
    absent = await final(other, missing, theirs)
    assert stolen[0] == 400, stolen
    # The same answer as for an id that does not exist (the id itself aside).
    masked = (stolen[0], stolen[1].replace(mine.rsplit("/", 1)[1], "<id>"))
    assert masked == (absent[0], absent[1].replace(missing.rsplit("/", 1)[1], "<id>"))
    assert (await final(other, theirs))[0] == 201
    assert (await final(owner, mine))[0] == 201


# --- the files API and /me ----------------------------------------------------------------


async def test_api_endpoints_by_caller(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    data = png_bytes(extra=500)
    _, file_id = await _committed_file(client, users["owner"].access, data)
    missing_id = secrets.token_hex(16)
    m = Matrix()
    for name, (auth, outcome) in callers(users).items():
        status = {OK: 200, DENIED: 404, UNAUTH: 401}[outcome]
        for template in ("/file/{}", "/file/{}/content", "/api/v1/file/{}"):
            url = template.format(file_id)
            resp, body = await _send(client, "GET", url, headers=auth)
            m.expect(f"{name} GET {template}", resp, status, body)
            if outcome == OK and resp.status == 200:
                if template.endswith("content"):
                    if body != data:
                        m.errors.append(f"{name} GET {template}: wrong bytes")
                elif (await resp.json())["id"] != file_id:
                    m.errors.append(f"{name} GET {template}: wrong file")
            if outcome == DENIED:
                r2, b2 = await _send(client, "GET", template.format(missing_id), headers=auth)
                m.same(f"{name} GET {template}", (resp.status, body), (r2.status, b2))

        resp, body = await _send(client, "GET", "/api/v1/auth/me", headers=auth)
        m.expect(f"{name} GET /me", resp, 401 if outcome == UNAUTH else 200, body)
        if resp.status == 200:
            me = await resp.json()
            if me["id"] != users[name].id or me["username"] != users[name].name:
                m.errors.append(f"{name} GET /me: {me}")
    m.check()


# --- session cookie + CSRF ----------------------------------------------------------------


async def test_cookie_session_needs_csrf_for_changes(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    owner = users["owner"]
    resp = await client.post(
        "/api/v1/auth/login", json={"username": owner.name, "password": PASSWORD, "cookie": True}
    )
    assert resp.status == 200, await resp.text()
    session, csrf = resp.cookies["tus_session"], resp.cookies["tus_csrf"]
    assert session["httponly"]
    assert not csrf["httponly"]  # the page's script must read it
    assert session["samesite"].lower() == "strict"
    assert csrf.value == (await resp.json())["csrf_token"]
    # Send cookies explicitly: nothing else in this test carries them.
    client.session.cookie_jar.clear()
    cookie = {"Cookie": f"tus_session={session.value}; tus_csrf={csrf.value}"}
    with_csrf = {**cookie, "X-CSRF-Token": csrf.value}
    wrong_csrf = {**cookie, "X-CSRF-Token": csrf.value[::-1] + "x"}

    # Reads need no CSRF token.
    me = await client.get("/api/v1/auth/me", headers=cookie)
    assert me.status == 200 and (await me.json())["id"] == owner.id
    path = await create_upload(client, owner.access, 10)
    assert (await client.head(path, headers={**TUS, **cookie})).status == 200

    # POST (creation)
    create = {**TUS, "Upload-Length": "4"}
    for headers in (cookie, wrong_csrf):
        resp = await client.post("/uploads/", headers={**create, **headers})
        assert resp.status == 403, await resp.text()
    resp = await client.post("/uploads/", headers={**create, **with_csrf})
    assert resp.status == 201, await resp.text()

    # PATCH
    body = {"data": b"12345", "headers": {**TUS, **OCTET, "Upload-Offset": "0"}}
    for headers in (cookie, wrong_csrf):
        resp = await client.patch(path, data=body["data"], headers={**body["headers"], **headers})
        assert resp.status == 403, await resp.text()
    resp = await client.patch(path, data=body["data"], headers={**body["headers"], **with_csrf})
    assert resp.status == 204, await resp.text()

    # DELETE
    for headers in (cookie, wrong_csrf):
        resp = await client.delete(path, headers={**TUS, **headers})
        assert resp.status == 403, await resp.text()
    resp = await client.delete(path, headers={**TUS, **with_csrf})
    assert resp.status == 204, await resp.text()

    # Bearer tokens need no CSRF token (no ambient credential to ride on).
    other = await create_upload(client, owner.access, 10)
    resp = await client.delete(other, headers={**TUS, **bearer(owner.access)})
    assert resp.status == 204


async def test_login_without_cookie_sets_no_cookie(make_client: MakeClient) -> None:
    client, users = await _setup(make_client)
    resp = await client.post(
        "/api/v1/auth/login", json={"username": users["owner"].name, "password": PASSWORD}
    )
    assert resp.status == 200
    assert "tus_session" not in resp.cookies and "csrf_token" not in await resp.json()
    assert resp.headers["Cache-Control"] == "no-store"
