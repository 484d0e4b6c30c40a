"""Two instances (two Runtimes, two aiohttp test servers) on ONE PostgreSQL database.

Each test warms instance B's cache, changes something through instance A (or the CLI), and
checks B right after A's answer, without polling. Between the two sits one bounded wait,
``delivered(b)``: ``PostgresBus.sync()``, a single round trip on B's listener connection.
PostgreSQL signals every listening session before the writer's COMMIT returns, and a
signalled session sends its pending notifications before the reply to its next query, so when
that reply is in, B has applied every invalidation committed before A answered. (A's write
already waited for its own copy of the NOTIFY; B's normally lands at the same moment, but
with the instances sharing one busy event loop a few in a thousand land a moment later,
which is what this barrier removes.) Caches live 10 minutes here, so nothing that changes is
explained by expiry.

The listener-loss test waits (bounded) for two things that are asynchronous by nature: B
noticing that PostgreSQL closed its listener connection, and B reconnecting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text, update

from auth.passwords import hash_password
from tests.api.helpers import Client, runtime
from tests.auth.helpers import PASSWORD, SECRET, bearer, login, unique
from tusserver import TusServerConfig, create_app
from tusserver.cache import MISSING, USERS, Namespace, PostgresBus
from tusserver.catalog.files import FileStatus
from tusserver.catalog.schema import files

from .helpers import add_file, cached_file, file_hits, get_file, until

pytestmark = pytest.mark.postgres

_USER_NS: Namespace[Any] = Namespace(USERS, 1.0)


def _config(pg_url: str, data_dir: Path) -> TusServerConfig:
    return TusServerConfig(
        data_dir=data_dir,
        database_url=pg_url,
        auth="jwt",
        jwt_secret=SECRET,
        cache_ttl=600,
        revocation_check_interval=600,
        sweep_interval=0,
        lock_timeout=3.0,
        pipeline_poll_interval=0.2,
        rate_limit_api=0,
        rate_limit_creations=0,
        rate_limit_logins=1000,
        rate_limit_logins_burst=1000,
    )


@pytest.fixture
async def pair(aiohttp_client: Any, tmp_path: Path, pg_url: str) -> tuple[Client, Client]:
    a: TestClient[Any, Any] = await aiohttp_client(create_app(_config(pg_url, tmp_path / "a")))
    b: TestClient[Any, Any] = await aiohttp_client(create_app(_config(pg_url, tmp_path / "b")))
    for c in (a, b):
        bus = runtime(c).cache_bus
        assert isinstance(bus, PostgresBus) and bus.listening
    return a, b


async def _user(client: Client, role: str = "user") -> tuple[str, str, str]:
    """A new user created through ``client``'s instance: (id, name, access token)."""
    name = unique(role)
    created = await runtime(client).gateway.users.create(
        name, await hash_password(PASSWORD), role=role
    )
    return created.id, name, (await login(client, name, PASSWORD))["access_token"]


async def _warm(b: Client, file_id: str, token: str) -> dict[str, Any]:
    status, body = await get_file(b, file_id, token)
    assert status == 200, body
    hits = file_hits(b)
    again = await get_file(b, file_id, token)
    assert again == (200, body) and file_hits(b) == hits + 1
    assert cached_file(b, file_id) is not None
    return body


async def delivered(*clients: Client) -> None:
    """The barrier described above, on each instance given."""
    for c in clients:
        assert await runtime(c).cache_bus.sync(), "the listener is not connected"


async def _me(client: Client, token: str) -> int:
    return (await client.get("/api/v1/auth/me", headers=bearer(token))).status


async def test_delete_on_a_is_seen_by_b_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    uid, _, tok = await _user(a)
    fid = await add_file(a, uid, "doomed.txt")
    await _warm(b, fid, tok)
    resp = await a.delete(f"/api/v1/file/{fid}", headers=bearer(tok))
    assert resp.status == 204
    await delivered(b)
    assert cached_file(b, fid) is None
    assert (await get_file(b, fid, tok))[0] == 404


async def test_rename_move_tag_on_a_are_seen_by_b_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    uid, _, tok = await _user(a)
    fid = await add_file(a, uid, "before.txt")
    changes: list[tuple[dict[str, Any], str, Any]] = [
        ({"folder": "/moved/"}, "folder", "/moved/"),
        ({"tags": ["t1"]}, "tags", ["t1"]),
    ]
    changes += [({"name": f"after-{i}.txt"}, "name", f"after-{i}.txt") for i in range(25)]
    for body, field, want in changes:
        await _warm(b, fid, tok)
        resp = await a.patch(f"/api/v1/file/{fid}", json=body, headers=bearer(tok))
        assert resp.status == 200, await resp.text()
        await delivered(b)
        assert cached_file(b, fid) is None
        status, seen = await get_file(b, fid, tok)
        assert (status, seen[field]) == (200, want)


async def test_pipeline_status_on_a_is_seen_by_b_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    uid, _, tok = await _user(a)
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)
    fid = await add_file(
        a, uid, "scan.bin", status="validating", lease_until=far, next_attempt_at=far
    )
    assert (await _warm(b, fid, tok))["status"] == "validating"
    # what the pipeline does when a validator rejects the file
    await runtime(a).files.update(
        fid,
        status=FileStatus.REJECTED,
        reason="virus found: Eicar-Signature",
        lease_until=None,
        updated_at=dt.datetime.now(dt.UTC),
    )
    await delivered(b)
    assert cached_file(b, fid) is None
    status, seen = await get_file(b, fid, tok)
    assert (status, seen["status"]) == (200, "rejected")
    content = await b.get(f"/api/v1/file/{fid}/content", headers=bearer(tok))
    assert content.status == 404


async def test_user_changes_on_a_apply_on_b_at_once(pair: tuple[Client, Client]) -> None:
    a, b = pair
    rt_b = runtime(b)
    # disable, as `tusserver user disable` does it: update + revoke_tokens
    uid, _, tok = await _user(a)
    assert await _me(b, tok) == 200
    assert rt_b.cache.peek(_USER_NS, uid) is not MISSING
    users_a = runtime(a).gateway.users
    await users_a.update(uid, disabled=True)
    await delivered(b)
    assert rt_b.cache.peek(_USER_NS, uid) is MISSING
    await users_a.revoke_tokens(uid)
    assert await _me(b, tok) == 401

    # a role change: B stops treating the former admin as one
    owner, _, owner_tok = await _user(a)
    admin, _, admin_tok = await _user(a, "admin")
    fid = await add_file(a, owner, "private.txt")
    await _warm(b, fid, admin_tok)
    await users_a.update(admin, role="user")
    await delivered(b)
    assert (await get_file(b, fid, admin_tok))[0] == 404
    assert (await get_file(b, fid, owner_tok))[0] == 200

    # logout on A ends the user's sessions on B
    assert await _me(b, owner_tok) == 200
    resp = await a.post("/api/v1/auth/logout", headers=bearer(owner_tok))
    assert resp.status == 200
    await delivered(b)
    assert await _me(b, owner_tok) == 401


async def test_cli_disable_applies_on_both_instances_at_once(
    pair: tuple[Client, Client], pg_url: str, tmp_path: Path
) -> None:
    a, b = pair
    _, name, tok = await _user(a)
    assert (await _me(a, tok), await _me(b, tok)) == (200, 200)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env.update(TUSSERVER_DATABASE_URL=pg_url, TUSSERVER_DATA_DIR=str(tmp_path / "cli"))
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "tusserver"),
        "user",
        "disable",
        name,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    # The CLI has no cache and no listener of its own; its NOTIFY went out with its commit.
    await delivered(a, b)
    assert (await _me(a, tok), await _me(b, tok)) == (401, 401)


async def test_listener_loss_bypasses_the_cache_until_reconnected(
    pair: tuple[Client, Client],
) -> None:
    a, b = pair
    rt_b = runtime(b)
    bus = rt_b.cache_bus
    assert isinstance(bus, PostgresBus)
    bus.reconnect_delay = 1.0  # stay down long enough to look at it
    uid, _, tok = await _user(a)
    fid = await add_file(a, uid, "before.txt")
    await _warm(b, fid, tok)
    losses = bus.losses

    async with runtime(a).db.engine.connect() as conn:
        killed = await conn.scalar(
            text("SELECT pg_terminate_backend(:pid)"), {"pid": bus.backend_pid}
        )
    assert killed
    await until(lambda: bus.losses > losses, 5.0, "B to notice the lost listener")
    assert not bus.listening
    assert len(rt_b.cache) == 0

    # A change nobody announces (no NOTIFY): B must read it from the database, and keep
    # nothing in memory while it cannot hear about changes.
    async with runtime(a).db.engine.begin() as conn:
        await conn.execute(update(files).where(files.c.id == fid).values(name="unannounced.txt"))
    bypassed = rt_b.cache.bypassed.get("file", 0)
    for _ in range(2):
        status, seen = await get_file(b, fid, tok)
        assert (status, seen["name"]) == (200, "unannounced.txt")
    assert rt_b.cache.bypassed.get("file", 0) == bypassed + 2
    assert cached_file(b, fid) is None
    text_out = await (await b.get("/metrics")).text()
    assert "tusserver_cache_listening 0.0" in text_out

    await until(lambda: bus.listening, 10.0, "B to listen again")
    # back: caching works again, and so do invalidations from A
    assert (await _warm(b, fid, tok))["name"] == "unannounced.txt"
    resp = await a.patch(f"/api/v1/file/{fid}", json={"name": "renamed.txt"}, headers=bearer(tok))
    assert resp.status == 200
    await delivered(b)
    assert cached_file(b, fid) is None
    assert (await get_file(b, fid, tok))[1]["name"] == "renamed.txt"
    assert "tusserver_cache_listener_losses_total 1.0" in await (await b.get("/metrics")).text()
