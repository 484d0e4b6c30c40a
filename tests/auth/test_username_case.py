"""Usernames are one name whatever their case: ``Alice`` and ``alice`` cannot both register
(one account a page shows could otherwise pass for the other), and a sign-in finds the
account however its name is typed. On SQLite and PostgreSQL, through HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.app_fixtures import MakeClient

from .helpers import PASSWORD, Client, auth_client, login, runtime, unique

REGISTER = "/api/v1/auth/register"


async def register(client: Client, name: str) -> Any:
    return await client.post(REGISTER, json={"username": name, "password": PASSWORD})


async def test_a_name_differing_only_in_case_is_taken(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    name = unique("Bob")  # "Bob-<hex>"
    first = await register(client, name)
    assert first.status == 201, await first.text()
    assert (await first.json())["username"] == name  # kept as typed
    exact = await register(client, name)
    exact_body = await exact.json()
    assert exact.status == 409
    for other in (name.lower(), name.upper(), name.swapcase()):
        resp = await register(client, other)
        assert resp.status == 409, other
        # Refused exactly as the same name is: nothing tells the two cases apart.
        assert (
            await resp.json()
            == exact_body
            == {
                "error": "username_taken",
                "message": "that username is taken",
            }
        )
    users = await runtime(client).gateway.users.list()
    assert [u.username for u in users if u.username.lower() == name.lower()] == [name]


async def test_concurrent_registrations_of_two_cases_let_one_in(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    for _ in range(3):
        name = unique("Carol")
        cases = [name, name.lower(), name.upper(), name.swapcase()]
        answers = await asyncio.gather(*(register(client, c) for c in cases))
        statuses = sorted(r.status for r in answers)
        assert statuses == [201, 409, 409, 409], statuses
        for r in answers:
            if r.status == 409:
                assert (await r.json())["error"] == "username_taken"


async def test_sign_in_finds_the_account_in_any_case(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    name = unique("Dora")
    created = await register(client, name)
    assert created.status == 201
    user_id = (await created.json())["id"]
    for typed in (name, name.lower(), name.upper()):
        body = await login(client, typed, PASSWORD)
        # The account, with its name as it was registered.
        assert body["user"]["id"] == user_id
        assert body["user"]["username"] == name
    wrong = await client.post(
        "/api/v1/auth/login", json={"username": name.upper(), "password": PASSWORD + "x"}
    )
    assert wrong.status == 401


async def test_failed_sign_ins_in_any_case_share_one_budget(make_client: MakeClient) -> None:
    """The rate-limit buckets key the name as the account does: changing its case is no
    way around the per-name limit."""
    client = await auth_client(
        make_client,
        rate_limit_logins=0.001,
        rate_limit_logins_burst=3,
        rate_limit_logins_wide=0.001,
        rate_limit_logins_wide_burst=1000,
    )
    name = unique("Erin")
    assert (await register(client, name)).status == 201
    statuses = []
    for typed in (name, name.lower(), name.upper(), name.swapcase()):
        resp = await client.post(
            "/api/v1/auth/login", json={"username": typed, "password": "not the password"}
        )
        statuses.append(resp.status)
    assert statuses == [401, 401, 401, 429], statuses
