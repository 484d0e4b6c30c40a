"""The pipeline's backlog: files waiting for a worker, and whether any worker makes progress.

An ``api`` instance takes uploads but processes nothing: the files it finishes wait in the
catalog until a ``worker`` (or a ``serve`` instance) claims them. The backlog is what an
operator (and an autoscaler) watches:

- ``tusserver_pipeline_backlog_files``: files waiting for validation or commit (received or
  validating, retries included);
- ``tusserver_pipeline_backlog_oldest_seconds``: how long the oldest of them has waited since
  its upload finished (0 with an empty backlog).

The backlog is *stalled* when files have waited longer than ``pipeline_stall_after`` seconds
and no file was committed or rejected anywhere in that time: no worker runs, or every worker
fails (object store down, scanner down). It is read from the catalog, so every instance sees
the same backlog, whichever instance took the uploads and whichever worker runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection

from ..catalog.db import Database
from ..catalog.files import PENDING
from ..catalog.schema import events, files

__all__ = ["Backlog", "BacklogState"]

BACKLOG_FILES = "tusserver_pipeline_backlog_files"
BACKLOG_OLDEST = "tusserver_pipeline_backlog_oldest_seconds"

#: Events that mean a worker finished a file (either way).
_DONE_KINDS = ("file.committed", "file.rejected")

_PENDING_STATS = select(func.count(), func.min(files.c.created_at)).where(
    files.c.status.in_(PENDING)
)
_RECENT_DONE = (
    select(events.c.id)
    .where(events.c.at >= bindparam("since"), events.c.kind.in_(_DONE_KINDS))
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class BacklogState:
    files: int
    oldest_seconds: float
    #: Files waited longer than the stall limit and no worker finished one in that time.
    stalled: bool

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "backlog_files": self.files,
            "backlog_oldest_seconds": round(self.oldest_seconds, 3),
            "state": "stalled" if self.stalled else "ok",
        }
        if self.stalled:
            out["message"] = (
                f"{self.files} file(s) waiting, the oldest for {int(self.oldest_seconds)} s, "
                "and no worker committed or rejected a file in that time: start "
                "`tusserver worker` (or check the workers' logs)"
            )
        return out


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Backlog:
    """Reads the backlog from the catalog and keeps its two gauges in ``registry``."""

    def __init__(
        self,
        db: Database,
        registry: CollectorRegistry,
        *,
        stall_after: float,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._db = db
        self._stall_after = dt.timedelta(seconds=stall_after)
        self._clock = clock
        self.files = Gauge(
            BACKLOG_FILES,
            "Files waiting for the pipeline (validation and commit), on every instance",
            registry=registry,
            # Every process reads the same catalog: with ``--workers`` one value, not a sum.
            multiprocess_mode="mostrecent",
        )
        self.oldest = Gauge(
            BACKLOG_OLDEST,
            "Seconds the oldest file waiting for the pipeline has waited (0: none waiting)",
            registry=registry,
            # Every process reads the same catalog: with ``--workers`` one value, not a sum.
            multiprocess_mode="mostrecent",
        )

    async def refresh(self) -> BacklogState:
        """Read the backlog now, set the gauges, and say whether it is stalled."""
        now = self._clock()
        since = now - self._stall_after

        def work(conn: Connection) -> tuple[int, dt.datetime | None, bool]:
            count, oldest = conn.execute(_PENDING_STATS).one()
            if not count or oldest is None or oldest > since:
                return int(count or 0), oldest, False
            done = conn.execute(_RECENT_DONE, {"since": since}).first() is not None
            return int(count), oldest, not done

        count, oldest, idle = await self._db.read(work)
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        self.files.set(count)
        self.oldest.set(age)
        return BacklogState(files=count, oldest_seconds=age, stalled=idle)
