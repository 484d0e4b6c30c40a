"""Alembic migrations, run on the app's own async engine (no alembic.ini needed).

On PostgreSQL the upgrade runs under a transaction-level advisory lock, so several instances
starting at once apply each migration exactly once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from .db import Database

__all__ = ["current_revision", "downgrade", "upgrade"]

_SCRIPTS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 0x7475_7364  # arbitrary, constant: "tusd"


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(lambda c: command.upgrade(_config(c), revision))


async def downgrade(db: Database, revision: str) -> None:
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(lambda c: command.downgrade(_config(c), revision))


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
