"""Alembic migrations (no alembic.ini needed), each run all or nothing.

On PostgreSQL a migration is a unit of work of the catalog, under a transaction-level
advisory lock, so several instances starting at once apply each migration exactly once. It
runs without the catalog's deadline (``database_timeout``): a table rewrite on a big catalog
may take minutes, and instances starting meanwhile wait for its lock. A SQLite file migrates
on a connection of its own (see :func:`_migrate_sqlite_file`).

Alembic (with Mako and Pygments) is imported only when there is something to migrate: a
server starting on an up-to-date catalog compares the stored revision with the newest one
of the scripts and goes on. That keeps ~8 MiB out of every server process.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import NullPool

from .db import Database

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["MigrationError", "current_revision", "downgrade", "upgrade"]

_SCRIPTS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 0x7475_7364  # arbitrary, constant: "tusd"
#: SQLite: how long a migration waits for another writer's lock (and others for it).
_BUSY_TIMEOUT_S = 30.0


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
        # (No deadline, as for the migration itself: a server starting on a loaded database
        # waits for its answer.)
        if head is not None and await db.read(_stored_revision, bound=None) == head:
            return  # up to date: no alembic
    from alembic import command

    await _migrate(db, lambda conn: command.upgrade(_config(conn), revision))


async def downgrade(db: Database, revision: str) -> None:
    from alembic import command

    await _migrate(db, lambda conn: command.downgrade(_config(conn), revision))


async def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return await db.read(lambda c: MigrationContext.configure(c).get_current_revision())


class MigrationError(RuntimeError):
    """A migration would have left the catalog inconsistent: nothing of it was kept."""


async def _migrate(db: Database, step: Callable[[Connection], None]) -> None:
    if db.sqlite is not None:
        await asyncio.to_thread(_migrate_sqlite_file, db.url, step)
        return

    def work(conn: Connection) -> None:
        if db.dialect == "postgresql":
            # Instances starting at once migrate one after the other (the lock is the
            # transaction's); PostgreSQL's DDL is transactional, so a unit run again after a
            # lost connection starts from a clean state.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        step(conn)

    await db.write(work, bound=None)  # (no deadline: see the module's docstring)


def _migrate_sqlite_file(url: URL, step: Callable[[Connection], None]) -> None:
    """A SQLite file catalog migrates on a connection of its own, in one transaction.

    Not a unit of the catalog's runner, whose units may run twice and share a transaction
    with others: pysqlite starts no transaction before DDL, so each statement of a migration
    would commit alone and a second run would meet half a migration. Here ``BEGIN
    IMMEDIATE`` makes it all or nothing, and other writers (servers running on the file)
    wait for it in SQLite's busy handler, up to :data:`_BUSY_TIMEOUT_S`.

    Foreign keys are off on this connection (a pragma that does nothing inside a
    transaction, hence set before it): alembic's batch mode rebuilds a table by dropping
    it, which with foreign keys on would delete, by their ``ON DELETE CASCADE``, the rows of
    every table that refers to it. The keys are checked before the commit instead: a
    migration that leaves rows referring to nothing is rolled back.
    """
    engine = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        poolclass=NullPool,
        connect_args={"timeout": _BUSY_TIMEOUT_S},
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            before = _dangling(conn)
            step(conn)
            after = _dangling(conn)
            if after - before:
                table, parent = next(iter(after - before))
                raise MigrationError(
                    f"the migration would leave rows of {table} referring to rows of {parent} "
                    "that do not exist; nothing was changed"
                )
            conn.commit()
    finally:
        engine.dispose()


def _dangling(conn: Connection) -> Counter[tuple[str, str]]:
    """Rows referring to rows that do not exist, counted by (table, table referred to).
    Only those a migration adds stop it: a catalog that already held some (edited by hand)
    still migrates."""
    rows = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    return Counter((str(r[0]), str(r[2])) for r in rows)
