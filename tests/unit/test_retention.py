"""Raw events and audit entries past their retention are pruned; rollups and newer rows stay."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import func, insert, select

from tusserver.catalog.analytics import Event, write_events
from tusserver.catalog.db import create_database
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.retention import Retention, prune_older_than
from tusserver.catalog.schema import analytics_rollup, audit_log, events

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
DAY = 24 * 3600.0


async def test_prune_keeps_rollups_and_recent_rows(fresh_database_url: str) -> None:
    db = create_database(fresh_database_url)
    try:
        await upgrade(db)
        ages = [200, 120, 91, 89, 10, 0]  # days before NOW
        await write_events(
            db,
            [
                Event("upload.finished", at=NOW - dt.timedelta(days=d), owner="alice", bytes=7)
                for d in ages
            ],
        )
        audit_rows = [
            {
                "at": NOW - dt.timedelta(days=d),
                "actor": "alice",
                "action": "login",
                "target": None,
                "outcome": "ok",
                "ip": None,
                "detail": {},
            }
            for d in (400, 366, 364, 1)
        ]
        async with db.engine.begin() as conn:
            await conn.execute(insert(audit_log), audit_rows)

        retention = Retention(
            db, event_retention=90 * DAY, audit_retention=365 * DAY, clock=lambda: NOW
        )
        assert await retention.prune() == 3 + 2
        assert await retention.prune() == 0  # idempotent

        async with db.engine.connect() as conn:
            left = (await conn.execute(select(events.c.at).order_by(events.c.at))).scalars()
            ages_left = sorted(round((NOW - _utc(at)).total_seconds() / DAY) for at in left)
            assert ages_left == [0, 10, 89]
            audit_left = (await conn.execute(select(func.count()).select_from(audit_log))).scalar()
            assert audit_left == 2
            # The rollups of pruned events still answer reports for their old ranges.
            rolled = (
                await conn.execute(
                    select(func.sum(analytics_rollup.c.count)).where(
                        analytics_rollup.c.owner == "*",
                        analytics_rollup.c.kind == "upload.finished",
                        analytics_rollup.c.dim == "",
                    )
                )
            ).scalar()
            assert rolled == len(ages)
    finally:
        await db.dispose()


async def test_zero_keeps_everything_and_batches_cover_large_backlogs(
    tmp_path: Path,
) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        await upgrade(db)
        old = [Event("file.downloaded", at=NOW - dt.timedelta(days=400)) for _ in range(120)]
        await write_events(db, old)
        keep_all = Retention(db, event_retention=0, audit_retention=0, clock=lambda: NOW)
        assert await keep_all.prune() == 0
        assert await prune_older_than(db, events, NOW, batch=50) == 120  # 50 + 50 + 20
    finally:
        await db.dispose()


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
