"""`tusserver audit`: an operator answers "what did this address / this user do" without SQL.
The entries are made through HTTP against the real server, then read by the real command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.app_fixtures import MakeClient
from tests.auth.helpers import auth_client, bearer, create_upload, make_users, runtime
from tests.auth.test_signin_hardening import address

from .helpers import describe, run

TUS = {"Tus-Resumable": "1.0.0"}


async def _cli(database_url: str, tmp_path: Path, *args: str) -> Any:
    settings = {"TUSSERVER_DATABASE_URL": database_url}
    return await asyncio.to_thread(
        run, ["--data-dir", str(tmp_path / "data"), "audit", *args], settings
    )


async def test_audit_lists_and_filters_entries(
    make_client: MakeClient, database_url: str, tmp_path: Path
) -> None:
    client = await auth_client(make_client, trust_proxy_headers=True)
    users = await make_users(client, victim="user", prober="user")
    victim, prober = users["victim"], users["prober"]
    attacker = address()
    for i in range(3):
        resp = await client.post(
            "/api/v1/auth/login",
            json={"username": victim.name, "password": f"guess {i}"},
            headers={"X-Forwarded-For": attacker},
        )
        assert resp.status == 401
    path = await create_upload(client, victim.access, 10)
    probe = await client.head(
        path, headers={**TUS, **bearer(prober.access), "X-Forwarded-For": attacker}
    )
    assert probe.status == 404
    await runtime(client).gateway.audit_log.flush()

    # Everything from the attacker's address, as JSON lines.
    res = await _cli(database_url, tmp_path, "--ip", attacker, "--json")
    assert res.returncode == 0, describe(res)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["action"], r["outcome"]) for r in rows] == [("auth.login", "denied")] * 3 + [
        ("access.denied", "denied")
    ], rows
    assert all(r["ip"] == attacker for r in rows)
    assert rows[0]["target"] == victim.name and rows[0]["detail"] == {"reason": "wrong_password"}
    assert rows[-1]["user"] == prober.name and rows[-1]["target"] == path.rsplit("/", 1)[1]
    assert rows == sorted(rows, key=lambda r: r["at"])

    # One user by name: their sign-ins and the failed guesses at their name.
    res = await _cli(database_url, tmp_path, "--user", victim.name, "--action", "auth.*", "--json")
    assert res.returncode == 0, describe(res)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    outcomes = sorted(r["outcome"] for r in rows)
    assert outcomes == ["denied", "denied", "denied", "ok"], rows

    # Outcome and time range; the table for humans.
    res = await _cli(
        database_url, tmp_path, "--user", victim.id, "--outcome", "denied", "--since", "10m"
    )
    assert res.returncode == 0, describe(res)
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["at", "user", "action", "outcome", "target", "ip", "detail"]
    assert len(lines) == 4 and all(attacker in line for line in lines[1:]), res.stdout
    res = await _cli(database_url, tmp_path, "--ip", attacker, "--until", "2000-01-01T00:00:00")
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1, describe(res)

    res = await _cli(database_url, tmp_path, "--since", "yesterday")
    assert res.returncode == 2 and "Traceback" not in res.stderr, describe(res)
