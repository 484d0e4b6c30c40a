"""The orphan sweep: chunk-store entries that no catalog row names.

A creation makes room in the chunk store first, then inserts the upload's row
(:meth:`UploadService._create`); an insert that fails removes the store's entry again, but a
process killed between the two (SIGKILL, OOM, a power loss) leaves an entry no row names: an
empty file, an S3 ``.info`` and its multipart upload. The expiry sweeper walks rows, so
nothing else would ever remove it.

The sweep lists the store (:class:`~storage_backends.base.UploadLister`: streamed, a page at
a time, in worker threads), keeps only what the store last wrote more than ``grace`` seconds
ago (by the store's own clock: a creation in flight is never that old), looks those ids up in
the catalog a batch at a time, and removes what no row names, after asking the catalog once
more, for that id alone, right before. Any number of processes may sweep the same store at
once: an entry with no row never gets one later (ids are random, and a creation's row comes
within seconds of its entry), so the worst two sweepers can do is remove an orphan twice.

Only entries that hold no bytes are removed: a crash between the two leaves an empty upload
(bytes are only appended to an upload that has a row), so an entry without a row that holds
bytes is someone else's, or bytes a failed deletion left, and is kept.

A crash leaves as many orphans as creations were in flight: a few among the store's
entries. A batch in which most entries have no row says something else: the catalog is not
this store's (a server pointed at another database, or at a bucket prefix another
deployment uses). The sweep then stops before removing any of that batch
(:class:`OrphanSweepStopped`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Collection
from typing import Protocol

import structlog

from storage_backends.base import StorageError, UploadDataMissing, UploadLister

from ..metrics import Metrics

__all__ = ["BATCH", "BRAKE", "Catalog", "OrphanSweep", "OrphanSweepStopped"]

_log = structlog.get_logger("tusserver.sweeper")

#: Ids looked up in the catalog per query: two IN lists, 800 bound values, under the 999
#: that SQLite allowed before 3.32.
BATCH = 400
#: A batch with more orphans than this, and than half its ids, stops the sweep.
BRAKE = 50
#: Ids removed lately, not counted twice when the listing shows another piece of them (a
#: staged chunk, a key sidecar, a multipart upload beside its ``.info``).
_REMEMBERED = 10_000


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OrphanSweepStopped(Exception):
    """The catalog names too few of the store's entries to be its catalog: nothing more
    was removed (``removed``: what the pass had removed before)."""

    def __init__(self, message: str, *, removed: int) -> None:
        super().__init__(message)
        self.removed = removed


@dataclasses.dataclass(slots=True)
class _Pass:
    """What one pass has seen and done."""

    listed: int = 0
    removed: int = 0
    failed: int = 0
    #: Unknown to the catalog but holding bytes: not a crash's orphan (see _holds_bytes).
    kept: int = 0
    #: Ids removed lately (at most _REMEMBERED), oldest first.
    done: collections.OrderedDict[str, None] = dataclasses.field(
        default_factory=collections.OrderedDict
    )


class Catalog(Protocol):
    """What the sweep asks the catalog (:class:`~tusserver.catalog.uploads.UploadRepository`)."""

    async def known_ids(self, upload_ids: Collection[str]) -> set[str]:
        """Those of ``upload_ids`` a row names."""


class OrphanSweep:
    """Removes the chunk store's entries that no upload row names (see the module).

    ``grace``: seconds an entry must have gone unmodified; ``clock``: now; ``batch``: ids per
    catalog question; ``brake``: the orphans a batch may hold beyond half of it.
    """

    def __init__(
        self,
        store: UploadLister,
        catalog: Catalog,
        *,
        grace: float,
        clock: Callable[[], dt.datetime] = _utcnow,
        batch: int = BATCH,
        brake: int = BRAKE,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._grace = dt.timedelta(seconds=grace)
        self._clock = clock
        self._batch = max(1, batch)
        self._brake = brake
        self._metrics = metrics

    async def run(self) -> int:
        """One pass over the whole store; returns how many orphans it removed.

        Raises :class:`~storage_backends.base.StorageError` when the store cannot be listed,
        :class:`OrphanSweepStopped` when a batch holds too many orphans (what was removed
        before stays removed); an orphan that cannot be removed now is logged and left for
        the next pass.
        """
        cutoff = self._clock() - self._grace
        tally = _Pass()
        batch: dict[str, None] = {}  # (ordered, without repeats)
        async with contextlib.aclosing(self._store.list_uploads(modified_before=cutoff)) as it:
            async for piece in it:
                tally.listed += 1
                if piece.upload_id not in tally.done:
                    batch[piece.upload_id] = None
                if len(batch) >= self._batch:
                    await self._sweep(list(batch), tally)
                    batch.clear()
        if batch:
            await self._sweep(list(batch), tally)
        if tally.removed or tally.failed or tally.kept:
            _log.info("orphaned uploads removed", count=tally.removed, failed=tally.failed,
                      kept=tally.kept, listed=tally.listed)  # fmt: skip
        else:
            _log.debug("no orphaned uploads", listed=tally.listed)
        return tally.removed

    async def _holds_bytes(self, upload_id: str) -> bool:
        """Whether the store holds bytes of the upload. A crash between a creation's store
        entry and its row leaves an empty upload: bytes are only ever appended to an upload
        that has a row. So an entry with bytes and no row is not a crash's (another
        deployment's upload in a shared directory or prefix, or bytes a failed deletion
        left), and is kept: removing it could lose someone's data."""
        try:
            return await self._store.get_offset(upload_id) > 0
        except UploadDataMissing:
            return False  # only pieces without data (a lone key, a multipart upload)

    async def _sweep(self, ids: list[str], tally: _Pass) -> None:
        """Remove those of ``ids`` no row names."""
        known = await self._catalog.known_ids(ids)
        orphans = [upload_id for upload_id in ids if upload_id not in known]
        if len(orphans) > max(self._brake, len(ids) // 2):
            raise OrphanSweepStopped(
                f"the catalog names only {len(ids) - len(orphans)} of {len(ids)} uploads "
                "the chunk store lists: is it this store's catalog? (the wrong database_url, "
                "or a directory or S3 prefix another deployment uses)",
                removed=tally.removed,
            )
        for upload_id in orphans:
            # Asked again right before: the batch's answer may be a while old by now.
            if await self._catalog.known_ids([upload_id]):
                continue
            try:
                if await self._holds_bytes(upload_id):
                    tally.kept += 1
                    _log.warning("unknown upload with bytes kept", upload_id=upload_id)
                    continue
                await self._store.remove_orphan(upload_id)
            except (StorageError, OSError) as exc:
                tally.failed += 1
                _log.warning("could not remove orphaned upload", upload_id=upload_id,
                             error=str(exc))  # fmt: skip
                continue
            tally.removed += 1
            tally.done[upload_id] = None
            if len(tally.done) > _REMEMBERED:
                tally.done.popitem(last=False)
            _log.info("orphaned upload removed", upload_id=upload_id)
            if self._metrics is not None:
                self._metrics.orphans_removed.inc()
