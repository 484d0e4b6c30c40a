"""Migration 0013 makes usernames unique without regard to case, on a catalog that may
already hold names differing only in case: it keeps every account and never fails on them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import column, insert, select, table
from structlog.testing import capture_logs

from auth.users import UserExists, UserRepository
from tusserver.catalog.db import Database
from tusserver.catalog.migrate import current_revision, downgrade, upgrade
from tusserver.catalog.schema import users

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

#: (id, username, created days after T0): three cases of one name, the oldest not first by
#: id; two of another, created at the same instant (the id decides); two plain names.
ACCOUNTS = [
    ("c" * 32, "Alice", 1),
    ("a" * 32, "alice", 2),
    ("b" * 32, "ALICE", 3),
    ("e" * 32, "bob.x", 5),
    ("d" * 32, "Bob.X", 5),
    ("f" * 32, "carol", 4),
    ("0" * 32, "Dave@example.org", 6),
]


async def _catalog_at_0012(db: Database) -> None:
    await upgrade(db, "0012")
    names = {"id", "username", "password_hash", "role", "disabled", "created_at"}
    at_0012 = table("users", *(column(c.name, c.type) for c in users.c if c.name in names))

    def seed(conn: Any) -> None:
        for uid, name, days in ACCOUNTS:
            conn.execute(
                insert(at_0012).values(
                    id=uid,
                    username=name,
                    password_hash="x",
                    role="user",
                    disabled=False,
                    created_at=T0 + dt.timedelta(days=days),
                )
            )

    await db.write(seed)


async def _folded(db: Database) -> dict[str, str | None]:
    def read(conn: Any) -> dict[str, str | None]:
        return dict(conn.execute(select(users.c.username, users.c.username_folded)).all())

    return await db.read(read)


EXPECTED = {
    "Alice": "alice",  # the oldest of its name holds it
    "alice": None,
    "ALICE": None,
    "Bob.X": "bob.x",  # created with bob.x: the smaller id holds it
    "bob.x": None,
    "carol": "carol",
    "Dave@example.org": "dave@example.org",
}


async def test_names_differing_in_case_are_kept_and_the_oldest_holds_the_name(
    fresh_catalog: Database,
) -> None:
    db = fresh_catalog
    await _catalog_at_0012(db)
    with capture_logs() as logs:
        await upgrade(db)
    assert await current_revision(db) == "0013"
    assert await _folded(db) == EXPECTED
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1
    assert sorted(a.split(" ")[0] for a in warned[0]["accounts"]) == ["ALICE", "alice", "bob.x"]

    repo = UserRepository(db)
    # No new account takes any case of a name that is held, or of one left out.
    for name in ("aLiCe", "alice", "BOB.x", "CAROL", "dave@EXAMPLE.org"):
        with pytest.raises(UserExists):
            await repo.create(name, "x")
    created = await repo.create("Erin", "x")
    assert created.username == "Erin"
    # Sign-in: the exact spelling first, else the holder of the folded name.
    ids = {name: uid for uid, name, _ in ACCOUNTS}
    for typed, found in [
        ("Alice", "Alice"),
        ("alice", "alice"),
        ("ALICE", "ALICE"),
        ("aLICE", "Alice"),
        ("BOB.x", "Bob.X"),
        ("bob.x", "bob.x"),
        ("CaRoL", "carol"),
        ("DAVE@example.org", "Dave@example.org"),
    ]:
        user = await repo.by_name(typed)
        assert user is not None and (user.id, user.username) == (ids[found], found), typed
    erin = await repo.by_name("ERIN")
    assert erin is not None and erin.id == created.id
    assert await repo.by_name("nobody") is None


async def test_downgrade_and_upgrade_again(fresh_catalog: Database) -> None:
    db = fresh_catalog
    await _catalog_at_0012(db)
    await upgrade(db)
    await downgrade(db, "0012")
    assert await current_revision(db) == "0012"

    def usernames(conn: Any) -> list[str]:
        return list(conn.execute(select(table("users", column("username")))).scalars())

    assert sorted(await db.read(usernames)) == sorted(name for _, name, _ in ACCOUNTS)
    await upgrade(db)
    assert await _folded(db) == EXPECTED


async def test_an_empty_catalog_and_a_catalog_without_collisions(
    fresh_catalog: Database,
) -> None:
    db = fresh_catalog
    with capture_logs() as logs:
        await upgrade(db)
    assert not [e for e in logs if e["log_level"] == "warning"]
    repo = UserRepository(db)
    first = await repo.create("Zoe", "x")
    with pytest.raises(UserExists):
        await repo.create("zoe", "x")
    with pytest.raises(UserExists):
        await repo.create("Zoe", "x")
    assert await _folded(db) == {"Zoe": "zoe"}
    found = await repo.by_name("ZOE")
    assert found is not None and found.id == first.id
