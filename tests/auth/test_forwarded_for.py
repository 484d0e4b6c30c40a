"""With trust_proxy_headers, the client IP is the address the proxy appended, even when the
proxy appends it as a header line of its own (HAProxy's `option forwardfor`)."""

from __future__ import annotations

from multidict import CIMultiDict

from tests.app_fixtures import MakeClient
from tests.auth.helpers import auth_client, make_users


async def test_a_client_supplied_forwarded_for_line_does_not_choose_the_bucket(
    make_client: MakeClient,
) -> None:
    client = await auth_client(
        make_client,
        trust_proxy_headers=True,
        rate_limit_logins=0.001,
        rate_limit_logins_burst=3,
    )
    users = await make_users(client, alice="user")
    statuses = []
    for i in range(8):
        # The attacker's own line first, then the one the proxy added: the same client.
        headers = CIMultiDict(
            [("X-Forwarded-For", f"10.0.0.{i}"), ("X-Forwarded-For", "203.0.113.7")]
        )
        resp = await client.post(
            "/api/v1/auth/login",
            json={"username": users["alice"].name, "password": "wrong password"},
            headers=headers,
        )
        statuses.append(resp.status)
    # Three guesses from 203.0.113.7, then 429 (the (username, address) bucket).
    assert statuses[:3] == [401, 401, 401]
    assert 429 in statuses, statuses
