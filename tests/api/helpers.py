"""Helpers of the JSON API suites: servers without rate limits, catalog rows inserted directly."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import insert

from tests.app_fixtures import MakeClient
from tests.auth.helpers import auth_client
from tusserver.app import RUNTIME, Runtime
from tusserver.catalog.files import fold_name
from tusserver.catalog.schema import file_tags, files

Client = TestClient[Any, Any]

__all__ = [
    "Client",
    "api_client",
    "api_error",
    "file_row",
    "insert_files",
    "jwt_client",
    "runtime",
    "token",
]

#: No API or creation rate limits: these suites make many requests on purpose.
NO_LIMITS: dict[str, Any] = {
    "rate_limit_api": 0,
    "rate_limit_creations": 0,
    "rate_limit_patch_bytes": 0,
}


def runtime(client: Client) -> Runtime:
    return client.server.app[RUNTIME]


def token(prefix: str = "t") -> str:
    """A value no other test uses (a worker's PostgreSQL database is shared by its tests)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def api_client(make_client: MakeClient, **overrides: Any) -> Client:
    return await make_client(**{**NO_LIMITS, **overrides})


async def jwt_client(make_client: MakeClient, **overrides: Any) -> Client:
    return await auth_client(make_client, **{**NO_LIMITS, **overrides})


async def api_error(resp: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    """Assert a JSON ``{"error", "message"}`` client error with the given status."""
    text = await resp.text()
    wanted = (status,) if isinstance(status, int) else status
    assert resp.status in wanted, f"{resp.method} {resp.url}: {resp.status} {text}"
    assert resp.content_type == "application/json", text
    body: dict[str, Any] = await resp.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    return body


def file_row(
    *,
    name: str,
    owner: str | None,
    created_at: dt.datetime,
    size: int = 100,
    detected_type: str | None = "application/octet-stream",
    category: str | None = "other",
    folder: str = "/",
    status: str = "committed",
    tags: Iterable[str] = (),
    file_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``files`` row as the pipeline would leave it (name_folded = fold_name(name)).

    Pending rows (received, validating) carry a far-off lease so the server's pipeline
    leaves them alone: they have no bytes to process.
    """
    pending = status in ("received", "validating")
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    return {
        "id": file_id or secrets.token_hex(16),
        "owner": owner,
        "name": name,
        "name_folded": fold_name(name)[:255],
        "folder": folder,
        "size": size,
        "declared_type": detected_type,
        "detected_type": detected_type,
        "category": category,
        "type_mismatch": False,
        "sha256": secrets.token_hex(32) if status == "committed" else None,
        "status": status,
        "reason": None,
        "store": None,
        "storage_key": None,
        "meta": {},
        "tags": list(tags),
        "attempts": 1,
        "next_attempt_at": far if pending else None,
        "lease_until": far if pending else None,
        "created_at": created_at,
        "updated_at": created_at,
        "committed_at": created_at if status == "committed" else None,
        "quarantine_until": None,
        **extra,
    }


async def insert_files(client: Client, rows: list[Mapping[str, Any]]) -> None:
    """Insert catalog rows (and their ``file_tags``) in one transaction."""
    tag_rows = [
        {"file_id": r["id"], "tag": t, "created_at": r["created_at"]}
        for r in rows
        for t in r["tags"]
    ]
    async with runtime(client).db.engine.begin() as conn:
        if rows:
            await conn.execute(insert(files), [dict(r) for r in rows])
        if tag_rows:
            await conn.execute(insert(file_tags), tag_rows)
