"""Usage analytics: events recorded off the hot path, rollups, report queries.

``EventRecorder.record`` only appends to an in-memory batch; a background task writes each
batch in one transaction: the raw events and increments of three rollups (INSERT .. ON
CONFLICT DO UPDATE, on SQLite and PostgreSQL alike):

- ``analytics_rollup``: per hour, owner (and "*", the whole service), kind and breakdown
  dimension ("" for the total, "type:<mime>", "reason:<text>", "file:<id>");
- ``analytics_daily``: the same per UTC day, without the per-file rows;
- ``analytics_file_blocks``: downloads per file and block of 64 days (one starts every 32).

Reports read only those, so their cost depends on the time range, not on how many events
exist. Totals, series and breakdowns by type and reason read the daily rows of the whole UTC
days of a range and the hourly rows of the hours outside them (:func:`_split`; an hourly series
reads only hours). The top files are ranked from the hourly rows, for only the files that can
be in the answer, and exactly (:func:`top_files`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Row,
    Select,
    Table,
    func,
    insert,
    select,
    union_all,
)
from sqlalchemy.engine import Connection

from . import fastsql
from .db import Database
from .schema import analytics_daily, analytics_file_blocks, analytics_rollup, events

__all__ = ["Event", "EventRecorder", "report", "top_files"]

_log = structlog.get_logger("tusserver.analytics")

#: The rollup rows of the whole service (no user id can be "*").
ALL_OWNERS = "*"

KINDS = (
    "upload.started",
    "upload.finished",
    "file.committed",
    "file.rejected",
    "file.downloaded",
    "file.deleted",
)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    at: dt.datetime
    owner: str | None = None
    file_id: str | None = None
    upload_id: str | None = None
    bytes: int = 0
    duration_ms: int | None = None
    client: str | None = None
    #: file.committed: the detected type; file.rejected: the reason.
    detail: str | None = None


#: Blocks of days of ``analytics_file_blocks``: one starts every BLOCK_STEP days (day numbers
#: counted from 1970-01-01 UTC) and spans BLOCK_DAYS, so each day is in two blocks and every
#: range of up to BLOCK_DAYS - BLOCK_STEP + 1 = 33 days (its hours' UTC days) lies inside one.
BLOCK_STEP = 32
BLOCK_DAYS = 64
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Built once: fastsql keeps its compiled form by statement.
_INSERT_EVENT = insert(events)


def _hour(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def _day(at: dt.datetime) -> dt.datetime:
    """Midnight UTC of the UTC day of ``at``."""
    return _hour(at).replace(hour=0)


def _last_hour(end: dt.datetime) -> dt.datetime:
    """The last hour a report up to ``end`` reads (rows with ``hour < end``): the hour of end's
    last instant, which is end - 1 h when end is a whole hour."""
    return _hour(end - dt.timedelta(microseconds=1))


def _split(
    first: dt.datetime, end: dt.datetime
) -> tuple[list[tuple[dt.datetime, dt.datetime]], tuple[dt.datetime, dt.datetime] | None]:
    """The rows that make up the hours ``first`` (a whole hour) to ``end`` (exclusive):
    ``(hours, days)``, the half-open ranges [a, b) of hourly rows to read, and the one of
    daily rows, None when no whole UTC day lies in between.

    The hourly rows of [first, end) are exactly those of the returned hour ranges plus those
    of the days' hours: the days are the ones whose 24 hours all lie between ``first`` and the
    last hour read, the hours the rest of the first and the last day."""
    last = _last_hour(end)
    whole_from = first if first == _day(first) else _day(first) + dt.timedelta(days=1)
    whole_to = _day(last + dt.timedelta(hours=1))  # midnight after the last whole day
    if whole_from >= whole_to:
        return [(first, end)], None
    hours = [(a, b) for a, b in ((first, whole_from), (whole_to, end)) if a < b]
    return hours, (whole_from, whole_to)


def _day_number(at: dt.datetime) -> int:
    """The UTC day of ``at``, in days since 1970-01-01."""
    return (at.astimezone(dt.UTC) - _EPOCH).days


def _blocks(at: dt.datetime) -> list[int]:
    """The blocks (their first days) that hold the day of ``at``."""
    latest = _day_number(at) // BLOCK_STEP * BLOCK_STEP
    return [latest - i * BLOCK_STEP for i in range(BLOCK_DAYS // BLOCK_STEP)]


def _enclosing_block(first_hour: dt.datetime, end: dt.datetime) -> int | None:
    """A block that holds every hour a report of [first_hour, end) reads, if there is one.

    Those hours are the ``hour >= first_hour and hour < end`` of the rollup; the block is the
    latest that starts on or before the first hour's day."""
    block = _day_number(first_hour) // BLOCK_STEP * BLOCK_STEP
    return block if _day_number(_last_hour(end)) < block + BLOCK_DAYS else None


def _dims(ev: Event) -> list[str]:
    dims = [""]
    if ev.kind == "file.committed" and ev.detail:
        dims.append("type:" + ev.detail[:200])
    elif ev.kind == "file.rejected" and ev.detail:
        dims.append("reason:" + _reason_key(ev.detail))
    elif ev.kind == "file.downloaded" and ev.file_id:
        dims.append("file:" + ev.file_id)
    return dims


def _reason_key(reason: str) -> str:
    """Group rejection reasons: the text before the first ':' (e.g. 'virus found')."""
    return reason.split(":", 1)[0].strip()[:200] or "unknown"


class EventRecorder:
    """Events kept in memory and written in batches, a batch at least every
    ``flush_interval`` seconds and as soon as ``max_batch`` are waiting.

    A batch's transaction holds the catalog's writer for its time (on SQLite, the quick
    writes of the uploads wait for it): 2,400 events, a second of small uploads at full
    speed, took about 40 ms, which the uploads finishing meanwhile saw as latency. A quarter
    of a second bounds that wait to about 10 ms, and what a crash may lose to that fraction
    of a second of events (never a file or an upload).
    """

    def __init__(
        self, db: Database, *, flush_interval: float = 0.25, max_batch: int = 1000
    ) -> None:
        self._db = db
        self._interval = flush_interval
        self._max_batch = max_batch
        self._batch: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()

    def record(self, event: Event) -> None:
        self._batch.append(event)
        if len(self._batch) >= self._max_batch and self._task is not None:
            self._flushed.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), self._interval)
            self._flushed.clear()
            try:
                await self.flush()
            except Exception:
                _log.exception("analytics flush failed; events kept for the next try")

    async def flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        try:
            await write_events(self._db, batch)
        except Exception:
            self._batch[:0] = batch  # keep them (bounded by the next successful flush)
            if len(self._batch) > 10 * self._max_batch:
                del self._batch[: len(self._batch) - 10 * self._max_batch]
            raise


async def write_events(db: Database, batch: Iterable[Event]) -> None:
    rows = []
    increments: dict[tuple[dt.datetime, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    daily: dict[tuple[str, dt.datetime, str, str], list[int]] = defaultdict(lambda: [0, 0])
    block_counts: dict[tuple[str, int, str], int] = defaultdict(int)
    for ev in batch:
        # (The hour and day of an event, computed once for all its owners and dimensions.)
        hour = _hour(ev.at)
        day = hour.replace(hour=0)
        rows.append(
            {
                "at": ev.at,
                "kind": ev.kind,
                "owner": ev.owner,
                "file_id": ev.file_id,
                "upload_id": ev.upload_id,
                "bytes": ev.bytes,
                "duration_ms": ev.duration_ms,
                "client": (ev.client or "")[:255] or None,
                "detail": (ev.detail or "")[:255] or None,
            }
        )
        for dim in _dims(ev):
            # Each event counts for its owner and for the whole service, so a service-wide
            # report reads one row per hour and kind, however many users there are.
            for owner in (ev.owner or "", ALL_OWNERS):
                per_file = ev.kind == "file.downloaded" and dim != ""  # "file:<id>"
                targets = [increments[(hour, owner, ev.kind, dim)]]
                if not per_file:
                    targets.append(daily[(owner, day, ev.kind, dim)])
                for inc in targets:
                    inc[0] += 1
                    inc[1] += ev.bytes
                if per_file:
                    for block in _blocks(ev.at):
                        block_counts[(owner, block, dim)] += 1
    if not rows:
        return
    rollup_rows = [
        {"hour": hour, "owner": owner, "kind": kind, "dim": dim, "count": c, "bytes": n}
        for (hour, owner, kind, dim), (c, n) in sorted(increments.items())
    ]
    daily_rows = [
        {"owner": owner, "day": day, "kind": kind, "dim": dim, "count": c, "bytes": n}
        for (owner, day, kind, dim), (c, n) in sorted(daily.items())
    ]
    block_rows = [
        {"owner": owner, "block": block, "dim": dim, "count": c}
        for (owner, block, dim), c in sorted(block_counts.items())
    ]
    # Rows are locked in key order, table by table in this order, so concurrent batches of
    # several instances cannot deadlock.
    upserts = [
        (_increment(db.dialect, analytics_rollup, ("count", "bytes")), rollup_rows),
        (_increment(db.dialect, analytics_daily, ("count", "bytes")), daily_rows),
        (_increment(db.dialect, analytics_file_blocks, ("count",)), block_rows),
    ]

    def work(conn: Connection) -> None:
        fastsql.execute_many(conn, _INSERT_EVENT, rows)
        for stmt, params in upserts:
            if params:
                conn.execute(stmt, params)

    await db.write(work)


def _increment(dialect: str, table: Table, columns: tuple[str, ...]) -> Any:
    """INSERT a row, or add its ``columns`` to those of the row with the same primary key."""
    # The dialect's module is imported here, not with this module: SQLAlchemy's postgresql
    # package (2 MiB resident) is not loaded by a server on SQLite. An already imported
    # module costs a dictionary lookup.
    upsert_mod: Any = importlib.import_module(
        "sqlalchemy.dialects.postgresql"
        if dialect == "postgresql"
        else "sqlalchemy.dialects.sqlite"
    )
    stmt = upsert_mod.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key.columns],
        set_={c: table.c[c] + stmt.excluded[c] for c in columns},
    )


#: PostgreSQL, for a report's transaction:
#: - no JIT compilation. The estimates of these queries are far too high (owner "*" and dim ""
#:   are not independent), so each was compiled, about 10 ms apiece, to run for a few
#:   milliseconds (measured with 10,000,000 events).
#: - a plan for the values at hand: the top files look up the files of a block whose count
#:   reaches a threshold, a few hundred rows for one value and the whole block for another;
#:   a generic plan of a pooled connection's prepared statement would know neither.
#: - no parallel workers: for the same overestimates, the series and breakdowns (a few hundred
#:   rows, under a millisecond of work) were planned with two workers, whose start took 6-7 ms.
_REPORT_SETTINGS = select(
    func.set_config("jit", "off", True),
    func.set_config("plan_cache_mode", "force_custom_plan", True),
    func.set_config("max_parallel_workers_per_gather", "0", True),
)

#: Top files: the exact sums of this many files (times the length of the list; those with the
#: highest bounds) set the first threshold. A threshold that more files than _MAX_CHECKED
#: reach means ranking every file downloaded in the range instead.
_FIRST_CHECKED_PER_ENTRY = 4
_MAX_CHECKED = 5000


def top_files(
    conn: Connection, *, owner: str, start: dt.datetime, end: dt.datetime, top: int
) -> list[tuple[str, int, int]]:
    """The ``top`` most downloaded files of ``owner`` ("*": everyone) between ``start`` and
    ``end``: (dim, count, bytes), by count, then bytes, highest first, then by dim.

    The counts and bytes are sums of the hourly rows of the range, as in any report, and the
    list is the one ranking every downloaded file would give; but when one block of
    ``analytics_file_blocks`` holds the range (ranges of up to 33 days), only a few files are
    summed:

    1. A file's count in the block is at least its count in the range: an upper bound.
    2. Sum the range of the files with the highest bounds (the first ``4 * top``, ties
       included). The ``top``-th count among them, T, is at most the ``top``-th count among
       all files.
    3. A file whose bound is below T has fewer than T downloads in the range, so it ranks
       below T's file whatever its bytes: the answer is among the files with a bound of at
       least T. Sum those and rank them. (If the first files' bounds were all at least T
       anyway, step 2 already summed them all.)

    With 1,000,000 files downloaded uniformly (the benchmark), a month holds 190,000 files,
    T is 4 and some 430 files have a bound of 4 or more. When no block holds the range, or
    the bounds cannot leave many files out (T = 1: fewer than ``top`` files were downloaded
    twice in the range; more than 5000 files reaching T), every file downloaded in the range
    is ranked instead.
    """
    if top <= 0:
        return []
    r, b = analytics_rollup.c, analytics_file_blocks.c
    first = _hour(start)
    in_range = (r.owner == owner, r.kind == "file.downloaded", r.hour >= first, r.hour < end)
    count, nbytes = func.sum(r.count), func.sum(r.bytes)
    ranking = (count.desc(), nbytes.desc(), r.dim)

    def ranked(rows: Iterable[Any]) -> list[tuple[str, int, int]]:
        return [(dim, int(c), int(n)) for dim, c, n in rows]

    block = _enclosing_block(first, end)
    if block is None:
        return _rank_all(conn, in_range, ranking, top)
    of_block = (b.owner == owner, b.block == block)

    def checked(at_least: int) -> list[tuple[str, int, int]]:
        """The top of the files whose bound is at least ``at_least``, exact sums."""
        # Each candidate's rows by (owner, dim, hour); the kind goes without saying (only
        # downloads have "file:" dims), and with it SQLite read every download row of the
        # range by (owner, kind, hour) and kept the candidates' (a join did the same).
        candidates = select(b.dim).where(*of_block, b.count >= at_least)
        stmt = (
            select(r.dim, count, nbytes)
            .where(r.owner == owner, r.dim.in_(candidates), r.hour >= first, r.hour < end)
            .group_by(r.dim)
            .order_by(*ranking)
            .limit(top)
        )
        return ranked(conn.execute(stmt).all())

    first_bound = conn.execute(
        select(b.count)
        .where(*of_block)
        .order_by(b.count.desc())
        .offset(_FIRST_CHECKED_PER_ENTRY * top - 1)
        .limit(1)
    ).scalar()
    # Few files in the block, or few downloaded twice: the bounds would leave (nearly) every
    # file of the range in, and ranking them all costs no more.
    if first_bound is None or first_bound <= 1:
        return _rank_all(conn, in_range, ranking, top)
    found = checked(int(first_bound))
    if len(found) == top and found[-1][1] >= first_bound:
        return found
    threshold = found[-1][1] if len(found) == top else 1
    if threshold <= 1:
        return _rank_all(conn, in_range, ranking, top)
    reaching = select(b.dim).where(*of_block, b.count >= threshold).limit(_MAX_CHECKED + 1)
    if conn.execute(select(func.count()).select_from(reaching.subquery())).scalar_one() > (
        _MAX_CHECKED
    ):
        return _rank_all(conn, in_range, ranking, top)
    return checked(threshold)


def _rank_all(
    conn: Connection,
    in_range: tuple[ColumnElement[bool], ...],
    ranking: tuple[Any, ...],
    top: int,
) -> list[tuple[str, int, int]]:
    """The top files by ranking every file downloaded in the range (one group per file)."""
    r = analytics_rollup.c
    stmt = (
        select(r.dim, func.sum(r.count), func.sum(r.bytes))
        .where(*in_range, r.dim != "")
        .group_by(r.dim)
        .order_by(*ranking)
        .limit(top)
    )
    rows: list[Row[Any]] = list(conn.execute(stmt).all())
    return [(dim, int(c), int(n)) for dim, c, n in rows]


async def report(
    db: Database,
    *,
    start: dt.datetime,
    end: dt.datetime,
    owner: str | None,
    granularity: str = "day",
    top: int = 10,
) -> dict[str, Any]:
    """Totals, time series and breakdowns of the hours from the one of ``start`` up to ``end``
    (exclusive: the rollup rows with ``hour >= _hour(start)`` and ``hour < end``), UTC."""
    who = ALL_OWNERS if owner is None else owner
    first = _hour(start)
    hours, days = _split(first, end)

    def rows(conds: Any, *, whole_days: bool = True) -> Select[Any] | CompoundSelect[Any]:
        """(at, kind, dim, count, bytes) of the rows of the range that ``conds`` (a function of
        a rollup table's columns) accepts: the daily rows of the whole days and the hourly rows
        of the other hours, or with ``whole_days`` false the hourly rows of all of them."""
        h, d = analytics_rollup.c, analytics_daily.c
        parts = [
            select(h.hour.label("at"), h.kind, h.dim, h.count, h.bytes).where(
                h.owner == who, h.hour >= a, h.hour < b, *conds(h)
            )
            for a, b in (hours if whole_days else [(first, end)])
        ]
        if whole_days and days is not None:
            parts.append(
                select(d.day.label("at"), d.kind, d.dim, d.count, d.bytes).where(
                    d.owner == who, d.day >= days[0], d.day < days[1], *conds(d)
                )
            )
        return parts[0] if len(parts) == 1 else union_all(*parts)

    # One row per hour (or day) and kind: the totals of an hourly series are those of its hours.
    series_query = rows(lambda c: [c.dim == ""], whole_days=granularity != "hour")
    # Types and reasons: a few distinct values, all read and ranked here.
    breakdowns = rows(
        lambda c: [c.kind.in_(("file.committed", "file.rejected")), c.dim != ""]
    ).subquery()
    b = breakdowns.c
    dim_query = select(b.kind, b.dim, func.sum(b.count), func.sum(b.bytes)).group_by(b.kind, b.dim)

    def work(conn: Connection) -> tuple[list[Any], list[Any]]:
        if conn.dialect.name == "postgresql":
            conn.execute(_REPORT_SETTINGS)
        dims: list[Any] = list(conn.execute(dim_query).all())
        for dim, count, nbytes in top_files(conn, owner=who, start=start, end=end, top=top):
            dims.append(("file.downloaded", dim, count, nbytes))
        return list(conn.execute(series_query).all()), dims

    series_rows, dim_rows = await db.read(work)
    totals = {k: {"count": 0, "bytes": 0} for k in KINDS}
    buckets: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: {k: {"count": 0, "bytes": 0} for k in KINDS}
    )
    for at, kind, _dim, count, nbytes in series_rows:
        if kind not in totals:
            continue
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        key = at.isoformat() if granularity == "hour" else at.date().isoformat()
        for target in (totals[kind], buckets[key][kind]):
            target["count"] += int(count)
            target["bytes"] += int(nbytes)
    # Every bucket of the range is present, zeros included (charts need no gap logic).
    step = dt.timedelta(hours=1) if granularity == "hour" else dt.timedelta(days=1)
    cursor = _hour(start) if granularity == "hour" else _hour(start).replace(hour=0)
    while cursor < end and len(buckets) < 24 * 400:
        key = cursor.isoformat() if granularity == "hour" else cursor.date().isoformat()
        _ = buckets[key]  # creates the zero bucket
        cursor += step
    breakdown: dict[str, list[dict[str, Any]]] = {"types": [], "reasons": [], "files": []}
    for kind, dim, count, nbytes in dim_rows:
        prefix, _, value = dim.partition(":")
        entry = {"key": value, "count": int(count), "bytes": int(nbytes)}
        if kind == "file.committed" and prefix == "type":
            breakdown["types"].append(entry)
        elif kind == "file.rejected" and prefix == "reason":
            breakdown["reasons"].append(entry)
        elif kind == "file.downloaded" and prefix == "file":
            breakdown["files"].append(entry)
    for items in breakdown.values():
        items.sort(key=lambda e: (-e["count"], -e["bytes"], e["key"]))
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "granularity": granularity,
        "totals": totals,
        "series": [{"bucket": k, **v} for k, v in sorted(buckets.items())],
        "top_types": breakdown["types"][:top],
        "rejects_by_reason": breakdown["reasons"][:top],
        "top_files": breakdown["files"][:top],
        "bytes_in": totals["upload.finished"]["bytes"],
        "bytes_out": totals["file.downloaded"]["bytes"],
    }
