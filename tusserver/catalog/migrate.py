"""Alembic migrations, run on the app's own async engine (no alembic.ini needed).

On PostgreSQL the upgrade runs under a transaction-level advisory lock, so several instances
starting at once apply each migration exactly once.

Alembic (with Mako and Pygments) is imported only when there is something to migrate: a
server starting on an up-to-date catalog compares the stored revision with the newest one
of the scripts and goes on. That keeps ~8 MiB out of every server process.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from .db import Database

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["current_revision", "downgrade", "upgrade"]

_SCRIPTS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 0x7475_7364  # arbitrary, constant: "tusd"


_REVISION = re.compile(r"^revision = \"([^\"]+)\"$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision = (?:None|\"([^\"]+)\")$", re.MULTILINE)


def head_revision() -> str | None:
    """The newest revision of the scripts, read without alembic; None unless the scripts
    form one simple line (then alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (_SCRIPTS / "versions").glob("*.py"):
        if script.name == "__init__.py":
            continue
        source = script.read_text(encoding="utf-8")
        rev, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if rev is None or down is None:
            return None
        revisions.add(rev.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def _stored_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def _config(connection: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database, revision: str = "head") -> None:
    if revision == "head":
        head = head_revision()
        if head is not None:
            async with db.engine.connect() as conn:
                if await conn.run_sync(_stored_revision) == head:
                    return  # up to date: no alembic
    from alembic import command

    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(lambda c: command.upgrade(_config(c), revision))


async def downgrade(db: Database, revision: str) -> None:
    from alembic import command

    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(lambda c: command.downgrade(_config(c), revision))


async def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
