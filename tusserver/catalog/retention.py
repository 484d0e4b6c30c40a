"""Retention of append-only tables: raw analytics events and the audit log.

Rows older than the configured retention are deleted by the sweeper in batches, each its own
short transaction, oldest first, so neither SQLite's single writer nor a PostgreSQL table
is locked for long however much has accumulated. Analytics reports read the rollups, which
are kept: a range whose raw events are gone still reports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import structlog
from sqlalchemy import Table, bindparam, delete, select
from sqlalchemy.engine import Connection

from .db import Database
from .schema import audit_log, events

__all__ = ["Retention", "prune_older_than"]

_log = structlog.get_logger("tusserver.retention")

_BATCH = 5000


async def prune_older_than(
    db: Database, table: Table, cutoff: dt.datetime, *, batch: int = _BATCH
) -> int:
    """Delete the rows of ``table`` (an ``id`` and an indexed ``at``) older than ``cutoff``."""
    oldest = (
        select(table.c.id)
        .where(table.c.at < bindparam("cutoff"))
        .order_by(table.c.at)
        .limit(batch)
        .scalar_subquery()
    )
    stmt = delete(table).where(table.c.id.in_(oldest))

    def work(conn: Connection) -> int:
        return int(conn.execute(stmt, {"cutoff": cutoff}).rowcount)

    removed = 0
    while True:
        n = await db.write(work)
        removed += n
        if n < batch:
            return removed


class Retention:
    """What the sweeper runs: prune each table past its retention (0 seconds: keep)."""

    def __init__(
        self,
        db: Database,
        *,
        event_retention: float,
        audit_retention: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._db = db
        self._clock = clock
        self._tables = [
            (table, dt.timedelta(seconds=seconds))
            for table, seconds in ((events, event_retention), (audit_log, audit_retention))
            if seconds > 0
        ]

    async def prune(self) -> int:
        """Delete what is past its retention now; returns how many rows went."""
        total = 0
        now = self._clock()
        for table, keep in self._tables:
            n = await prune_older_than(self._db, table, now - keep)
            if n:
                _log.info("pruned old rows", table=table.name, rows=n)
            total += n
        return total
