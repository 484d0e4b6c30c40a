"""GET /api/v1/auth/session: 200 whether signed in or not (the web UI asks at every load)."""

from __future__ import annotations

from tests.app_fixtures import MakeClient

from .helpers import PASSWORD, auth_client, bearer, login, make_users


async def test_session_answers_200_signed_in_or_not(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    users = await make_users(client, alice="user")
    alice = users["alice"]

    anonymous = await client.get("/api/v1/auth/session")
    assert anonymous.status == 200
    assert await anonymous.json() == {"authenticated": False}
    assert anonymous.headers["Cache-Control"] == "no-store"
    bad = await client.get("/api/v1/auth/session", headers=bearer("not-a-token"))
    assert bad.status == 200 and await bad.json() == {"authenticated": False}

    signed_in = await client.get("/api/v1/auth/session", headers=bearer(alice.access))
    body = await signed_in.json()
    assert signed_in.status == 200 and body["authenticated"] is True
    me = await (await client.get("/api/v1/auth/me", headers=bearer(alice.access))).json()
    assert body["user"] == me and me["username"] == alice.name

    # The web pages' cookie session counts too.
    client.session.cookie_jar.clear()
    await login(client, alice.name, PASSWORD, cookie=True)
    by_cookie = await (await client.get("/api/v1/auth/session")).json()
    assert by_cookie["authenticated"] is True and by_cookie["user"]["id"] == alice.id

    # /me itself still says 401 to a caller without a token.
    client.session.cookie_jar.clear()
    assert (await client.get("/api/v1/auth/me")).status == 401


async def test_session_without_auth_is_the_operator(make_client: MakeClient) -> None:
    client = await make_client(auth="none")
    body = await (await client.get("/api/v1/auth/session")).json()
    assert body == {"authenticated": True, "user": {"id": None, "username": None, "role": "admin"}}
