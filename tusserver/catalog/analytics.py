"""Usage analytics: events recorded off the hot path, hourly rollups, report queries.

``EventRecorder.record`` only appends to an in-memory batch; a background task writes each
batch in one transaction: the raw events plus increments of the hourly ``analytics_rollup``
rows (INSERT .. ON CONFLICT DO UPDATE, on SQLite and PostgreSQL alike). Reports read only
the rollups, so their cost depends on the time range, not on how many events exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from .db import Database
from .schema import analytics_rollup, events

__all__ = ["Event", "EventRecorder", "report"]

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


def _hour(at: dt.datetime) -> dt.datetime:
    return at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


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
    def __init__(self, db: Database, *, flush_interval: float = 1.0, max_batch: int = 5000) -> None:
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
    for ev in batch:
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
                inc = increments[(_hour(ev.at), owner, ev.kind, dim)]
                inc[0] += 1
                inc[1] += ev.bytes
    if not rows:
        return
    dialect = db.dialect
    upsert_mod: Any = postgresql if dialect == "postgresql" else sqlite
    upserts = []
    for (hour, owner, kind, dim), (count, nbytes) in sorted(increments.items()):
        stmt = upsert_mod.insert(analytics_rollup).values(
            hour=hour, owner=owner, kind=kind, dim=dim, count=count, bytes=nbytes
        )
        upserts.append(
            stmt.on_conflict_do_update(
                index_elements=["hour", "owner", "kind", "dim"],
                set_={
                    "count": analytics_rollup.c.count + stmt.excluded.count,
                    "bytes": analytics_rollup.c.bytes + stmt.excluded.bytes,
                },
            )
        )

    def work(conn: Connection) -> None:
        conn.execute(insert(events), rows)
        for stmt in upserts:
            conn.execute(stmt)

    await db.write(work)


#: PostgreSQL, for a report's transaction: no JIT compilation. The estimates of these
#: queries are far too high (owner "*" and dim "" are not independent), so each was compiled,
#: about 10 ms apiece, to run for a few milliseconds (measured with 10,000,000 events).
_NO_JIT = select(func.set_config("jit", "off", True))


async def report(
    db: Database,
    *,
    start: dt.datetime,
    end: dt.datetime,
    owner: str | None,
    granularity: str = "day",
    top: int = 10,
) -> dict[str, Any]:
    """Totals, time series and breakdowns between ``start`` and ``end`` (hour-aligned)."""
    r = analytics_rollup.c
    conds = [
        r.hour >= _hour(start),
        r.hour < end,
        r.owner == (ALL_OWNERS if owner is None else owner),
    ]
    series_query = (
        select(r.hour, r.kind, func.sum(r.count), func.sum(r.bytes))
        .where(*conds, r.dim == "")
        .group_by(r.hour, r.kind)
    )
    # Types and reasons: a few distinct values, all read and ranked here.
    dim_query = (
        select(r.kind, r.dim, func.sum(r.count), func.sum(r.bytes))
        .where(*conds, r.kind.in_(("file.committed", "file.rejected")), r.dim != "")
        .group_by(r.kind, r.dim)
    )
    # Files: as many rows as files downloaded in the range (a service-wide month can hold
    # hundreds of thousands), so the database ranks them and only the top ones come back. The
    # order is the one of the sort below: dims are "file:" + a hex id, which every collation
    # orders like Python does.
    file_count, file_bytes = func.sum(r.count), func.sum(r.bytes)
    files_query = (
        select(r.kind, r.dim, file_count, file_bytes)
        .where(*conds, r.kind == "file.downloaded", r.dim != "")
        .group_by(r.kind, r.dim)
        .order_by(file_count.desc(), file_bytes.desc(), r.dim)
        .limit(top)
    )

    def work(conn: Connection) -> tuple[list[Any], list[Any]]:
        if conn.dialect.name == "postgresql":
            conn.execute(_NO_JIT)
        dims = list(conn.execute(dim_query).all()) + list(conn.execute(files_query).all())
        return list(conn.execute(series_query).all()), dims

    series_rows, dim_rows = await db.read(work)
    totals = {k: {"count": 0, "bytes": 0} for k in KINDS}
    buckets: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: {k: {"count": 0, "bytes": 0} for k in KINDS}
    )
    for hour, kind, count, nbytes in series_rows:
        if kind not in totals:
            continue
        hour = hour if hour.tzinfo else hour.replace(tzinfo=dt.UTC)
        key = hour.isoformat() if granularity == "hour" else hour.date().isoformat()
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
