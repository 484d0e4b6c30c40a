"""GET /analytics: totals and time series of uploads, downloads, bytes and rejects.

Reports are cached for a few seconds (``ANALYTICS_MAX_TTL``, or less with a smaller
``cache_ttl``), keyed by the caller and the normalized query, and only expire: a report may
miss the events of its last few seconds, which is what ``Cache-Control: max-age=5`` already
allowed clients and proxies to do. They are kept as JSON text, at most
``ANALYTICS_MAX_ENTRIES`` of them (an hourly month is some 200 KB).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aiohttp import web

from auth.gateway import Gate

from ..cache import ANALYTICS, Cache, Namespace
from ..catalog.analytics import EventRecorder, report
from ..catalog.db import Database
from ..errors import BadRequest
from .common import parse_when, text_param

__all__ = ["ANALYTICS_MAX_TTL", "AnalyticsApi"]

_MAX_RANGE = dt.timedelta(days=400)
#: The longest a report is cached, in seconds (as long as clients may keep it).
ANALYTICS_MAX_TTL = 5.0
#: Reports cached at most at once (they are large; the rest of the cache is not).
ANALYTICS_MAX_ENTRIES = 128


def _when(raw: str | None, name: str, default: dt.datetime) -> dt.datetime:
    return parse_when(raw, name) or default


class AnalyticsApi:
    def __init__(
        self,
        *,
        db: Database,
        gate: Gate,
        events: EventRecorder,
        cache: Cache | None = None,
        ttl: float = 0.0,
    ) -> None:
        self._db = db
        self._gate = gate
        self._events = events
        self._cache = cache
        self._ns: Namespace[bytes] = Namespace(ANALYTICS, ttl, ANALYTICS_MAX_ENTRIES)

    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        return [web.get(f"{prefix}/analytics", self.get)]

    async def get(self, request: web.Request) -> web.Response:
        """``from``/``to`` (default: the last 30 days), ``granularity`` hour|day, ``user``.

        Users see their own numbers; admins see the whole service, or one ``user``.
        """
        principal = await self._gate.principal(request)
        await self._gate.limit(request, "api", who=principal.user_id)
        q = request.query
        unknown = set(q) - {"from", "to", "granularity", "user"}
        if unknown:
            raise BadRequest(f"unknown parameter: {sorted(unknown)[0][:40]}")
        now = dt.datetime.now(dt.UTC)
        end = _when(q.get("to"), "to", now + dt.timedelta(hours=1))
        try:
            start = _when(q.get("from"), "from", end - dt.timedelta(days=30))
        except OverflowError:
            raise BadRequest("to: too early for the default 30-day range; give from") from None
        if start >= end:
            raise BadRequest("from: must be before to")
        if end - start > _MAX_RANGE:
            raise BadRequest("the range may span at most 400 days")
        granularity = q.get("granularity", "day")
        if granularity not in ("hour", "day"):
            raise BadRequest("granularity: hour or day")
        if granularity == "hour" and end - start > dt.timedelta(days=31):
            raise BadRequest("hourly series span at most 31 days")
        owner = principal.user_id
        wanted = text_param(q, "user", max_len=64)
        if principal.is_admin:
            owner = wanted
        elif wanted and wanted != principal.user_id:
            raise BadRequest("user: only admins may see other users' analytics")
        # Who asks and what, after every check: a cached report never widens what one sees.
        key = json.dumps(
            [
                principal.user_id,
                principal.is_admin,
                owner,
                granularity,
                start.isoformat() if q.get("from") else None,  # None: the default range,
                end.isoformat() if q.get("to") else None,  # as of the cached report
            ],
            separators=(",", ":"),
        )

        async def build() -> bytes:
            # Recent events are still in the recorder's batch: write them so the report is
            # exact (as of now; a cached copy is at most the TTL old).
            await self._events.flush()
            body: dict[str, Any] = await report(
                self._db, start=start, end=end, owner=owner, granularity=granularity
            )
            body["scope"] = "user" if owner is not None else "service"
            return json.dumps(body).encode()

        payload = (
            await self._cache.fetch(self._ns, key, build)
            if self._cache is not None
            else await build()
        )
        return web.Response(
            body=payload,
            content_type="application/json",
            charset="utf-8",
            headers={"Cache-Control": "private, max-age=5"},
        )
