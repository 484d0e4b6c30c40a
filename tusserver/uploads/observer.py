"""Who calls the lifecycle, and who watches it.

An entry path (tus, the IETF draft, ``POST /upload``) hands the lifecycle a :class:`Caller`:
the identity, the request's :class:`Admission` (rate limits, caps and the audit log, bound to
the request by the adapter) and the client's name. The lifecycle reports what happens to an
:class:`UploadObserver` (metrics, analytics events, audit), so no entry path can forget them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from auth import Principal
from auth.users import AuditLog

from ..catalog.analytics import Event, EventRecorder
from ..catalog.uploads import UploadRecord
from ..metrics import Metrics

__all__ = [
    "Admission",
    "Caller",
    "NullObserver",
    "RecordingObserver",
    "UploadObserver",
    "unlimited",
]


class Admission(Protocol):
    """The request's rate limits, caps and audit log (the gateway, bound to one request)."""

    async def limit(self, kind: str, *, cost: float = 1.0, require: float | None = None) -> None:
        """Refuse (429) when ``kind``'s budget cannot pay ``cost`` (or hold ``require``)."""

    async def charge(self, kind: str, *, cost: float) -> None:
        """Take ``cost`` from ``kind``'s budget after the fact (may go into debt)."""

    async def pace(self, kind: str, *, cost: float) -> float:
        """Take ``cost`` from ``kind``'s budget before the work if it is not in debt (into
        debt if need be): 0; else nothing taken, and how long to wait before asking again."""

    def slot(self, kind: str) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the caller's places of ``kind`` (``bodies``: request bodies being received
        at once), held for the ``async with`` block; entering it when all are taken raises
        a 429 (TooManyRequests) with Retry-After."""

    def audit(self, action: str, *, target: str | None) -> None:
        """Record ``action`` by this caller in the audit log."""


_NO_CAP: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class _Unlimited:
    async def limit(self, kind: str, *, cost: float = 1.0, require: float | None = None) -> None:
        return None

    async def charge(self, kind: str, *, cost: float) -> None:
        return None

    async def pace(self, kind: str, *, cost: float) -> float:
        return 0.0

    def slot(self, kind: str) -> contextlib.AbstractAsyncContextManager[None]:
        return _NO_CAP

    def audit(self, action: str, *, target: str | None) -> None:
        return None


#: No limits, no caps and no audit (internal callers and tests).
unlimited: Admission = _Unlimited()


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    admission: Admission = unlimited
    #: The client software (User-Agent), for analytics.
    client: str | None = None


class UploadObserver(Protocol):
    def created(self, caller: Caller, record: UploadRecord) -> None:
        """An upload was created."""

    def receiving(self) -> contextlib.AbstractContextManager[None]:
        """While a body is being read and stored."""

    def stored(self, before: int, after: int | None, *, finished: bool) -> None:
        """One append stored ``after - before`` bytes (and maybe finished the upload)."""

    def refused(self, principal: Principal, reason: str, target: str | None) -> None:
        """A refusal monitoring watches, where the lifecycle decides it: ``quota`` or
        ``max_size`` (413), or ``probe`` (someone else's existing upload asked for,
        answered 404 like a missing one). ``target``: the upload id, if any."""


class NullObserver:
    def created(self, caller: Caller, record: UploadRecord) -> None:
        return None

    def receiving(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def stored(self, before: int, after: int | None, *, finished: bool) -> None:
        return None

    def refused(self, principal: Principal, reason: str, target: str | None) -> None:
        return None


class RecordingObserver:
    """The service's observer: Prometheus metrics, analytics events and the audit log."""

    def __init__(
        self,
        *,
        metrics: Metrics | None,
        events: EventRecorder | None,
        audit: AuditLog | None = None,
    ) -> None:
        self._metrics = metrics
        self._events = events
        self._audit = audit

    def created(self, caller: Caller, record: UploadRecord) -> None:
        caller.admission.audit("upload.create", target=record.id)
        if self._metrics is not None:
            self._metrics.child(self._metrics.uploads, "created").inc()
        if self._events is not None:
            self._events.record(
                Event(
                    "upload.started",
                    at=record.created_at,
                    owner=caller.principal.user_id,
                    upload_id=record.id,
                    client=caller.client,
                )
            )

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        if self._metrics is None:
            yield
            return
        self._metrics.in_flight.inc()
        try:
            yield
        finally:
            self._metrics.in_flight.dec()

    def stored(self, before: int, after: int | None, *, finished: bool) -> None:
        if self._metrics is None or after is None or after <= before:
            return
        self._metrics.bytes_received.inc(after - before)
        if finished:
            self._metrics.child(self._metrics.uploads, "finished").inc()

    def refused(self, principal: Principal, reason: str, target: str | None) -> None:
        """A counter (reasons only, no identity) and, for a user, an audit entry; the
        entry's address is the request's (bound to the context by the gateway)."""
        if reason == "probe":
            if self._metrics is not None:
                self._metrics.probes.labels("upload").inc()
            action, outcome, detail = "access.denied", "denied", {"resource": "upload"}
        else:
            if self._metrics is not None:
                self._metrics.upload_refusals.labels(reason).inc()
            action, outcome, detail = "upload.refused", "refused", {"reason": reason}
        if self._audit is not None and principal.user_id is not None:
            self._audit.record_soon(
                action, actor=principal.user_id, target=target, outcome=outcome, detail=detail
            )
