"""Helpers shared by the auth suites: a JWT-enabled server, users, logins, authenticated tus."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from auth.passwords import hash_password
from tests.app_fixtures import OCTET, TUS, MakeClient
from tusserver.app import RUNTIME, Runtime

Client = TestClient[Any, Any]

SECRET = "x" * 40
PASSWORD = "correct horse battery"

__all__ = [
    "PASSWORD",
    "SECRET",
    "Client",
    "User",
    "auth_client",
    "bearer",
    "create_upload",
    "login",
    "make_users",
    "runtime",
    "start_of_second",
    "unique",
]


def unique(prefix: str) -> str:
    """A username no other test uses (the PostgreSQL database is shared by a worker's tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def runtime(client: Client) -> Runtime:
    return client.server.app[RUNTIME]


async def auth_client(make_client: MakeClient, **overrides: Any) -> Client:
    """A server with JWT auth on; failed logins and registrations are not throttled unless a
    test says so."""
    settings: dict[str, Any] = {
        "auth": "jwt",
        "jwt_secret": SECRET,
        "revocation_check_interval": 0,
        "rate_limit_logins": 1000,
        "rate_limit_logins_burst": 1000,
        "rate_limit_logins_wide": 1000,
        "rate_limit_logins_wide_burst": 1000,
        "rate_limit_registrations": 1000,
        "rate_limit_registrations_burst": 1000,
    }
    settings.update(overrides)
    return await make_client(**settings)


@dataclass
class User:
    id: str
    name: str
    access: str
    refresh: str


async def make_users(client: Client, **roles: str) -> dict[str, User]:
    """Create users (key -> role) with one shared password hash, and log each of them in."""
    rt = runtime(client)
    pw_hash = await hash_password(PASSWORD)
    out: dict[str, User] = {}
    for key, role in roles.items():
        name = unique(key)
        created = await rt.gateway.users.create(name, pw_hash, role=role)
        body = await login(client, name, PASSWORD)
        out[key] = User(created.id, name, body["access_token"], body["refresh_token"])
    return out


async def login(client: Client, name: str, password: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/auth/login", json={"username": name, "password": password, **extra}
    )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


async def create_upload(
    client: Client, token: str | None, length: int | None = 10, **headers: str
) -> str:
    """POST /uploads/ as ``token``; returns the upload's path."""
    h = {**TUS, **bearer(token), **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    resp = await client.post("/uploads/", headers=h)
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    return location[location.index("/uploads/") :]


async def patch(client: Client, token: str | None, path: str, offset: int, body: bytes) -> Any:
    return await client.patch(
        path, data=body, headers={**TUS, **OCTET, **bearer(token), "Upload-Offset": str(offset)}
    )


async def start_of_second() -> None:
    """Wait until a wall-clock second has just begun (for checks with 1 s token resolution)."""
    frac = time.time() % 1
    if frac > 0.05:
        await asyncio.sleep(1.0 - frac + 0.01)
