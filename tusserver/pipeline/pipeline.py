"""The pipeline: a finished upload becomes a validated file in the object store.

Each step is durable and idempotent, its state in the ``files`` row:

    received --claim--> validating --accept--> (key, sha256 recorded) -> object put
                                                -> committed -> chunk copy removed
                                   --reject--> rejected (bytes kept in quarantine, never served)
                                   --retry---> validating, next_attempt_at in the future
                                   --too many attempts--> failed

A crash anywhere resumes from the row: the object key and sha256 are recorded before the
object is written, so a retry that finds the chunk copy gone but the object present (with the
same sha256 in its metadata) finishes the commit instead of losing or duplicating the file.
Workers on several instances share the work through a lease column (a conditional UPDATE),
so each file is processed by one worker at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from storage_backends.base import (
    ChunkStore,
    LocalFileAccess,
    ObjectStore,
    ServerSideCopier,
    StorageError,
    UploadDataMissing,
)
from storage_backends.encryption import IntegrityError

from ..catalog.analytics import Event, EventRecorder
from ..catalog.files import FileRecord, FileRepository, FileStatus, Inspected, NewFile
from ..catalog.uploads import UploadRecord, UploadRepository
from ..errors import UnsupportedMediaType
from ..events import Hooks
from ..hashing import update_all
from ..metrics import Metrics
from ..settings import PipelineSettings
from .holders import Holder
from .keys import object_key
from .media import (
    THUMBNAIL_SIZES,
    MediaOutcome,
    MediaProcessor,
    delete_thumbnails,
    store_thumbnails,
)
from .validators import (
    SNIFF_BYTES,
    Candidate,
    PolicyValidator,
    TypeSniffer,
    Validator,
    VerdictKind,
    category_of,
)
from .webhooks import WebhookSender

if TYPE_CHECKING:
    from ..uploads.digests import RunningDigests

__all__ = ["Pipeline", "file_name_of", "text_metadata"]

_log = structlog.get_logger("tusserver.pipeline")
#: Heads shorter than this say little about the type; unless the file is that small, the
#: early check waits for a longer first chunk (the final check always runs).
_MIN_SNIFF = 512


def text_metadata(meta: Any) -> dict[str, str]:
    """tus metadata (bytes values) as display text: bytes that are not UTF-8, and NUL
    (which no PostgreSQL text takes: the file row could never be written), become U+FFFD."""
    return {
        k: "" if v is None else v.decode("utf-8", "replace").replace("\x00", "\ufffd")
        for k, v in meta.items()
    }


def file_name_of(meta: dict[str, str], fallback: str) -> str:
    for key in ("filename", "name"):
        if meta.get(key):
            return meta[key][:255]
    return fallback


def _declared_type(meta: dict[str, str]) -> str | None:
    for key in ("filetype", "type", "contentType", "content_type"):
        value = meta.get(key, "").strip().lower()
        if value and "/" in value and len(value) < 128:
            return value
    return None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _elapsed() -> float:
    """Seconds on a clock that goes on while the machine is suspended (CLOCK_BOOTTIME where
    there is one; ``time.monotonic`` stops then), for how long a lease is trusted: the
    catalog's lease times are wall-clock times, which go on too."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


class LeaseLost(Exception):
    """The file is not this worker's any more: it stalled past its lease and another worker
    took the file (or already wrote its outcome). Nothing more is written for it here."""


class Pipeline:
    def __init__(
        self,
        *,
        config: PipelineSettings,
        key_template: str,
        chunks: ChunkStore,
        files: FileRepository,
        uploads: UploadRepository,
        objects: ObjectStore,
        policy: PolicyValidator,
        validators: Sequence[Validator],
        hooks: Hooks,
        webhooks: WebhookSender | None = None,
        events: EventRecorder | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        media: MediaProcessor | None = None,
    ) -> None:
        self._media = media
        self._metrics = metrics
        #: Files claimed by this process: file id -> until when (:func:`_elapsed`) the
        #: lease is trusted without asking the catalog (half the lease from the claim or
        #: the last renewal), before a step that cannot be taken back (see _fence).
        self._claimed: dict[str, float] = {}
        #: Files claimed by this process and not started, waiting in the queue: rows
        #: inserted claimed at intake, and the rest of a worker's batch claim. (A subset of
        #: _claimed: their leases are renewed, and handed back at stop.)
        self._held: set[str] = set()
        #: Workers waiting for the queue (files are claimed at intake only for them).
        self._idle = 0
        self._events = events
        self._config = config
        #: ``object_key_template`` of the storage settings: where a committed file goes.
        self._key_template = key_template
        self._chunks = chunks
        # The chunk store's optional abilities, known once (an isinstance check against a
        # runtime-checkable Protocol costs ~10 us).
        self._local_chunks = chunks if isinstance(chunks, LocalFileAccess) else None
        self._copier = chunks if isinstance(chunks, ServerSideCopier) else None
        self._files = files
        self._uploads = uploads
        self._objects = objects
        self._policy = policy
        self._validators = list(validators)
        self._hooks = hooks
        self._webhooks = webhooks
        self._clock = clock
        #: sha256 states of uploads hashed as they arrived (tusserver.uploads.digests):
        #: a whole one spares the pass over the file. None: every file is read.
        self.digests: RunningDigests | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._fresh: dict[str, FileRecord] = {}
        #: upload id -> (length, sha256, type) of the head sniffed at its first PATCH.
        self._sniffed: OrderedDict[str, tuple[int, str, str]] = OrderedDict()
        self._sniffer = TypeSniffer()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        #: Told of each file refused, where the pipeline decides it: (owner, file or upload
        #: id, category from Verdict.category). The early type check reports uploads.
        self.on_rejected: Callable[[str | None, str, str], None] | None = None
        #: An owner's storage quota in bytes (None: none), where quotas apply: thumbnails
        #: are stored only while the owner is within it.
        self.quota_limit: Callable[[str | None], Awaitable[int | None]] | None = None
        #: Told of stored bytes that failed an integrity check when read: (file, which).
        self.on_integrity_error: Callable[[FileRecord, str], None] | None = None
        #: How long a claim holds a file; a live worker renews it every third of that.
        self.lease = dt.timedelta(seconds=config.pipeline_lease)
        #: Named in every claim, so a successor on this host can take back what it held.
        self.holder = Holder.of_this_process()
        #: False on an ``api`` instance: files are only recorded here, for the workers of
        #: other processes to claim from the catalog (nothing is queued in this process).
        self.processes_here = True

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    @property
    def media(self) -> MediaProcessor | None:
        return self._media

    # --- intake -----------------------------------------------------------------------------

    async def take_upload(
        self,
        rec: UploadRecord,
        *,
        protocol: str = "tus",
        finish: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the file row for a finished upload (idempotent) and wake a worker.
        ``finish``: the upload row's finishing columns, written in the same transaction
        (see FileRepository.create_for_upload)."""
        meta = text_metadata(rec.metadata)
        file_id = secrets.token_hex(16)
        name = file_name_of(meta, fallback=file_id)
        declared = _declared_type(meta)
        now = self._clock()
        new = NewFile(
            id=file_id,
            owner=rec.owner,
            name=name,
            size=rec.length or 0,
            declared_type=declared,
            metadata=meta,
            upload_id=rec.id,
            protocol=protocol,
            client=None,
            started_at=rec.created_at,
            finished_at=now,
            inspected=self._inspected_at_intake(rec, file_id, name, declared, now),
        )
        # A worker of this process is idle and takes the file next: it is inserted claimed
        # (the claim's own statement and transaction spared). Not when every worker is busy:
        # the file would wait here, held from other instances' workers (and, after a crash
        # elsewhere than on this host, for a whole lease).
        since = _elapsed()
        claim = (
            (now + self.lease, str(self.holder))
            if self.processes_here and not self._stopping and self._idle > self._queue.qsize()
            else None
        )
        if claim is not None:
            # Known before the insert: if this caller is cancelled while the row commits,
            # the file still has its lease renewed, is handed back at stop, and is queued.
            self._claimed[file_id] = self._trusted_until(since)
            self._held.add(file_id)
        try:
            created = await self._files.create_for_upload(new, now, claim=claim, finish=finish)
        except BaseException:
            if claim is not None:
                self._enqueue(file_id)  # (a worker finds out whether its row exists)
            raise
        if claim is not None and (created != file_id or self._stopping):
            self._claimed.pop(file_id, None)
            self._held.discard(file_id)
            if created == file_id:  # stopped meanwhile: handed back, as stop() does
                await self._files.update(file_id, lease_until=None)
        if created == file_id and self.processes_here:
            # The worker starts from this record instead of reading the row back.
            facts: dict[str, Any] = {
                "detected_type": None,
                "category": None,
                "type_mismatch": False,
                "sha256": None,
                "store": None,
                "storage_key": None,
            }
            if new.inspected is not None:
                facts.update(new.inspected.columns())
            self._fresh[file_id] = FileRecord(
                id=file_id,
                owner=new.owner,
                name=new.name,
                folder="/",
                size=new.size,
                declared_type=new.declared_type,
                status=FileStatus.VALIDATING if claim is not None else FileStatus.RECEIVED,
                reason=None,
                metadata=meta,
                tags=(),
                attempts=1 if claim is not None else 0,
                created_at=now,
                updated_at=now,
                committed_at=None,
                upload_id=rec.id,
                **facts,
            )
        if self.processes_here:
            self._enqueue(created)
        if self._events is not None and created == file_id:
            self._events.record(
                Event(
                    "upload.finished",
                    at=new.finished_at,
                    owner=rec.owner,
                    file_id=created,
                    upload_id=rec.id,
                    bytes=new.size,
                    duration_ms=int((new.finished_at - rec.created_at).total_seconds() * 1000),
                )
            )
        return created

    def _inspected_at_intake(
        self, rec: UploadRecord, file_id: str, name: str, declared: str | None, now: dt.datetime
    ) -> Inspected | None:
        """The inspection's facts as the upload finishes, when the first body's type check
        saw a whole file (its type, and the sha256 of the bytes it typed). The file row is
        inserted with them and the key they make, so they are on record before the object
        exists without a statement of their own. The worker reads the file anyway (its
        first bytes are all of it): only if their sha256 is the one recorded does it rely on
        them; otherwise it types and records the file as stored (a resumed upload whose
        later bytes differ from those typed)."""
        memo = self._sniffed.get(rec.id)
        if not self.processes_here or memo is None or memo[0] != (rec.length or 0):
            return None
        del self._sniffed[rec.id]
        sha256 = memo[1]
        detected = memo[2]
        category = category_of(detected)
        return Inspected(
            sha256=sha256,
            detected_type=detected,
            category=category,
            type_mismatch=declared is not None and declared != detected,
            storage_key=self._key(rec.owner, file_id, name, category, now),
            store=self._objects.kind,
        )

    def _key(
        self, owner: str | None, file_id: str, name: str, category: str, when: dt.datetime
    ) -> str:
        """Where a file's object goes (``object_key_template``); ``when``: its row's
        creation."""
        return object_key(
            self._key_template,
            owner=owner,
            file_id=file_id,
            name=name,
            category=category,
            when=when,
        )

    async def early_check(self, rec: UploadRecord, head: bytes) -> None:
        """At the first PATCH: refuse a forbidden type before more bytes are accepted."""
        if not self._config.early_type_check or rec.is_partial:
            return
        if len(head) < _MIN_SNIFF and (rec.length is None or len(head) < rec.length):
            return
        head = head[:SNIFF_BYTES]
        detected = await self._sniffer.sniff(head)
        # Remembered so the final check need not run libmagic again on the same bytes
        # (0.2-1 ms of CPU per call: a large part of a small upload's cost).
        if self.processes_here:  # (on an api instance a worker elsewhere does the final check)
            self._sniffed[rec.id] = (len(head), _digest(head), detected)
            while len(self._sniffed) > _SNIFF_MEMO:
                self._sniffed.popitem(last=False)
        reason = self._policy.check_type(detected)
        if reason:
            if self.on_rejected is not None:
                self.on_rejected(rec.owner, rec.id, "type")
            raise UnsupportedMediaType(f"rejected: {reason}")

    async def recover(self) -> int:
        """Take in finished uploads that a crash left without a file row (all of them, a
        batch at a time; one that cannot be taken in is left for the next start)."""
        count = 0
        seen: set[str] = set()  # each upload is tried once per call, taken in or not
        while True:
            listed = await self._files.finished_uploads_without_file(limit=100 + len(seen))
            batch = [upload_id for upload_id in listed if upload_id not in seen]
            if not batch:
                return count
            for upload_id in batch:
                seen.add(upload_id)
                rec = await self._upload(upload_id)
                if rec is None:
                    continue
                try:
                    await self.take_upload(rec)
                except Exception:
                    _log.warning("finished upload not taken in", upload_id=upload_id,
                                 exc_info=True)  # fmt: skip
                    continue
                count += 1

    async def _upload(self, upload_id: str) -> UploadRecord | None:
        return await self._uploads.get(upload_id)

    # --- workers ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        loop = asyncio.get_running_loop()
        for i in range(self._config.pipeline_workers):
            self._workers.append(loop.create_task(self._work(i)))
        if self._workers:
            self._workers.append(loop.create_task(self._keep_leases()))

    async def stop(self) -> None:
        """Stop the workers; files they held are handed back at once (not after the lease)."""
        self._stopping = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        if self.processes_here or self._claimed:
            # One statement for all: also a claim whose worker was cancelled while it
            # committed (its files are in no set here).
            try:
                await self._files.release_leases_of(str(self.holder))
            except Exception:
                _log.exception("pipeline could not hand its leases back; they run out")
        self._claimed.clear()
        self._held.clear()
        self._fresh.clear()  # (a later start reads the rows)

    def _enqueue(self, file_id: str) -> None:
        if file_id not in self._queued:
            self._queued.add(file_id)
            self._queue.put_nowait(file_id)

    async def _work(self, n: int) -> None:
        """Take files from the in-process queue (new uploads arrive there at once); when it
        stays empty for a poll interval, look in the catalog for due work: retries, files
        of other instances, files left behind by a crash."""
        while not self._stopping:
            try:
                # Work already queued is taken without wait_for's task and timer.
                file_id = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            else:
                await self._take(self._batch_from(file_id), n)
                continue
            self._idle += 1
            try:
                file_id = await asyncio.wait_for(
                    self._queue.get(), self._config.pipeline_poll_interval
                )
            except TimeoutError:
                try:
                    for due in await self._files.due(self._clock(), 50):
                        self._enqueue(due)
                except Exception:
                    _log.exception("pipeline scan failed", worker=n)
                continue
            finally:
                self._idle -= 1
            await self._take(self._batch_from(file_id), n)

    def _batch_from(self, first: str) -> list[str]:
        """``first`` and, when small files of this process wait, this worker's share of them
        (at most ``_CLAIM_BATCH``) that need a claim: claimed in one statement (see _take).
        The other workers' shares stay queued for them; a file not known to be small (a long
        scan, a long copy) is claimed alone, and a file held here already needs no claim."""
        batch = [first]
        if first in self._held or not self._small(first):
            return batch
        share = min(_CLAIM_BATCH, 1 + self._queue.qsize() // self._config.pipeline_workers)
        while len(batch) < share:
            try:
                file_id = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if file_id in self._held or not self._small(file_id):
                self._queue.put_nowait(file_id)  # (still in _queued) for the next take
                break
            batch.append(file_id)
        return batch

    def _small(self, file_id: str) -> bool:
        fresh = self._fresh.get(file_id)
        return fresh is not None and fresh.size <= _BATCH_MAX_SIZE

    async def _take(self, batch: list[str], n: int) -> None:
        self._queued.difference_update(batch)
        claimed = await self._claim(batch)
        if not claimed:
            return
        # The first is this worker's; the others go back to the queue, held by this
        # process: whichever worker is free first takes them without a claim, so none
        # waits behind a slow file.
        for file_id in claimed[1:]:
            self._held.add(file_id)
            self._enqueue(file_id)
        try:
            await self._process_claimed(claimed[0])
        except Exception:
            _log.exception("pipeline worker error", worker=n, file_id=claimed[0])

    async def take_back_leases(self) -> int:
        """Hand back the leases held by processes of this host that are gone (a crash, a
        SIGKILL, a reboot), so their files are taken again now rather than when the leases
        run out; returns how many. Holders on other hosts or in other containers are left
        to their leases."""
        me = self.holder
        taken = 0
        for file_id, name in await self._files.leases_held_in(me.scope, self._clock()):
            other = Holder.parse(name)
            if other is None or not me.knows_gone(other):
                continue
            if await self._files.release_lease(file_id, name):
                taken += 1
                self._enqueue(file_id)
        if taken:
            _log.info("pipeline took back leases of a process that is gone", files=taken)
        return taken

    async def _keep_leases(self) -> None:
        """Renew the leases of the files being processed here, so a long validation (a big
        scan, a slow copy) is not taken over by another worker while this one is alive; and
        take back at once those of a predecessor on this host that died."""
        while True:
            try:
                await self.take_back_leases()
            except Exception:
                _log.exception("pipeline could not look for leases of dead processes")
            await asyncio.sleep(self.lease.total_seconds() / 3)
            if not self._claimed:
                continue
            held = sorted(self._claimed)
            now, since = self._clock(), _elapsed()
            try:
                kept = await self._files.renew_leases(held, now, now + self.lease, str(self.holder))
            except Exception:
                _log.exception("pipeline lease renewal failed")
                continue
            # (Not renewed: done meanwhile, or lost; the trust of a lost one runs out, and
            # the catalog is asked before its next step that cannot be taken back.)
            lost = [f for f in held if f not in kept and f in self._claimed]
            if lost:
                _log.warning("pipeline lost leases", held=len(held), lost=len(lost))
            until = self._trusted_until(since)
            for file_id in kept:
                if file_id in self._claimed:
                    self._claimed[file_id] = until

    async def _claim(self, batch: list[str]) -> list[str]:
        """The files of ``batch`` this worker now holds, in order: those this process held
        already, and those its claim took (the rest is someone else's, or done)."""
        mine = {file_id for file_id in batch if file_id in self._held}
        self._held.difference_update(mine)
        others = [file_id for file_id in batch if file_id not in mine]
        won: set[str] = set()
        since = _elapsed()
        if others:
            try:
                won = await self._files.claim_many(
                    others, self._clock(), self.lease, str(self.holder)
                )
            except Exception:
                # Not claimed: still due in the catalog, where a scan finds them again.
                # Those already held here are processed all the same.
                _log.exception("pipeline claim failed", files=len(others))
        until = self._trusted_until(since)
        for file_id in won:
            self._claimed[file_id] = until
        for file_id in others:
            if file_id not in won:
                self._fresh.pop(file_id, None)
        return [file_id for file_id in batch if file_id in mine or file_id in won]

    async def _process_claimed(self, file_id: str) -> None:
        try:
            await self.process(file_id)
        except asyncio.CancelledError:
            raise  # shutdown: stop() hands the lease back
        except BaseException:
            # Not renewed any more: the lease runs out and the file is retried.
            self._claimed.pop(file_id, None)
            raise
        self._claimed.pop(file_id, None)

    async def run_due_once(self, limit: int = 20) -> int:
        """Process the files that are due now; returns how many were handled here."""
        handled = 0
        for file_id in await self._files.due(self._clock(), limit):
            for claimed in await self._claim([file_id]):
                await self._process_claimed(claimed)
                handled += 1
        return handled

    # --- one file ---------------------------------------------------------------------------

    async def process(self, file_id: str) -> FileStatus:
        fresh = self._fresh.pop(file_id, None)
        f = fresh or await self._files.get(file_id)
        if f is None:
            return FileStatus.FAILED
        if f.status not in (FileStatus.RECEIVED, FileStatus.VALIDATING):
            return f.status
        log = _log.bind(file_id=f.id, upload_id=f.upload_id)
        try:
            return await self._process_attempt(f, log, fresh is not None)
        except LeaseLost:
            log.warning("file taken over by another worker: its outcome is left to that one")
            now = await self._files.get(f.id)
            return now.status if now is not None else FileStatus.FAILED

    async def _process_attempt(self, f: FileRecord, log: Any, fresh: bool) -> FileStatus:
        if f.attempts > self._config.pipeline_max_attempts:
            # Each claim counts an attempt: more claims than attempts means a worker died
            # on this file each time (a crash, the kernel's OOM killer) and never retried it.
            return await self._give_up(
                f, "the worker stopped while processing it", f.attempts - 1, log
            )
        try:
            # (A row read back is inspected again: the bytes may have changed since.)
            return await self._process(f, log, inspected=fresh and bool(f.sha256))
        except LeaseLost:
            raise
        except (StorageError, OSError) as exc:
            return await self._retry(f, f"storage unavailable: {exc}", log)
        except Exception as exc:
            log.exception("pipeline step failed")
            return await self._retry(f, f"internal error: {type(exc).__name__}", log)

    # --- leases -------------------------------------------------------------------------------

    def _trusted_until(self, since: float) -> float:
        """Until when a lease taken or renewed at ``since`` (:func:`_elapsed`) is trusted
        without asking the catalog: half of it, a margin for the instances' clocks."""
        return since + self.lease.total_seconds() / 2

    async def _fence(self, f: FileRecord) -> None:
        """Before a step that cannot be taken back (moving the bytes into the object store,
        deleting them, deleting an object): raise LeaseLost unless the file is still this
        worker's. Within the lease's trusted half, without a statement; past it (a stall,
        or a file processed without a claim), the catalog is asked, and the lease renewed."""
        until = self._claimed.get(f.id)
        since = _elapsed()
        if until is not None and since < until:
            return
        await self._settle(f, lease_until=self._clock() + self.lease, lease_holder=str(self.holder))
        if f.id in self._claimed:
            self._claimed[f.id] = self._trusted_until(since)

    async def _settle(self, f: FileRecord, **values: Any) -> None:
        """Write ``values`` to the row of the file this worker processes, only while it is
        this worker's (catalog.files.update_held); LeaseLost otherwise."""
        if not await self._files.update_held(f.id, str(self.holder), **values):
            raise LeaseLost(f.id)

    async def _process(self, f: FileRecord, log: Any, *, inspected: bool) -> FileStatus:
        """``inspected``: ``f`` holds the facts the intake recorded (``_inspected_at_intake``)."""
        upload_id = f.upload_id
        assert upload_id is not None
        started = time.perf_counter()
        reset: dict[str, Any] = {}
        if f.location_stripped and not inspected:
            # A retry after the copy without location metadata was recorded (its size and
            # sha256, before its object was written): the chunk copy is still the upload as
            # received, inspected (and stripped) again whole, not cut at the copy's size.
            rec = await self._upload(upload_id)
            if rec is not None and rec.length is not None:
                reset = {"size": rec.length, "location_stripped": False}
                f = dataclasses.replace(f, size=rec.length, location_stripped=False)
        try:
            if inspected:
                # The whole file: the bytes typed at intake, if it hashes as they did.
                head = await self._head(upload_id, f.size)
                inspected = len(head) == f.size and _digest(head) == f.sha256
                if not inspected:
                    f = dataclasses.replace(f, storage_key=None)  # (made from the new type)
            if not inspected:
                sha256, head = await self._inspect(upload_id, f.size)
        except UploadDataMissing:
            return await self._recover_missing(f, log)
        if inspected:
            assert f.sha256 is not None and f.detected_type is not None
            sha256, detected = f.sha256, f.detected_type
            if self.digests is not None:
                self.digests.discard(upload_id)  # (a deferred length may have one)
        else:
            memo = self._sniffed.pop(upload_id, None)
            if memo is not None and memo[0] == len(head) and memo[1] == _digest(head):
                detected = memo[2]  # the first PATCH's check saw exactly these bytes
            else:
                detected = await self._sniffer.sniff(head)
        self._observe("inspect", started)
        candidate = Candidate(
            size=f.size,
            sha256=sha256,
            head=head,
            detected_type=detected,
            declared_type=f.declared_type,
            metadata=f.metadata,
            open=lambda: self._chunks.read(f.upload_id or "", 0, f.size),
        )
        mismatch = f.declared_type is not None and f.declared_type != detected
        key = f.storage_key or self._key(f.owner, f.id, f.name, candidate.category, f.created_at)
        if not inspected:
            # The key and sha256 are recorded before the object exists: a retry after a
            # crash finds the object by its key and checks it by its sha256. (Inspected at
            # intake: the row was inserted with them.)
            facts = Inspected(
                sha256=sha256,
                detected_type=detected,
                category=candidate.category,
                type_mismatch=mismatch,
                storage_key=key,
                store=self._objects.kind,
            ).columns()
            await self._settle(f, **facts, **reset, updated_at=self._clock())
            f = dataclasses.replace(f, **facts)
        for validator in [self._policy, *self._validators]:
            started = time.perf_counter()
            verdict = await validator.check(candidate)
            self._observe(validator.name, started)
            if verdict.kind is VerdictKind.REJECT:
                return await self._reject(
                    f, verdict.reason or validator.name, log, category=verdict.category
                )
            if verdict.kind is VerdictKind.RETRY:
                return await self._retry(f, verdict.reason or validator.name, log)
            if verdict.note:
                candidate.notes.append(verdict.note)
        media: MediaOutcome | None = None
        if self._media is not None and self._media.wants(detected):
            started = time.perf_counter()
            local = (
                self._local_chunks.local_path(f.upload_id or "")
                if self._local_chunks is not None
                else None
            )
            media = await self._media.process(candidate, local)
            self._observe("media", started)
            if (
                media.verdict.kind is VerdictKind.REJECT
                and local is not None
                and not await asyncio.to_thread(os.path.exists, local)
            ):
                # Not the file's fault: its bytes went away under the decoder (committed by
                # another worker that took the file over).
                await media.cleanup()
                raise UploadDataMissing(upload_id)
            if media.verdict.kind is VerdictKind.REJECT:
                return await self._reject(
                    f, media.verdict.reason or "media", log, category=media.verdict.category
                )
            if media.verdict.kind is VerdictKind.RETRY:
                return await self._retry(f, media.verdict.reason or "media", log)
        started = time.perf_counter()
        try:
            status = await self._commit(f, candidate, log, media)
        finally:
            if media is not None:
                await media.cleanup()
        self._observe("commit", started)
        return status

    def _observe(self, step: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.pipeline_step, step).observe(
                time.perf_counter() - started
            )

    async def _inspect(self, upload_id: str, size: int) -> tuple[str, bytes]:
        """One streaming pass: sha256 of the whole file and its first bytes; only the first
        bytes when the upload was hashed as it arrived."""
        known = self.digests.take_whole(upload_id, size) if self.digests is not None else None
        if known is not None:
            return known, await self._head(upload_id, size)
        digest = hashlib.sha256()
        head = bytearray()
        async for block in self._chunks.read(upload_id, 0, size):
            if len(head) < SNIFF_BYTES:
                head += block[: SNIFF_BYTES - len(head)]
            await update_all((digest,), block)
        if size == 0:
            await self._chunks.get_offset(upload_id)  # raises UploadDataMissing if gone
        return digest.hexdigest(), bytes(head)

    async def _head(self, upload_id: str, size: int) -> bytes:
        """The first bytes of the upload (``SNIFF_BYTES`` at most)."""
        head = bytearray()
        async for block in self._chunks.read(upload_id, 0, min(size, SNIFF_BYTES)):
            head += block
        if size == 0:
            await self._chunks.get_offset(upload_id)  # raises UploadDataMissing if gone
        return bytes(head)

    async def _commit(
        self, f: FileRecord, c: Candidate, log: Any, media: MediaOutcome | None = None
    ) -> FileStatus:
        assert f.upload_id is not None and f.storage_key is not None
        key = f.storage_key
        await self._fence(f)
        if media is not None:
            f = await self._store_media(f, c, media, log)
        assert f.upload_id is not None
        meta = {
            "file-id": f.id,
            "owner": f.owner or "",
            "original-name": f.name,
            "sha256": c.sha256,
        }
        note = "; ".join(c.notes) or None
        if note:
            # With the object: a commit that recovery finishes after a crash keeps it.
            meta["note"] = note[:512]
        if media is not None and media.stripped is not None:
            # The copy without location metadata is what is stored (and hashed).
            await self._objects.put_file(
                key, media.stripped, content_type=c.detected_type, metadata=meta, consume=True
            )
            return await self._mark_committed(f, note, log)
        if self._copier is not None and await self._copier.copy_into(
            f.upload_id, self._objects, key, content_type=c.detected_type, metadata=meta
        ):
            pass  # committed by a server-side copy: no byte went through this process
        elif self._local_chunks is not None:
            await self._objects.put_file(
                key,
                self._local_chunks.local_path(f.upload_id),
                content_type=c.detected_type,
                metadata=meta,
                consume=True,
            )
        else:
            await self._objects.put_stream(
                key,
                self._chunks.read(f.upload_id, 0, f.size),
                size=f.size,
                content_type=c.detected_type,
                metadata=meta,
            )
        return await self._mark_committed(f, note, log)

    async def _store_media(
        self, f: FileRecord, c: Candidate, media: MediaOutcome, log: Any
    ) -> FileRecord:
        """Thumbnails into the object store, the media facts (and, for a stripped copy, its
        size and sha256) into the row: all before the file's own object is written."""
        assert f.storage_key is not None
        values: dict[str, Any] = {}
        if media.facts is not None:
            values.update(media.facts.columns())
        if media.thumbnails and not await self._thumbnails_fit(f, media.thumbnails):
            log.info("thumbnails not stored: the owner is past the storage quota")
            media.thumbnails = {}
            # (Those an earlier attempt stored before it failed go too.)
            await delete_thumbnails(self._objects, f.storage_key, THUMBNAIL_SIZES)
        if media.thumbnails:
            values["thumbnails"] = await store_thumbnails(
                self._objects, f.storage_key, media.thumbnails, file_id=f.id
            )
            # Bytes held for the owner: counted in the usage (catalog/usage.py).
            values["thumbnail_bytes"] = sum(values["thumbnails"].values())
        if media.stripped is not None:
            c.sha256, c.size = await asyncio.to_thread(_hash_file, media.stripped)
            values.update(sha256=c.sha256, size=c.size, location_stripped=True)
        if not values:
            return f
        values["updated_at"] = self._clock()
        await self._settle(f, **values)
        return dataclasses.replace(
            f,
            sha256=c.sha256,
            size=c.size,
            media=values.get("media_info"),
            thumbnails=values.get("thumbnails"),
            location_stripped=media.stripped is not None,
        )

    async def _thumbnails_fit(self, f: FileRecord, thumbnails: Mapping[int, Path]) -> bool:
        """Whether ``f``'s owner is within the storage quota, the thumbnails' bytes then
        recorded (catalog.files.record_thumbnail_bytes); True where no quota applies."""
        if self.quota_limit is None or f.owner is None:
            return True
        quota = await self.quota_limit(f.owner)
        if quota is None:
            return True
        size = await asyncio.to_thread(lambda: sum(p.stat().st_size for p in thumbnails.values()))
        if await self._files.record_thumbnail_bytes(
            f.id, str(self.holder), f.owner, quota=quota, size=size
        ):
            return True
        await self._fence(f)  # (False too when the file is not this worker's any more)
        return False

    async def _mark_committed(self, f: FileRecord, note: str | None, log: Any) -> FileStatus:
        # The chunk copy goes first: a crash before the row is written leaves the object
        # and its recorded sha256, which _recover_missing turns into the committed row.
        await self._fence(f)
        if f.upload_id is not None:
            try:
                await self._chunks.delete(f.upload_id)
            except StorageError as exc:
                # The file is whole in the object store: committed all the same, and the
                # chunk copy left behind said so (S3 answered the copy, not this delete).
                log.warning("chunk copy not deleted", error=str(exc))
        now = self._clock()
        await self._settle(
            f,
            status=FileStatus.COMMITTED,
            reason=note,
            committed_at=now,
            updated_at=now,
            lease_until=None,
            next_attempt_at=None,
        )
        log.info("file committed")
        done = dataclasses.replace(
            f, status=FileStatus.COMMITTED, reason=note, committed_at=now, updated_at=now
        )
        self._emit("file.committed", self._hooks.post_commit, done)
        return FileStatus.COMMITTED

    async def _recover_missing(self, f: FileRecord, log: Any) -> FileStatus:
        """The chunk copy is gone: either the object was written before a crash, or data is lost."""
        fresh = await self._files.get(f.id)
        assert fresh is not None
        if fresh.storage_key and fresh.sha256:
            info = await self._objects.stat(fresh.storage_key)
            if info and info.size == fresh.size and info.metadata.get("sha256") == fresh.sha256:
                # The validators' note ("not scanned: ...") came with the object.
                return await self._mark_committed(fresh, info.metadata.get("note") or None, log)
        log.error("file bytes are missing")
        await self._settle(
            f,
            status=FileStatus.FAILED,
            reason="the uploaded bytes are missing",
            lease_until=None,
            updated_at=self._clock(),
        )
        return FileStatus.FAILED

    async def _reject(
        self, f: FileRecord, reason: str, log: Any, *, category: str = "other"
    ) -> FileStatus:
        await self._fence(f)
        if self.on_rejected is not None:
            self.on_rejected(f.owner, f.id, category)
        if f.storage_key:
            # An earlier attempt may have stored the object (and thumbnails) before a crash:
            # a rejected file is kept in quarantine as its upload's bytes only.
            try:
                await delete_thumbnails(self._objects, f.storage_key, THUMBNAIL_SIZES)
                await self._objects.delete(f.storage_key)
            except (StorageError, OSError) as exc:
                log.warning("object of a rejected file not deleted", error=str(exc))
        now = self._clock()
        await self._settle(
            f,
            status=FileStatus.REJECTED,
            reason=reason[:1024],
            lease_until=None,
            next_attempt_at=None,
            updated_at=now,
            quarantine_until=now + dt.timedelta(seconds=self._config.quarantine_retention),
        )
        log.info("file rejected", reason=reason)
        self._emit(
            "file.rejected",
            self._hooks.post_reject,
            dataclasses.replace(
                f, status=FileStatus.REJECTED, reason=reason[:1024], updated_at=now
            ),
        )
        return FileStatus.REJECTED

    async def _retry(self, f: FileRecord, reason: str, log: Any) -> FileStatus:
        fresh = await self._files.get(f.id)
        attempts = fresh.attempts if fresh else f.attempts
        now = self._clock()
        if attempts >= self._config.pipeline_max_attempts:
            return await self._give_up(f, reason, attempts, log)
        delay = min(
            self._config.pipeline_retry_base * 2 ** max(attempts - 1, 0),
            self._config.pipeline_retry_max,
        )
        await self._settle(
            f,
            status=FileStatus.VALIDATING,
            reason=reason[:1024],
            lease_until=None,
            next_attempt_at=now + dt.timedelta(seconds=delay),
            updated_at=now,
        )
        log.warning("file will be retried", reason=reason, delay=delay, attempts=attempts)
        return FileStatus.VALIDATING

    async def _give_up(self, f: FileRecord, reason: str, attempts: int, log: Any) -> FileStatus:
        await self._settle(
            f,
            status=FileStatus.FAILED,
            reason=f"gave up after {attempts} attempts: {reason}"[:1024],
            lease_until=None,
            updated_at=self._clock(),
        )
        log.error("file failed", reason=reason, attempts=attempts)
        return FileStatus.FAILED

    def _emit(self, event: str, hooks: Any, rec: FileRecord) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.files, event.removeprefix("file.")).inc()
        if self._events is not None:
            self._events.record(
                Event(
                    event,
                    at=self._clock(),
                    owner=rec.owner,
                    file_id=rec.id,
                    upload_id=rec.upload_id,
                    bytes=rec.size,
                    detail=rec.detected_type if event == "file.committed" else rec.reason,
                )
            )
        self._hooks.fire(event, hooks, rec)
        if self._webhooks is not None:
            self._webhooks.send(event, {"file": asdict(rec)})

    # --- quarantine -------------------------------------------------------------------------

    async def purge_quarantine(self) -> int:
        """Remove the bytes of rejected files whose quarantine has ended (the row stays)."""
        count = 0
        for f in await self._files.expired_quarantine(self._clock()):
            if f.upload_id is not None:
                try:
                    await self._chunks.delete(f.upload_id)
                except (StorageError, OSError) as exc:
                    # Kept in quarantine: the next purge tries again; the others go on.
                    _log.warning("quarantined bytes not deleted yet", file_id=f.id, error=str(exc))
                    continue
            await self._files.update(f.id, quarantine_until=None, updated_at=self._clock())
            count += 1
        return count

    def download(self, f: FileRecord, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes of a file for a download (every download path reads through here): a
        whole file is checked against the sha256 the catalog recorded; a range cannot be."""
        blocks = self.read_source(f, start, length)
        if start == 0 and length == f.size and f.sha256:
            return _checked(blocks, f.sha256, f"file {f.id}")
        return blocks

    async def read_source(self, f: FileRecord, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes of a file, wherever they are now (object store once committed).

        Bytes that fail an integrity check (decryption refused them) are reported here, the
        one place every download reads through, and the error goes on to the caller."""
        try:
            async for block in self._read_source(f, start, length):
                yield block
        except IntegrityError:
            if self.on_integrity_error is not None:
                self.on_integrity_error(f, "object" if f.storage_key else "chunks")
            raise

    async def _read_source(self, f: FileRecord, start: int, length: int) -> AsyncIterator[bytes]:
        if f.status is not FileStatus.COMMITTED and f.upload_id is not None:
            blocks = self._chunks.read(f.upload_id, start, length)
            try:
                first = await anext(blocks)
            except StopAsyncIteration:
                return
            except UploadDataMissing:
                # Moved to the object store meanwhile: its key is recorded before the move.
                fresh = await self._files.get(f.id)
                if fresh is None or not fresh.storage_key:
                    raise
                f = fresh
            else:
                yield first
                async for block in blocks:
                    yield block
                return
        if not f.storage_key:
            raise StorageError(f"file {f.id} has no stored object")
        async for block in self._objects.get(f.storage_key, start, length):
            yield block


_SNIFF_MEMO = 4096
#: Most files a worker claims in one statement (see Pipeline._batch_from), and the largest
#: file claimed with others.
_CLAIM_BATCH = 16
_BATCH_MAX_SIZE = 1024 * 1024


def _hash_file(path: Any) -> tuple[str, int]:
    """sha256 and size of a local file (blocking: run in a thread)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _digest(head: bytes) -> str:
    """What the type check's memo keeps of the bytes it typed: their sha256, which for a
    file typed whole is the file's own (see Pipeline._inspected_at_intake)."""
    return hashlib.sha256(head).hexdigest()


async def _checked(
    blocks: AsyncIterator[bytes], sha256_hex: str, what: str
) -> AsyncIterator[bytes]:
    """The blocks of a whole file, checked against the sha256 the catalog recorded.

    Every block but the last is passed on as it comes (nothing is buffered); the last is
    held back until all the bytes are hashed, and if they do not match, IntegrityError is
    raised instead: a file of one block is then refused before anything is sent (500), a
    longer one is cut short, so the client never receives it whole.
    """
    digest = hashlib.sha256()
    held: bytes | None = None
    try:
        async for block in blocks:
            if held is not None:
                yield held
            await update_all((digest,), block)
            held = block
    finally:
        if isinstance(blocks, AsyncGenerator):
            await blocks.aclose()
    if digest.hexdigest() != sha256_hex:
        _log.error("download does not match its sha256", file=what)
        raise IntegrityError(f"{what} does not match its recorded sha256")
    if held is not None:
        yield held
