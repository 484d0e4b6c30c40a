"""GET /analytics: totals and time series of uploads, downloads, bytes and rejects."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from auth.gateway import Gate

from ..catalog.analytics import EventRecorder, report
from ..catalog.db import Database
from ..protocol.errors import BadRequest
from .common import parse_when, text_param

__all__ = ["AnalyticsApi"]

_MAX_RANGE = dt.timedelta(days=400)


def _when(raw: str | None, name: str, default: dt.datetime) -> dt.datetime:
    return parse_when(raw, name) or default


class AnalyticsApi:
    def __init__(self, *, db: Database, gate: Gate, events: EventRecorder) -> None:
        self._db = db
        self._gate = gate
        self._events = events

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
        # Recent events are still in the recorder's batch: write them so the report is exact.
        await self._events.flush()
        body = await report(self._db, start=start, end=end, owner=owner, granularity=granularity)
        body["scope"] = "user" if owner is not None else "service"
        return web.json_response(body, headers={"Cache-Control": "private, max-age=5"})
