"""UploadService: every state change of a tus upload, independent of HTTP.

The rules it keeps:
- an offset is reported only after the bytes and the row behind it are written;
- the chunk store's own byte count is the truth for an upload in progress;
- one writer per upload (the Locker), and every request on an upload takes the lock, so a
  HEAD after a dead connection breaks the stale PATCH instead of waiting for it; the owner
  is checked before the lock is asked for, so nobody else can make a PATCH let go.

Why one module of about 900 lines: this is the lifecycle every entry path (tus, the IETF
draft, form uploads) goes through, and the order of its checks - owner, lock, offset,
length, budget and quota, the byte guard, the record, the finish - is the contract. Its
parts that stand alone live beside it: the body reader (``body.py``), the byte guard
(``guard.py``), running digests (``digests.py``), events, metrics and audit (``observer.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import structlog

from auth import Principal
from storage_backends.base import (
    ChunkSource,
    ChunkStore,
    Concatenater,
    Finisher,
    PartLimited,
    StorageError,
    StorageFull,
    StorageLimitExceeded,
    UploadDataMissing,
)

from ..catalog.uploads import UploadRecord, UploadRepository, UploadState
from ..catalog.usage import QuotaExceeded
from ..errors import (
    BadRequest,
    CatalogUnavailable,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    Gone,
    LockTimeout,
    NotFound,
    PayloadTooLarge,
    Progress,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
    UploadInterrupted,
    UploadSuspended,
)
from ..events import CreateContext, Hooks
from ..settings import UploadSettings
from ..types import Checksum, ConcatFinal, ConcatPartial
from .body import BodyReader, ByteStream, Interruption
from .digests import RunningDigests
from .guard import BodyGuard, raise_if_stopped, refuse_more, stopped_error
from .locks import KnowsHolders, Locker
from .observer import Caller, NullObserver, UploadObserver

__all__ = [
    "FinishedHandler",
    "UploadInterrupted",
    "UploadService",
    "UploadStatus",
    "UploadSuspended",
]

_log = structlog.get_logger("tusserver.uploads")


class FinishedHandler(Protocol):
    """Takes in a whole upload that is finishing: records ``finish`` (the upload row's
    finishing column values) with what it records itself, in one transaction; may return
    the file id."""

    def __call__(self, rec: UploadRecord, *, finish: Mapping[str, Any]) -> Awaitable[object]: ...


#: No cap on the bodies at once (internal callers of append).
_NO_PLACE: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()

#: A final whose concatenation keeps failing is tried again by a HEAD at most this often.
_FINAL_RETRY_MAX_S = 60.0
_FINAL_RETRIES_KEPT = 10_000

_FINAL_REFUSED = (
    "the final upload was refused: its partial uploads add up to more than the maximum size "
    "or than your storage quota allows"
)


@dataclass(frozen=True, slots=True)
class UploadStatus:
    record: UploadRecord
    #: Bytes held; None for a final upload whose partials are not all finished yet.
    offset: int | None
    #: For a final upload, the ids of its partial uploads, in order.
    parts: Sequence[str] = field(default_factory=tuple)

    @property
    def finished(self) -> bool:
        return self.record.state is UploadState.FINISHED


def new_upload_id() -> str:
    """128 random bits, URL-safe: never derived from anything a client sent."""
    return secrets.token_hex(16)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UploadService:
    def __init__(
        self,
        *,
        config: UploadSettings,
        store: ChunkStore,
        repo: UploadRepository,
        locker: Locker,
        hooks: Hooks,
        clock: Callable[[], dt.datetime] = _utcnow,
        on_finished: FinishedHandler | None = None,
        first_bytes_check: Callable[[UploadRecord, bytes], Awaitable[None]] | None = None,
        observer: UploadObserver | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # The store's optional abilities, known once: an isinstance check against a
        # runtime-checkable Protocol costs ~10 us, several times per request otherwise.
        self._finisher = store if isinstance(store, Finisher) else None
        self._part_limited = store if isinstance(store, PartLimited) else None
        self._concatenater = store if isinstance(store, Concatenater) else None
        self.repo = repo
        self.locker = locker
        self.hooks = hooks
        self._clock = clock
        #: Called (awaited) when a whole upload (not a partial) is finished: the pipeline,
        #: which records the finish and the file's row at once.
        self.on_finished = on_finished
        #: Called with the first bytes of an upload; may raise to refuse it (415).
        self.first_bytes_check = first_bytes_check
        #: The storage quota of an owner in bytes (None: no quota). Usage is the catalog's
        #: (tusserver.catalog.usage): see :meth:`quota_remaining`.
        self.quota_limit: Callable[[str | None], Awaitable[int | None]] | None = None
        #: Told of creations and of the bytes received (metrics, analytics, audit).
        self.observer: UploadObserver = observer or NullObserver()
        #: The locker, when it knows its holders without waiting (see _owner_before_lock).
        self._local_locker = locker if isinstance(locker, KnowsHolders) else None
        #: Bodies being received: a graceful shutdown stops them (:meth:`release_all`).
        self._receiving: set[BodyReader] = set()
        #: Set by release_all (shutdown): a body that arrives later is stopped at once.
        self._released = False
        #: sha256 states of the uploads being received, for the pipeline (None: not kept;
        #: see tusserver.uploads.digests).
        self.digests: RunningDigests | None = None
        #: Finals whose concatenation failed on a HEAD: when the next HEAD may try it again,
        #: and how often it failed. A client polling HEAD does not make a failing store
        #: concatenate (read and write the whole upload) on every request.
        self._final_retries: dict[str, tuple[dt.datetime, int]] = {}

    # --- what we can do -------------------------------------------------------------------

    @property
    def max_size(self) -> int | None:
        limits = [x for x in (self.config.max_size, self.store.capabilities.max_size) if x]
        return min(limits) if limits else None

    @property
    def supports_concatenation(self) -> bool:
        return self._concatenater is not None

    def extensions(self) -> list[str]:
        """Tus-Extension, from what this store and configuration really do."""
        ext = ["creation", "creation-with-upload", "creation-defer-length", "termination"]
        if self.config.expiration > 0:
            ext.append("expiration")
        ext.append("checksum")
        if self.supports_concatenation:
            ext += ["concatenation", "concatenation-unfinished"]
        return ext

    # --- creation -------------------------------------------------------------------------

    async def create(
        self,
        caller: Caller,
        *,
        length: int | None,
        metadata: Mapping[str, bytes | None],
        concat: ConcatPartial | ConcatFinal | None = None,
    ) -> UploadStatus:
        """Create an upload (every entry path): the creations budget, limits, quota, hooks."""
        await caller.admission.limit("creations")
        status = await self._create(
            caller.principal, length=length, metadata=metadata, concat=concat
        )
        self.observer.created(caller, status.record)
        return status

    async def _create(
        self,
        principal: Principal,
        *,
        length: int | None,
        metadata: Mapping[str, bytes | None],
        concat: ConcatPartial | ConcatFinal | None = None,
    ) -> UploadStatus:
        is_final = isinstance(concat, ConcatFinal)
        parts: list[UploadRecord] = []
        if is_final:
            assert isinstance(concat, ConcatFinal)
            if not self.supports_concatenation:
                raise BadRequest("this server's store does not support concatenation")
            parts = await self._load_parts(principal, concat.upload_ids)
            lengths = [p.length for p in parts]
            length = None if any(n is None for n in lengths) else sum(n or 0 for n in lengths)
        max_size = self.max_size
        if length is not None and max_size is not None and length > max_size:
            self.observer.refused(principal, "max_size", None)
            what = "the partial uploads' lengths add up to" if is_final else "Upload-Length"
            raise PayloadTooLarge(f"{what} {length}, over the maximum of {max_size} bytes")
        # Every upload counts, partial and final ones included (a final's bytes are a copy).
        quota = await self._quota_of(principal.user_id, principal)
        if length is not None:
            await self._check_quota(principal, principal.user_id, length, quota)
        ctx = CreateContext(
            principal=principal,
            length=length,
            metadata=dict(metadata),
            is_partial=isinstance(concat, ConcatPartial),
            is_final=is_final,
        )
        await self.hooks.run_pre_create(ctx)
        now = self._clock()
        record = UploadRecord(
            id=new_upload_id(),
            owner=principal.user_id,
            length=length,
            offset=0,
            metadata=dict(ctx.metadata),
            is_partial=ctx.is_partial,
            is_final=is_final,
            state=UploadState.CONCATENATING if is_final else UploadState.RECEIVING,
            created_at=now,
            updated_at=now,
            expires_at=self._expiry(now),
        )
        if not is_final:
            try:
                await self.store.create(record.id, length=length)
            except StorageFull:
                raise  # 507, where errors are mapped
            except StorageError as exc:
                raise ServiceUnavailable(
                    f"storage is unavailable: {exc}", headers={"Retry-After": "5"}
                ) from None
        try:
            # Checked again with the insert, in one transaction: concurrent creations
            # cannot go past the quota together.
            await self.repo.insert(record, [p.id for p in parts], quota=quota)
        except Exception as exc:
            # No row: nothing would ever remove the store's upload. Unless the catalog did
            # not answer: its COMMIT may have been sent and the row written (PostgreSQL's
            # deadline), and a row must never name bytes that are gone; the store's upload
            # is kept then, and if there is no row, the orphan sweep removes it (empty).
            if not is_final and not isinstance(exc, CatalogUnavailable):
                with contextlib.suppress(StorageError, OSError):
                    await self.store.delete(record.id)
            if isinstance(exc, QuotaExceeded):
                raise PayloadTooLarge(str(exc)) from None
            raise
        self.hooks.fire("post_create", self.hooks.post_create, record)
        if is_final:
            try:
                await self._try_complete_final(record.id)
            except Exception:
                # The final exists: it is answered with its URL, and its HEAD tries the
                # concatenation again (with the back-off of a final completed by a PATCH).
                self._final_failed(record.id)
                _log.warning(
                    "could not complete a final upload", upload_id=record.id, exc_info=True
                )
        elif length == 0:
            await self._finish(record, 0)
        else:
            # Nothing can have changed it yet: no client knows its URL before we answer.
            return UploadStatus(record, 0)
        return await self._status_of(record.id)

    async def _quota_of(self, owner: str | None, caller: Principal | None = None) -> int | None:
        """The owner's quota. Administrators have none (``caller``: an administrator known by
        its token alone, as with JWKS, acting on its own uploads)."""
        if self.quota_limit is None or owner is None:
            return None
        if caller is not None and caller.is_admin and caller.user_id == owner:
            return None
        return await self.quota_limit(owner)

    async def quota_remaining(
        self, owner: str | None, caller: Principal | None = None
    ) -> int | None:
        """Bytes of storage ``owner`` may still use (None: no quota)."""
        quota = await self._quota_of(owner, caller)
        if quota is None or owner is None:
            return None
        return max(0, quota - await self.repo.used_bytes(owner))

    async def _check_quota(
        self, caller: Principal, owner: str | None, length: int, quota: int | None
    ) -> None:
        """A first check, with a clear answer before any work; the insert or update that
        records the bytes checks again in its transaction."""
        if quota is None or owner is None:
            return
        left = max(0, quota - await self.repo.used_bytes(owner))
        if length > left:
            self.observer.refused(caller, "quota", None)
            raise PayloadTooLarge(
                f"storage quota exceeded: {length} bytes asked, {left} bytes left in your quota"
            )

    async def _load_parts(self, principal: Principal, ids: Sequence[str]) -> list[UploadRecord]:
        limit = self.config.max_concat_parts
        if len(ids) > limit:
            raise BadRequest(
                f"Upload-Concat: {len(ids)} partial uploads named, at most {limit} are allowed"
            )
        if len(set(ids)) != len(ids):
            # Each part is stored once; naming it twice would multiply its bytes.
            raise BadRequest("Upload-Concat: a partial upload is named more than once")
        found = await self.repo.get_many(ids)
        parts = []
        for upload_id in ids:
            rec = found.get(upload_id)
            # Someone else's upload reads exactly like a missing one: no existence oracle.
            mine = rec is not None and (rec.owner == principal.user_id or principal.is_admin)
            if rec is not None and not mine:
                self.observer.refused(principal, "probe", upload_id)
            if rec is None or not mine or rec.is_gone or self._has_expired(rec):
                raise BadRequest(f"Upload-Concat: {upload_id} is not an upload of yours")
            if not rec.is_partial:
                raise BadRequest(f"Upload-Concat: {upload_id} is not a partial upload")
            parts.append(rec)
        return parts

    # --- reading state --------------------------------------------------------------------

    async def status(self, principal: Principal, upload_id: str) -> UploadStatus:
        """The state of an upload for HEAD. Takes the lock, breaking a stale writer; but a
        finished upload's state is final, and the read that checked who asks answers it
        (with a shared locker, the lock and its release are two round trips)."""
        before = await self._owner_before_lock(principal, upload_id)
        if (
            before is not None
            and before.state is UploadState.FINISHED
            and not self._has_expired(before)
        ):
            return await self._status(before)
        async with self.locker.lock(upload_id):
            rec = await self._get_live(principal, upload_id)
            if rec.state is UploadState.CONCATENATING and self._final_due(upload_id):
                # Its partials may all be finished (a concatenation that failed, or a crash
                # after the last partial finished), or one gone: done now, under its lock.
                try:
                    await self._complete_final(upload_id)
                except Exception:
                    self._final_failed(upload_id)
                    _log.warning("could not complete a final upload", upload_id=upload_id,
                                 exc_info=True)  # fmt: skip
                else:
                    self._final_retries.pop(upload_id, None)
                rec = await self._get_live(principal, upload_id)
            status = await self._status(rec)
            if (
                status.offset is not None
                and rec.state is UploadState.RECEIVING
                and rec.length is not None
                and status.offset >= rec.length
            ):
                # Every byte arrived but the process stopped before recording the finish.
                await self._finish(rec, status.offset)
                status = await self._status_of(upload_id)
            return status

    def _final_due(self, final_id: str) -> bool:
        retry = self._final_retries.get(final_id)
        return retry is None or self._clock() >= retry[0]

    def _final_failed(self, final_id: str) -> None:
        """Back off a final's next concatenation: 1 s after the first failure, doubling up to
        a minute. At most 10,000 finals are remembered (the oldest is forgotten first)."""
        failures = self._final_retries.pop(final_id, (None, 0))[1] + 1
        delay = min(_FINAL_RETRY_MAX_S, 2.0 ** (failures - 1))
        self._final_retries[final_id] = (self._clock() + dt.timedelta(seconds=delay), failures)
        if len(self._final_retries) > _FINAL_RETRIES_KEPT:
            del self._final_retries[next(iter(self._final_retries))]

    async def _owner_before_lock(self, principal: Principal, upload_id: str) -> UploadRecord | None:
        """Someone else's upload answers 404 before the lock is asked for: only its owner (or
        an administrator) can make a request on it let go. Returns the record read, if one
        was.

        A free in-process lock is taken without waking anyone, before the caller awaits
        anything else: the check under the lock is then enough, and the hot path reads the
        row once.
        """
        locker = self.locker
        if locker is self._local_locker and locker.is_locked(upload_id) is False:
            return None
        # Not its expiry: an upload whose request is still receiving a body is not inactive,
        # and once that request has let go (it records the bytes, and so the new expiry),
        # the check under the lock decides.
        return await self._get_live(principal, upload_id, expiry=False)

    async def _status_of(self, upload_id: str) -> UploadStatus:
        rec = await self.repo.get(upload_id)
        if rec is None:
            raise NotFound("no such upload")
        return await self._status(rec)

    async def _status(self, rec: UploadRecord) -> UploadStatus:
        parts: Sequence[str] = ()
        if rec.is_final:
            parts = await self.repo.parts_of(rec.id)
            if rec.length is None and rec.state is UploadState.CONCATENATING:
                # "The Upload-Length header MUST be included if the length of the final
                # resource can be calculated at the time of the request": once every partial
                # has declared its length (reported, not recorded: _final_fits records it).
                found = await self.repo.get_many(parts)
                lengths = [found[p].length if p in found else None for p in parts]
                if all(n is not None for n in lengths):
                    rec = dataclasses.replace(rec, length=sum(n or 0 for n in lengths))
        if rec.state is UploadState.RECEIVING:
            try:
                offset: int | None = await self.store.get_offset(rec.id)
            except UploadDataMissing:
                raise Gone("the upload's data is gone") from None
            except StorageError as exc:
                raise ServiceUnavailable(
                    f"storage is unavailable: {exc}", headers={"Retry-After": "5"}
                ) from None
        elif rec.state is UploadState.CONCATENATING:
            offset = None
        else:
            offset = rec.offset
        return UploadStatus(rec, offset, parts)

    async def _get_live(
        self, principal: Principal, upload_id: str, *, expiry: bool = True
    ) -> UploadRecord:
        """The upload ``principal`` may act on, if it is still alive (``expiry``: an upload
        whose expiry has passed is gone, unless it is a final one of whose partials is being
        written right now)."""
        rec = await self.repo.get(upload_id)
        if rec is not None and not principal.may_access(rec.owner):
            # Someone else's upload reads exactly like a missing one; a probe is reported.
            self.observer.refused(principal, "probe", upload_id)
            raise NotFound("no such upload")
        if rec is None:
            raise NotFound("no such upload")
        if rec.is_final and rec.state is UploadState.REJECTED:
            raise PayloadTooLarge(_FINAL_REFUSED)
        if rec.is_gone:
            raise Gone(f"the upload was {rec.state.value}")
        if expiry and self._has_expired(rec) and not await self._final_in_use(rec):
            raise Gone("the upload expired")
        return rec

    async def _final_in_use(self, rec: UploadRecord) -> bool:
        """Whether ``rec`` is a final waiting for a partial that a request is writing right
        now. A final's expiry moves with its partials' progress, recorded when a body ends:
        a partial sent in one body that lasts longer than the expiration is not inactive,
        and neither is the final waiting for it. The partials' locks are tried, never taken
        over: the writer goes on."""
        if not rec.is_final or rec.state is not UploadState.CONCATENATING:
            return False
        for part_id in await self.repo.parts_of(rec.id):
            try:
                async with self.locker.lock(part_id, take_over=False):
                    pass
            except LockTimeout:
                return True
        return False

    def _has_expired(self, rec: UploadRecord) -> bool:
        # A finished partial upload expires too: it counts against the quota while it exists.
        return (
            (
                rec.state in (UploadState.RECEIVING, UploadState.CONCATENATING)
                or (rec.state is UploadState.FINISHED and rec.is_partial)
            )
            and rec.expires_at is not None
            and rec.expires_at <= self._clock()
        )

    def _expiry(self, now: dt.datetime) -> dt.datetime | None:
        if self.config.expiration <= 0:
            return None
        return now + dt.timedelta(seconds=self.config.expiration)

    # --- receiving a body -------------------------------------------------------------------

    async def receive(
        self,
        caller: Caller,
        upload_id: str,
        *,
        offset: int,
        body: ByteStream,
        content_length: int | None,
        new_length: int | None = None,
        checksum: Checksum | None = None,
        complete_at_end: bool = False,
        overrun_cancels: bool = False,
        wrap: Callable[[BodyReader], ChunkSource] | None = None,
        created: UploadRecord | None = None,
    ) -> UploadStatus:
        """Append a request body at ``offset`` (every entry path): the byte budget, the cap
        on the caller's bodies at once (``bodies``: 429 before any byte is read), the
        tracking that lets a newer request or a shutdown stop the body, metrics.

        ``overrun_cancels``: a body that goes on past the upload's length (no Content-Length
        told so upfront) ends the upload (the IETF draft: the resource is invalid from then
        on) instead of finishing it with the bytes that fitted (tus).

        ``wrap`` lets an adapter see the bytes on their way (the IETF draft's digests).
        ``created``: the record :meth:`create` just returned in this request (creation with
        upload), used instead of reading the row back: no client knows the upload's URL yet,
        so nothing can have changed it.
        Raises :class:`UploadInterrupted` (released to a newer request) or
        :class:`UploadSuspended` (shutdown) once what arrived is stored. A cancellation
        while the body is read (aiohttp's ``handler_cancellation`` when the client goes
        away) stores what arrived too, then goes on as a cancellation.
        """
        # A body without a declared length needs a budget out of debt to start, then each
        # of its blocks is granted before it is read (Gateway.pace: while the budget is at
        # least half full), so bodies sent side by side share one budget rather than each
        # starting on it; what was granted and did not arrive is given back at the end.
        await caller.admission.limit(
            "patch_bytes",
            cost=content_length or 0,
            require=None if content_length is not None else 1,
        )
        reader = BodyReader(
            body,
            self.config.write_buffer_size,
            idle_timeout=self.config.body_idle_timeout,
            meter=None
            if content_length is not None
            else lambda n: caller.admission.pace("patch_bytes", cost=n),
        )
        self._receiving.add(reader)
        if self._released:
            reader.stop(Interruption.SHUTDOWN)
        try:
            with self.observer.receiving():
                status = await self.append(
                    caller.principal,
                    upload_id,
                    offset=offset,
                    source=wrap(reader) if wrap is not None else reader,
                    # Taken under the upload's lock (see append): a request waiting for the
                    # lock holds no place, and a stalled request the lock breaks for its
                    # client's new one has given its place back before that one asks.
                    place=caller.admission.slot("bodies"),
                    on_release=reader.request_release,
                    content_length=content_length,
                    new_length=new_length,
                    checksum=checksum,
                    interrupted=lambda: reader.interruption is not Interruption.NONE,
                    complete_at_end=complete_at_end,
                    overrun_cancels=overrun_cancels,
                    created=created,
                )
        except UploadInterrupted as exc:
            # A chunk with Upload-Checksum cut short is discarded whole (_write): answered as
            # a body stopped the same way (a shutdown: 503, Retry-After), from its offset.
            stopped = (
                stopped_error(reader.interruption, exc.progress, discarded=True)
                if exc.progress is not None and not reader.cancelled
                else None
            )
            if stopped is None:
                raise
            raise stopped from None
        finally:
            self._receiving.discard(reader)
            if content_length is None:
                # (The last block's bytes, and any the store did not take.)
                await caller.admission.charge("patch_bytes", cost=reader.received - reader.metered)
        self.observer.stored(offset, status.offset, finished=status.finished)
        if reader.cancelled:
            raise asyncio.CancelledError
        raise_if_stopped(reader.interruption, status)
        return status

    async def upload_whole(
        self,
        caller: Caller,
        *,
        metadata: Mapping[str, bytes | None],
        body: ByteStream,
        content_length: int | None = None,
        on_created: Callable[[UploadStatus], None] | None = None,
        keep_unfinished: bool = False,
    ) -> UploadStatus:
        """A plain (non-resumable) upload: create, receive the whole body, finish.

        An upload that does not finish (the body broke or was refused) is dropped at once:
        no client could resume it, and its bytes or declared length would count against the
        owner's quota until it expired. With ``keep_unfinished`` (its caller tells the client
        its id), one that was stopped (a newer request, a shutdown, a stalled body) is kept
        for the client to resume with tus.
        """
        status = await self.create(caller, length=content_length, metadata=metadata)
        if on_created is not None:
            on_created(status)
        upload_id = status.record.id
        try:
            if not status.finished:
                status = await self.receive(
                    caller,
                    upload_id,
                    offset=0,
                    body=body,
                    content_length=content_length,
                    complete_at_end=True,
                    created=status.record,
                )
            if not status.finished:
                raise BadRequest("the file ended early")
        except BaseException as exc:
            if keep_unfinished and isinstance(
                exc, UploadInterrupted | UploadSuspended | RequestTimeout
            ):
                raise
            try:
                await self.discard(upload_id, unfinished_only=True)
            except Exception:  # never mask the error that ended the body
                _log.warning("unfinished upload not dropped", upload_id=upload_id,
                             exc_info=True)  # fmt: skip
            raise
        return status

    def release_all(self) -> None:
        """At shutdown: every body being received stops here; what arrived is kept. A body
        whose request gets here later (it was waiting for its lock) stops at once."""
        self._released = True
        for reader in list(self._receiving):
            reader.stop(Interruption.SHUTDOWN)

    # --- appending ------------------------------------------------------------------------

    async def append(
        self,
        principal: Principal,
        upload_id: str,
        *,
        offset: int,
        source: ChunkSource,
        place: contextlib.AbstractAsyncContextManager[None] = _NO_PLACE,
        on_release: Callable[[], None] | None = None,
        content_length: int | None = None,
        new_length: int | None = None,
        checksum: Checksum | None = None,
        interrupted: Callable[[], bool] = lambda: False,
        complete_at_end: bool = False,
        overrun_cancels: bool = False,
        created: UploadRecord | None = None,
    ) -> UploadStatus:
        """Append ``source`` at ``offset`` under the upload's lock; returns the new state.

        The bytes go through :class:`~tusserver.uploads.guard.BodyGuard` (length, quota and
        store limits, the early type check, the checksum) on their way to the store.
        ``place``: held from when the lock is taken until just before it is let go (the
        caller's cap on bodies at once, :meth:`receive`); refused (429) before anything is
        read. Entry paths call :meth:`receive`.
        """
        if created is not None and created.id != upload_id:
            raise ValueError("created is the record of another upload")
        if created is None:
            await self._owner_before_lock(principal, upload_id)
        async with self.locker.lock(upload_id, on_release=on_release), place:
            rec = created or await self._get_live(principal, upload_id)
            if rec.is_final:
                raise Forbidden("a final concatenated upload cannot be patched")
            # A record created by this request holds nothing yet: the store need not be asked.
            status = UploadStatus(rec, 0) if created is not None else await self._status(rec)
            current = status.offset
            assert current is not None
            if offset != current:
                raise Conflict(
                    f"Upload-Offset {offset} does not match the upload's offset {current}",
                    headers={"Upload-Offset": str(current)},
                )
            declared_here = new_length is not None and rec.length is None
            if new_length is not None:
                if rec.length is None:
                    quota = await self._quota_of(rec.owner, principal)
                    await self._check_quota(principal, rec.owner, new_length - current, quota)
                rec = await self._declare_length(rec, new_length, current, principal)
            budget, reserved = await self._append_budget(principal, rec, current, content_length)
            written = 0
            settled = not reserved

            async def settle() -> None:
                # What was reserved for this body and did not arrive is given back, once.
                nonlocal settled
                if not settled:
                    settled = True
                    await self.repo.settle_offset(rec.id, current + written)

            try:
                if content_length is not None and budget is not None and content_length > budget:
                    if declared_here:
                        # Nothing of the refused request is taken, its Upload-Length included.
                        await self.repo.update(rec.id, length=None)
                    elif rec.length is None:
                        await settle()
                        reason = await self._size_reason(principal, rec, current)
                        self.observer.refused(principal, reason, rec.id)
                    raise PayloadTooLarge(
                        f"the body of {content_length} bytes goes past the upload's "
                        f"{'length' if rec.length is not None else 'maximum size'}"
                        f"{' or your storage quota' if reserved is not None else ''}"
                    )
                if rec.state is UploadState.FINISHED:
                    await refuse_more(source, content_length)
                    return status
                digests = self.digests
                content = (
                    digests.take_for_append(rec.id, current, rec.length)
                    if digests is not None
                    else None
                )
                guard = self._guard(rec, current, source, budget, checksum, content)
                try:
                    written = await self._write(rec, current, guard, checksum, interrupted)
                except (ChecksumMismatch, UploadInterrupted, PayloadTooLarge):
                    if guard.exceeded and overrun_cancels and rec.length is not None:
                        # A checked chunk that went past the length (discarded whole).
                        await self._cancel_overrun(rec, current)
                    if declared_here and checksum is not None:
                        # A checked chunk that failed was discarded: "the upload and its
                        # offset MUST NOT be updated", its length declared with it included.
                        await self.repo.update(rec.id, length=None)
                    raise
                if digests is not None and content is not None and guard.total == written:
                    # The store kept every byte hashed: the state goes on (else it is dropped).
                    digests.put(rec.id, current + written, content)
                try:
                    final = await self._record_append(
                        rec,
                        status,
                        current + written,
                        written=written,
                        guard=guard,
                        complete_at_end=complete_at_end and not interrupted(),
                        overrun_cancels=overrun_cancels,
                        caller=principal,
                    )
                except PayloadTooLarge as exc:
                    if rec.length is None:  # a deferred length ran into the quota or max size
                        # Settled first: the reason is judged on what the upload really holds.
                        await settle()
                        reason = await self._size_reason(principal, rec, current)
                        self.observer.refused(principal, reason, rec.id)
                        if reason == "quota":
                            raise PayloadTooLarge(
                                "storage quota exceeded: the body goes past what your quota leaves",
                                headers=exc.headers,
                            ) from None
                    raise
            finally:
                try:
                    await settle()
                except Exception:  # never mask the error that ended the body
                    _log.warning("reservation_not_settled", upload_id=rec.id, exc_info=True)
        if written:
            self.hooks.fire("post_receive", self.hooks.post_receive, final.record)
        return final

    async def _size_reason(self, principal: Principal, rec: UploadRecord, current: int) -> str:
        """Which limit stopped a deferred-length upload: ``quota`` or ``max_size``."""
        if self.quota_limit is None:
            return "max_size"
        left = await self.quota_remaining(rec.owner, principal)
        size_left = self._budget(rec, current)
        return (
            "quota" if left is not None and (size_left is None or left < size_left) else "max_size"
        )

    async def _append_budget(
        self, principal: Principal, rec: UploadRecord, current: int, content_length: int | None
    ) -> tuple[int | None, bool | None]:
        """How many bytes this append may store: length or maximum size, store, quota; and
        whether a quota reservation was made (None: no quota applies), which the caller
        settles once the body is in."""
        budget = self._budget(rec, current)
        if self._part_limited is not None and rec.state is UploadState.RECEIVING:
            # The store's own limits (S3 parts) are known before any byte is stored.
            left = await self._part_limited.append_limit(rec.id, current)
            budget = left if budget is None else min(budget, left)
        reserved = None
        if rec.length is None and rec.state is UploadState.RECEIVING:
            # Deferred length: the quota is enforced as the bytes arrive, and what this body
            # may bring is counted before it is read, so concurrent bodies cannot go past
            # the quota together.
            quota = await self._quota_of(rec.owner, principal)
            if quota is not None and rec.owner is not None:
                exact = content_length is not None
                want = content_length if exact else budget
                left, reserved = await self.repo.reserve_body(
                    rec.id, rec.owner, quota=quota, offset=current, want=want, exact=exact
                )
                budget = left if budget is None else min(budget, left)
        return budget, reserved

    def _guard(
        self,
        rec: UploadRecord,
        current: int,
        source: ChunkSource,
        budget: int | None,
        checksum: Checksum | None,
        content: Any | None = None,
    ) -> BodyGuard:
        first_check = None
        if current == 0 and self.first_bytes_check is not None:
            check = self.first_bytes_check

            async def first_check(head: bytes) -> None:
                await check(rec, head)

        hasher = hashlib.new(checksum.algorithm) if checksum else None
        return BodyGuard(source, budget, hasher, first_check, content)

    async def _write(
        self,
        rec: UploadRecord,
        current: int,
        guard: BodyGuard,
        checksum: Checksum | None,
        interrupted: Callable[[], bool],
    ) -> int:
        """Hand the guarded body to the store; returns the bytes it kept."""
        verify = None
        if checksum is not None:

            def verify() -> None:
                if interrupted():
                    # (receive() tells why, from reader.interruption)
                    raise UploadInterrupted(
                        "the body ended early; the chunk (Upload-Checksum) was discarded",
                        headers={"Upload-Offset": str(current)},
                        progress=Progress(current, rec.length, False),
                    )
                if guard.exceeded:
                    raise PayloadTooLarge("the body goes past the upload's length")
                if guard.hasher is None or guard.hasher.digest() != checksum.digest:
                    raise ChecksumMismatch("the chunk does not match Upload-Checksum")

        try:
            return await self.store.write(
                rec.id, current, guard, verify=verify, fsync=self.config.fsync
            )
        except UploadDataMissing:
            raise Gone("the upload's data is gone") from None
        except StorageLimitExceeded as exc:
            raise PayloadTooLarge(str(exc)) from None
        except StorageFull:
            # 507: the bytes stored before the disk filled stay; HEAD says how many.
            raise
        except StorageError as exc:
            # Bytes the store did keep show up in HEAD; the client resumes from there.
            raise ServiceUnavailable(
                f"storage is unavailable ({exc}); resume from HEAD's Upload-Offset",
                headers={"Retry-After": "5"},
            ) from None
        except UnsupportedMediaType:
            # Refused at its first bytes: nothing more of this upload is accepted.
            await self._reject(rec)
            raise

    async def _drop_bytes(self, upload_id: str) -> None:
        """The bytes of an upload that is over (its row says so already). A store that
        cannot delete them now (S3 unreachable) fails no request: the tombstone purge deletes
        them before the row goes (:meth:`purge_tombstones`)."""
        try:
            await self.store.delete(upload_id)
        except (StorageError, OSError) as exc:
            _log.warning("upload bytes not deleted yet", upload_id=upload_id, error=str(exc))

    async def _reject(self, rec: UploadRecord) -> None:
        """The upload ends here, refused: its requests answer 410 from now on, its bytes go."""
        await self.repo.update(rec.id, state=UploadState.REJECTED, updated_at=self._clock())
        await self._drop_bytes(rec.id)

    async def _record_append(
        self,
        rec: UploadRecord,
        status: UploadStatus,
        new_offset: int,
        *,
        written: int,
        guard: BodyGuard,
        complete_at_end: bool,
        overrun_cancels: bool = False,
        caller: Principal | None = None,
    ) -> UploadStatus:
        """Make the new offset durable (and finish the upload when it is whole)."""
        if guard.exceeded and overrun_cancels and rec.length is not None:
            await self._cancel_overrun(rec, new_offset)
        if complete_at_end and rec.length is None and not guard.exceeded:
            # A plain (non-resumable) upload: its length is what arrived.
            rec = await self._declare_length(rec, new_offset, new_offset, caller)
        if rec.length is not None and new_offset >= rec.length and not status.finished:
            # One write records both the progress and the finish.
            final = UploadStatus(await self._finish(rec, new_offset), new_offset, status.parts)
        elif written:
            final = UploadStatus(
                await self._record_progress(rec, new_offset), new_offset, status.parts
            )
        else:
            final = status
        if guard.exceeded:
            raise PayloadTooLarge(
                "the body goes past the upload's "
                f"{'length' if rec.length is not None else 'maximum size'}",
                headers={"Upload-Offset": str(new_offset)},
            )
        return final

    async def _cancel_overrun(self, rec: UploadRecord, offset: int) -> NoReturn:
        """A body went past the upload's length with ``overrun_cancels``: the bytes that
        fitted are not the upload the client meant. Nothing of it is finished, and nothing
        more is taken."""
        await self._reject(rec)
        raise PayloadTooLarge(
            "the body goes past the upload's length; the upload was cancelled",
            headers={"Upload-Offset": str(offset)},
        )

    async def _declare_length(
        self, rec: UploadRecord, length: int, offset: int, caller: Principal | None = None
    ) -> UploadRecord:
        if rec.length is not None:
            if rec.length != length:
                raise BadRequest("Upload-Length cannot change once set")
            return rec
        max_size = self.max_size
        if max_size is not None and length > max_size:
            raise PayloadTooLarge(f"Upload-Length {length} exceeds the maximum of {max_size} bytes")
        if length < offset:
            raise BadRequest(f"Upload-Length {length} is smaller than the offset {offset}")
        quota = await self._quota_of(rec.owner, caller)
        if quota is None or rec.owner is None:
            await self.repo.update(rec.id, length=length)
        else:
            try:
                await self.repo.update_within_quota(
                    rec.id, rec.owner, quota=quota, size=length, length=length
                )
            except QuotaExceeded as exc:
                raise PayloadTooLarge(str(exc)) from None
        updated = await self.repo.get(rec.id)
        assert updated is not None
        return updated

    def _budget(self, rec: UploadRecord, offset: int) -> int | None:
        if rec.length is not None:
            return rec.length - offset
        max_size = self.max_size
        return None if max_size is None else max_size - offset

    async def _record_progress(self, rec: UploadRecord, offset: int) -> UploadRecord:
        now = self._clock()
        expires = self._expiry(now)
        await self.repo.update(rec.id, offset=offset, updated_at=now, expires_at=expires)
        if rec.is_partial and expires is not None:
            # A final waiting on this partial is as active as the partial: its expiry (of
            # inactivity) moves with the partial's, a client cannot append to it.
            for final_id in await self.repo.finals_waiting_on(rec.id):
                await self.repo.update(final_id, expires_at=expires)
        return dataclasses.replace(rec, offset=offset, updated_at=now, expires_at=expires)

    async def _finish(self, rec: UploadRecord, offset: int) -> UploadRecord:
        """Mark the upload finished (after the store made it whole); returns the new record."""
        await self.hooks.run_pre_finish(rec)
        if self._finisher is not None:
            try:
                await self._finisher.finish(rec.id)
            except StorageFull:
                raise  # 507; the upload completes on a request once space is freed
            except StorageError as exc:
                raise ServiceUnavailable(
                    f"storage is unavailable ({exc}); the upload completes on the next request",
                    headers={"Retry-After": "5"},
                ) from None
        now = self._clock()
        # A finished partial upload still expires (used by a final or not): its bytes count
        # against the quota until then.
        expires = self._expiry(now) if rec.is_partial else None
        changes: dict[str, Any] = {
            "offset": offset,
            "length": offset,
            "expires_at": expires,
            "updated_at": now,
        }
        done = dataclasses.replace(rec, state=UploadState.FINISHED, **changes)
        # (The row's column values: the DBAPI takes no enum.)
        finish = {**changes, "state": UploadState.FINISHED.value}
        if not done.is_partial and self.on_finished is not None:
            # The finish and the file's row in one transaction (the pipeline's intake).
            file_id = await self.on_finished(done, finish=finish)
            if isinstance(file_id, str):
                done = dataclasses.replace(done, file_id=file_id)
        else:
            await self.repo.update(rec.id, **finish)
        _log.info("upload finished", upload_id=rec.id, length=offset)
        self.hooks.fire("post_finish", self.hooks.post_finish, done)
        if rec.is_partial:
            for final_id in await self.repo.finals_waiting_on(rec.id):
                try:
                    await self._try_complete_final(final_id)
                except Exception:
                    # The partial is stored and finished whatever happens to the final: its
                    # completion is tried again on the final's next HEAD (status()).
                    _log.warning("could not complete a final upload", upload_id=final_id,
                                 exc_info=True)  # fmt: skip
        return done

    # --- concatenation --------------------------------------------------------------------

    async def _try_complete_final(self, final_id: str) -> None:
        """Concatenate a final upload once all its partials are finished (idempotent)."""
        async with self.locker.lock(final_id):
            await self._complete_final(final_id)

    async def _complete_final(self, final_id: str) -> None:
        """:meth:`_try_complete_final` under the final's lock (held by the caller). A final
        that lost a partial (terminated, expired, gone) can never be whole: it ends in the
        partial's state, and answers 410 from then on."""
        rec = await self.repo.get(final_id)
        if rec is None or rec.state is not UploadState.CONCATENATING:
            self._final_retries.pop(final_id, None)  # done (or ended) meanwhile
            return
        part_ids = await self.repo.parts_of(final_id)
        parts = await self.repo.get_many(part_ids)
        lost = [parts.get(p) for p in part_ids if parts.get(p) is None or parts[p].is_gone]
        if lost:
            state = UploadState.TERMINATED
            if any(p is None or p.state is UploadState.EXPIRED for p in lost):
                state = UploadState.EXPIRED
            _log.warning("final upload lost a partial", upload_id=final_id, state=state.value)
            await self.repo.update(final_id, state=state, updated_at=self._clock())
            await self._drop_bytes(final_id)
            return
        if any(parts[p].state is not UploadState.FINISHED for p in part_ids):
            return
        # The length is known now (deferred lengths included): the maximum size and the
        # quota are checked, and the length recorded, before any byte is copied.
        length = sum(parts[p].length or 0 for p in part_ids)
        if not await self._final_fits(rec, length):
            await self.repo.update(final_id, state=UploadState.REJECTED, updated_at=self._clock())
            return
        assert self._concatenater is not None
        length = await self._concatenater.concatenate(final_id, part_ids, fsync=self.config.fsync)
        await self.repo.update(final_id, length=length, state=UploadState.RECEIVING)
        rec = await self.repo.get(final_id)
        assert rec is not None
        await self._finish(rec, length)

    async def _final_fits(self, rec: UploadRecord, length: int) -> bool:
        """Check a final upload's length against the maximum size and its owner's quota, and
        record it (counted from now on); False if it does not fit."""
        max_size = self.max_size
        if max_size is not None and length > max_size:
            _log.warning("final upload refused", upload_id=rec.id, length=length, max_size=max_size)
            return False
        quota = await self._quota_of(rec.owner)
        if quota is None or rec.owner is None:
            if rec.length is None:
                await self.repo.update(rec.id, length=length)
            return True
        try:
            await self.repo.update_within_quota(
                rec.id, rec.owner, quota=quota, size=length, length=length
            )
        except QuotaExceeded as exc:
            _log.warning("final upload refused", upload_id=rec.id, reason=str(exc))
            return False
        return True

    # --- termination, reading, expiry -------------------------------------------------------

    async def terminate(self, principal: Principal, upload_id: str) -> None:
        await self._owner_before_lock(principal, upload_id)
        async with self.locker.lock(upload_id):
            rec = await self._get_live(principal, upload_id)
            await self.repo.update(
                upload_id, state=UploadState.TERMINATED, updated_at=self._clock()
            )
            if rec.file_status not in ("received", "validating"):
                # (Bytes the pipeline is checking are its own: it commits them, or keeps them
                # in quarantine; deleting them under it failed the file, counted for good.)
                await self._drop_bytes(upload_id)
            if rec.file_status == "rejected" and rec.file_id is not None:
                # Its bytes were the quarantined copy: they are gone, and no longer counted.
                await self.repo.end_quarantine(rec.file_id)
            if rec.is_partial:
                for final_id in await self.repo.finals_waiting_on(upload_id):
                    try:
                        await self._try_complete_final(final_id)  # (it ends: a partial is gone)
                    except Exception:
                        # The partial is terminated whatever happens to the final, which
                        # ends on its next HEAD (status()).
                        _log.warning("could not end a final upload", upload_id=final_id,
                                     exc_info=True)  # fmt: skip
        _log.info("upload terminated", upload_id=upload_id)
        self.hooks.fire("post_terminate", self.hooks.post_terminate, rec)

    async def discard(self, upload_id: str, *, unfinished_only: bool = False) -> None:
        """The file this upload became was deleted: the upload is gone too (410 from now).
        ``unfinished_only``: only if it is still receiving (a plain upload that broke)."""
        async with self.locker.lock(upload_id):
            if unfinished_only:
                rec = await self.repo.get(upload_id)
                if rec is None or rec.state is not UploadState.RECEIVING:
                    return
            await self.repo.update(
                upload_id, state=UploadState.TERMINATED, updated_at=self._clock()
            )
            await self._drop_bytes(upload_id)

    async def finished_upload(self, principal: Principal, upload_id: str) -> UploadRecord:
        rec = await self._get_live(principal, upload_id)
        if rec.state is not UploadState.FINISHED:
            raise Conflict("the upload is not finished yet")
        return rec

    def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self.store.read(upload_id, start, length)

    async def expire_due(self, limit: int = 500) -> int:
        """Expire unfinished uploads whose time has passed; returns how many."""
        count = 0
        for upload_id in await self.repo.expired_ids(self._clock(), limit):
            try:
                # Never take an upload over: one being written is not inactive.
                async with self.locker.lock(upload_id, take_over=False):
                    rec = await self.repo.get(upload_id)
                    if rec is None or not self._has_expired(rec) or await self._final_in_use(rec):
                        continue
                    await self.repo.update(
                        upload_id, state=UploadState.EXPIRED, updated_at=self._clock()
                    )
                    await self._drop_bytes(upload_id)
                    count += 1
            except LockTimeout:
                continue  # in use right now: not inactive
            except Exception:
                _log.exception("could not expire upload", upload_id=upload_id)
        if count:
            _log.info("expired uploads", count=count)
        return count

    async def purge_tombstones(self, older_than: dt.timedelta, limit: int = 500) -> int:
        """Forget uploads that ended long ago; their bytes go first (again: a delete that
        failed when the upload ended is done here, and a row whose bytes cannot be deleted
        now stays for the next purge). Every such upload is looked at, ``limit`` at a time:
        rows whose bytes cannot be deleted never hold up the ones after them."""
        cutoff = self._clock() - older_than
        limit = max(1, limit)
        purged = 0
        after: tuple[dt.datetime, str] | None = None
        while True:
            page = await self.repo.tombstones_before(cutoff, limit, after=after)
            for _, upload_id in page:
                try:
                    await self.store.delete(upload_id)
                except (StorageError, OSError) as exc:
                    _log.warning("upload bytes not deleted yet", upload_id=upload_id,
                                 error=str(exc))  # fmt: skip
                    continue
                await self.repo.delete(upload_id)
                purged += 1
            if len(page) < limit:
                return purged
            after = page[-1]
