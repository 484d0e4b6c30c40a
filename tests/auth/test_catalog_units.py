"""Sign-in, tokens, the audit log and readiness all run as units of the catalog: on a SQLite
file, serving them never makes the async engine (aiosqlite, a second connection and writer
of its own, and SQLAlchemy's ORM package in memory)."""

from __future__ import annotations

import pytest

from tests.app_fixtures import MakeClient

from .helpers import PASSWORD, auth_client, bearer, login, make_users, runtime, unique


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_serving_a_sqlite_catalog_makes_no_async_engine(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    db = runtime(client).db
    owner = (await make_users(client, owner="user"))["owner"]
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": owner.refresh})
    assert resp.status == 200, await resp.text()
    failed = await client.post(
        "/api/v1/auth/login", json={"username": unique("nobody"), "password": PASSWORD + "x"}
    )
    assert failed.status == 401
    again = await login(client, owner.name, PASSWORD)
    out = await client.post("/api/v1/auth/logout", headers=bearer(again["access_token"]))
    assert out.status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200, await ready.text()
    assert (await ready.json())["checks"]["database"] == "ok"
    audit = runtime(client).gateway.audit_log
    await audit.flush()
    entries = await audit.recent(50)
    assert {"auth.login"} <= {e["action"] for e in entries}, entries
    assert db._engine is None
    # Tests and admin tools may still ask for it: made then, on the same file.
    async with db.engine.connect() as conn:
        users = (await conn.exec_driver_sql("SELECT count(*) FROM users")).scalar()
    assert users == 1
