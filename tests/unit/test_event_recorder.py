"""The analytics events recorder: events wait in memory and are written in batches, as soon
as a batch is full and at the latest after the flush interval; stopping writes the rest."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import func, select

from tusserver.catalog.analytics import Event, EventRecorder
from tusserver.catalog.db import Database
from tusserver.catalog.schema import events


async def stored(db: Database) -> int:
    count: int = await db.read(
        lambda conn: conn.execute(select(func.count()).select_from(events)).scalar_one()
    )
    return count


def event(n: int) -> Event:
    return Event("upload.finished", at=dt.datetime.now(dt.UTC), owner="alice", bytes=n)


async def test_a_full_batch_is_written_at_once_and_the_rest_at_stop(
    migrated_catalog: Database,
) -> None:
    db = migrated_catalog
    recorder = EventRecorder(db, flush_interval=3600, max_batch=5)
    recorder.start()
    try:
        for n in range(5):
            recorder.record(event(n))
        deadline = asyncio.get_running_loop().time() + 10
        while await stored(db) < 5:
            assert asyncio.get_running_loop().time() < deadline, "a full batch was not written"
            await asyncio.sleep(0.02)
        for n in range(2):
            recorder.record(event(n))
        await asyncio.sleep(0.2)
        assert await stored(db) == 5  # not full, and the interval is an hour away
    finally:
        await recorder.stop()
    assert await stored(db) == 7


async def test_events_are_written_within_the_flush_interval(migrated_catalog: Database) -> None:
    db = migrated_catalog
    recorder = EventRecorder(db, flush_interval=0.05, max_batch=1000)
    recorder.start()
    try:
        recorder.record(event(1))
        deadline = asyncio.get_running_loop().time() + 10
        while await stored(db) < 1:
            assert asyncio.get_running_loop().time() < deadline, "the event was never written"
            await asyncio.sleep(0.02)
    finally:
        await recorder.stop()
    assert await stored(db) == 1
