"""Analytics reports from the rollups are exactly those the raw events give.

Reports read three rollups written by ``write_events``: hourly rows, daily rows (the whole UTC
days of a range; hours only at its edges) and per-file counts in blocks of days (which decide
which files' sums the top files need). Each test writes events of its own to a fresh database
(SQLite and PostgreSQL), then compares reports with what a plain computation over the same
events gives: ranges with partial first and last days, whole days, less than a day, other time
zones, longer than a block; by day and by hour; service-wide and for one user.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy import select

from tusserver.catalog import analytics
from tusserver.catalog.analytics import KINDS, Event, report, write_events
from tusserver.catalog.db import Database
from tusserver.catalog.migrate import downgrade, upgrade
from tusserver.catalog.schema import analytics_daily, analytics_file_blocks, analytics_rollup

UTC = dt.UTC
#: The events span the 90 days before NOW; NOW is not a whole hour.
NOW = dt.datetime(2026, 3, 14, 15, 26, 53, 123456, tzinfo=UTC)
OWNERS = ["alice", "bob", "carol", None]
TYPES = ["image/png", "image/jpeg", "application/pdf", "text/plain"]
REASONS = ["virus found: Eicar", "type not allowed: x/y", "too large: 5 > 4", "checksum"]


@pytest.fixture
def db(migrated_catalog: Database) -> Database:
    return migrated_catalog


def make_events(seed: int, n: int = 3000) -> list[Event]:
    """Events over 90 days: a few popular files and a long tail, so the top files have ties
    of counts (and some of bytes too: downloads of the same size)."""
    rng = random.Random(seed)
    files = [f"{rng.getrandbits(128):032x}" for _ in range(400)]
    weights = [1 / (i + 1) ** 0.9 for i in range(len(files))]
    out = []
    for _ in range(n):
        kind = rng.choice(KINDS + ("file.downloaded",) * 3)
        # Some events on whole hours and at midnight exactly: the edges of rows.
        at = NOW - dt.timedelta(seconds=rng.randrange(90 * 86400))
        if rng.random() < 0.1:
            at = at.replace(minute=0, second=0, microsecond=0)
            if rng.random() < 0.3:
                at = at.replace(hour=0)
        detail = None
        if kind == "file.committed":
            detail = rng.choice(TYPES)
        elif kind == "file.rejected":
            detail = rng.choice(REASONS)
        out.append(
            Event(
                kind=kind,
                at=at,
                owner=rng.choice(OWNERS),
                file_id=rng.choices(files, weights)[0] if kind.startswith("file.") else None,
                bytes=0
                if kind == "upload.started"
                else rng.choice([100, 1000, rng.randrange(9**6)]),
                detail=detail,
            )
        )
    return out


async def write_all(db: Database, evs: list[Event], seed: int) -> None:
    """In batches of varying sizes, out of time order (later batches add to earlier rows)."""
    rng = random.Random(seed)
    evs = evs[:]
    rng.shuffle(evs)
    while evs:
        size = rng.randint(1, 400)
        await write_events(db, evs[:size])
        del evs[:size]


def expected(
    evs: list[Event],
    *,
    start: dt.datetime,
    end: dt.datetime,
    owner: str | None,
    granularity: str,
    top: int,
) -> dict[str, Any]:
    """The report of ``report()``'s contract, from the raw events: every event whose hour is
    from the hour of ``start`` (UTC) up to ``end`` (exclusive)."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    totals = {k: {"count": 0, "bytes": 0} for k in KINDS}
    buckets: dict[str, dict[str, dict[str, int]]] = {}
    groups: dict[str, dict[str, list[int]]] = {
        "types": defaultdict(lambda: [0, 0]),
        "reasons": defaultdict(lambda: [0, 0]),
        "files": defaultdict(lambda: [0, 0]),
    }

    def zero() -> dict[str, dict[str, int]]:
        return {k: {"count": 0, "bytes": 0} for k in KINDS}

    step = dt.timedelta(hours=1) if granularity == "hour" else dt.timedelta(days=1)
    cursor = first if granularity == "hour" else first.replace(hour=0)
    while cursor < end:
        buckets[cursor.isoformat() if granularity == "hour" else cursor.date().isoformat()] = zero()
        cursor += step
    for ev in evs:
        hour = ev.at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if not first <= hour < end or (owner is not None and ev.owner != owner):
            continue
        key = hour.isoformat() if granularity == "hour" else hour.date().isoformat()
        for target in (totals[ev.kind], buckets.setdefault(key, zero())[ev.kind]):
            target["count"] += 1
            target["bytes"] += ev.bytes
        group = None
        if ev.kind == "file.committed" and ev.detail:
            group = groups["types"][ev.detail]
        elif ev.kind == "file.rejected" and ev.detail:
            group = groups["reasons"][ev.detail.split(":", 1)[0].strip() or "unknown"]
        elif ev.kind == "file.downloaded" and ev.file_id:
            group = groups["files"][ev.file_id]
        if group is not None:
            group[0] += 1
            group[1] += ev.bytes

    def ranked(name: str) -> list[dict[str, Any]]:
        items = [{"key": k, "count": c, "bytes": b} for k, (c, b) in groups[name].items()]
        items.sort(key=lambda e: (-e["count"], -e["bytes"], e["key"]))
        return items[:top]

    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "granularity": granularity,
        "totals": totals,
        "series": [{"bucket": k, **v} for k, v in sorted(buckets.items())],
        "top_types": ranked("types"),
        "rejects_by_reason": ranked("reasons"),
        "top_files": ranked("files"),
        "bytes_in": totals["upload.finished"]["bytes"],
        "bytes_out": totals["file.downloaded"]["bytes"],
    }


def ranges() -> list[tuple[str, dt.datetime, dt.datetime]]:
    h = dt.timedelta(hours=1)
    day = dt.timedelta(days=1)
    midnight = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    pst = dt.timezone(dt.timedelta(hours=-8))
    return [
        # The API's default: 30 days up to an hour from now (neither end a whole hour).
        ("default 30 days", NOW + h - 30 * day, NOW + h),
        ("whole days", midnight - 10 * day, midnight),
        ("whole days + partial last", midnight - 10 * day, NOW),
        ("partial first + whole days", midnight - 10 * day + 5.3 * h, midnight),
        ("whole hours, partial days", midnight - 20 * day + 13 * h, midnight - 2 * day + 13 * h),
        ("one whole day and edges", midnight - 3 * day + 22 * h, midnight - day + 2 * h),
        ("hours of one day", midnight - 5 * day + 3 * h, midnight - 5 * day + 20 * h),
        ("across midnight, no whole day", midnight - 5 * day + 20 * h, midnight - 4 * day + 9 * h),
        ("less than an hour", NOW - dt.timedelta(minutes=20), NOW),
        ("+05:30 days", dt.datetime(2026, 2, 1, tzinfo=ist), dt.datetime(2026, 3, 1, tzinfo=ist)),
        ("-08:00 odd", dt.datetime(2026, 2, 3, 7, 45, tzinfo=pst), NOW.astimezone(pst) - 9.7 * h),
        ("31 days + edges", midnight - 31 * day - h, midnight + 3 * h),
        ("33 days", midnight - 33 * day + h, midnight - h),
        ("40 days", NOW - 40 * day, NOW),
        ("all of it", NOW - 95 * day, NOW + h),
    ]  # fmt: skip


@pytest.mark.parametrize("first_checked", [1, 4])
async def test_reports_are_those_of_the_raw_events(
    db: Database, monkeypatch: pytest.MonkeyPatch, first_checked: int
) -> None:
    evs = make_events(seed=1)
    await write_all(db, evs, seed=2)
    # Fewer files summed first: the second round of top_files runs more often.
    monkeypatch.setattr(analytics, "_FIRST_CHECKED_PER_ENTRY", first_checked)
    ranked_all: list[int] = []
    rank_all = analytics._rank_all

    def spy(*args: Any) -> Any:
        ranked_all.append(1)
        return rank_all(*args)

    monkeypatch.setattr(analytics, "_rank_all", spy)
    pruned = set()
    for name, start, end in ranges():
        held = analytics._enclosing_block(analytics._hour(start), end) is not None
        assert held or end - start > dt.timedelta(days=33), name
        for granularity in ("day", "hour"):
            if granularity == "hour" and end - start > dt.timedelta(days=31):
                continue
            for owner in (None, "alice"):
                for top in (1, 3, 10):
                    ranked_all.clear()
                    got = await report(
                        db, start=start, end=end, owner=owner, granularity=granularity, top=top
                    )
                    want = expected(
                        evs, start=start, end=end, owner=owner, granularity=granularity, top=top
                    )
                    label = f"{name} {granularity} {owner} top={top}"
                    assert got == want, label
                    # A range that no block holds ranks every file; others mostly need not.
                    if not held:
                        assert ranked_all, label
                    elif not ranked_all:
                        pruned.add((name, owner, top))
    # The bounds left files out for a month of the service's downloads, and for many others.
    assert {("default 30 days", None, 10), ("default 30 days", None, 3)} <= pruned
    assert len(pruned) > 20


async def test_too_many_candidates_rank_every_file(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    evs = make_events(seed=3)
    await write_all(db, evs, seed=4)
    monkeypatch.setattr(analytics, "_MAX_CHECKED", 2)
    start, end = NOW - dt.timedelta(days=30), NOW
    for owner in (None, "bob"):
        got = await report(db, start=start, end=end, owner=owner, top=5)
        assert got == expected(evs, start=start, end=end, owner=owner, granularity="day", top=5)


async def test_daily_rows_and_blocks_are_sums_of_hourly_rows(db: Database) -> None:
    """Whatever the batches, each daily row is the sum of its hours' rows, each block count
    that of its days' download rows; and migration 0007 backfills the same from the hours."""
    evs = make_events(seed=5, n=2000)
    await write_all(db, evs, seed=6)

    def read(conn: Any) -> tuple[list[Any], list[Any], list[Any]]:
        return (
            list(conn.execute(select(analytics_rollup)).all()),
            sorted(tuple(r) for r in conn.execute(select(analytics_daily)).all()),
            sorted(tuple(r) for r in conn.execute(select(analytics_file_blocks)).all()),
        )

    hourly, daily, blocks = await db.read(read)
    want_daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    want_blocks: dict[tuple[Any, ...], int] = defaultdict(int)
    for hour, owner, kind, dim, count, nbytes in hourly:
        if kind == "file.downloaded" and dim:
            for block in analytics._blocks(hour):
                want_blocks[(owner, block, dim)] += count
        else:
            row = want_daily[(owner, hour.replace(hour=0), kind, dim)]
            row[0] += count
            row[1] += nbytes
    assert daily == sorted((*k, c, b) for k, (c, b) in want_daily.items())
    assert blocks == sorted((*k, c) for k, c in want_blocks.items())
    assert len(blocks) > 0 and len(daily) > 0

    before = await report(db, start=NOW - dt.timedelta(days=30), end=NOW, owner=None)
    await downgrade(db, "0006")
    await upgrade(db)
    assert await db.read(read) == (hourly, daily, blocks)
    assert await report(db, start=NOW - dt.timedelta(days=30), end=NOW, owner=None) == before


def test_split_covers_each_hour_once() -> None:
    """Hourly ranges plus whole days are exactly the hours of the range, whatever its ends."""
    rng = random.Random(7)
    hour = dt.timedelta(hours=1)
    for _ in range(3000):
        start = NOW - dt.timedelta(minutes=rng.randrange(60 * 24 * 50))
        if rng.random() < 0.3:
            start = start.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(minutes=rng.randrange(1, 60 * 24 * 40))
        if rng.random() < 0.3:
            end = end.replace(minute=0, second=0, microsecond=0) + hour
        first = analytics._hour(start)
        want = set()
        h = first
        while h < end:
            want.add(h)
            h += hour
        hours, days = analytics._split(first, end)
        got: list[dt.datetime] = []
        for a, b in hours:
            h = a
            while h < b:
                got.append(h)
                h += hour
        if days is not None:
            assert days[0] == analytics._day(days[0]) and days[1] == analytics._day(days[1])
            h = days[0]
            while h < days[1]:
                got.append(h)
                h += hour
        assert sorted(got) == sorted(want), (start, end)
        assert len(got) == len(want)
        # A block holds every range of at most 33 days (of its hours), and holds them all.
        block = analytics._enclosing_block(first, end)
        if len({analytics._day_number(h) for h in want}) <= 33:
            assert block is not None, (start, end)
        if block is not None:
            assert all(block <= analytics._day_number(h) < block + 64 for h in want)
