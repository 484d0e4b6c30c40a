"""Repository of files: what finished uploads became, and the pipeline's durable state."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import functools
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from ..cache import FILES, Cache, Invalidator, Namespace, NotifyOnly
from . import fastsql
from .db import Database
from .schema import (
    by_id_params,
    file_tags,
    file_uploads,
    files,
    folders,
    update_by_id,
    uploads,
)
from .usage import lock_owner, used_bytes

__all__ = ["FileRecord", "FileRepository", "FileStatus", "Inspected", "NewFile"]


class FileStatus(enum.StrEnum):
    RECEIVED = "received"
    VALIDATING = "validating"
    COMMITTED = "committed"
    REJECTED = "rejected"
    FAILED = "failed"


PENDING = (FileStatus.RECEIVED.value, FileStatus.VALIDATING.value)


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner: str | None
    name: str
    folder: str
    size: int
    declared_type: str | None
    detected_type: str | None
    category: str | None
    type_mismatch: bool
    sha256: str | None
    status: FileStatus
    reason: str | None
    store: str | None
    storage_key: str | None
    metadata: Mapping[str, str]
    tags: Sequence[str]
    attempts: int
    created_at: dt.datetime
    updated_at: dt.datetime
    committed_at: dt.datetime | None
    upload_id: str | None = None
    #: The `media` object of the files API (None: not media, or not probed).
    media: Mapping[str, Any] | None = None
    #: Thumbnail sizes stored next to the object, with their byte lengths ({"256": n}).
    thumbnails: Mapping[str, int] | None = None
    location_stripped: bool = False


@dataclass(frozen=True, slots=True)
class Inspected:
    """A finished file's facts from the pipeline's inspection (see NewFile.inspected)."""

    sha256: str
    detected_type: str
    category: str
    type_mismatch: bool
    storage_key: str
    store: str

    def columns(self) -> dict[str, Any]:
        """The ``files`` columns (and FileRecord fields) these facts set."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class NewFile:
    id: str
    owner: str | None
    name: str
    size: int
    declared_type: str | None
    metadata: Mapping[str, str]
    upload_id: str
    protocol: str
    client: str | None
    started_at: dt.datetime
    finished_at: dt.datetime
    #: What the pipeline's inspection records, when it is known as the upload finishes (a
    #: small file typed and hashed whole as it arrived): inserted with the row, so the key
    #: and sha256 are on record before the object exists, without a statement of their own.
    inspected: Inspected | None = None


def _record(row: RowMapping) -> FileRecord:
    return FileRecord(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        folder=row["folder"],
        size=row["size"],
        declared_type=row["declared_type"],
        detected_type=row["detected_type"],
        category=row["category"],
        type_mismatch=row["type_mismatch"],
        sha256=row["sha256"],
        status=FileStatus(row["status"]),
        reason=row["reason"],
        store=row["store"],
        storage_key=row["storage_key"],
        metadata=row["meta"],
        tags=row["tags"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        committed_at=row["committed_at"],
        upload_id=row.get("upload_id"),
        media=row.get("media_info"),
        thumbnails=row.get("thumbnails"),
        location_stripped=bool(row.get("location_stripped")),
    )


def _is_record(rec: FileRecord | None) -> bool:
    return rec is not None


_SELECT = select(files, file_uploads.c.upload_id).join(
    file_uploads, file_uploads.c.file_id == files.c.id, isouter=True
)
#: Built once: the file lookup of every download and pipeline step.
_BY_ID = _SELECT.where(files.c.id == bindparam("id"))
# The statements of a small upload's path through the pipeline, built once (see update_by_id).
_INSERT_FILE = insert(files)
_INSERT_LINK = insert(file_uploads)
_POINT_BACK = update_by_id(uploads, ("file_id",))


@functools.lru_cache(maxsize=64)
def _file_link_point_back(
    file_columns: tuple[str, ...], link_columns: tuple[str, ...], upload_columns: tuple[str, ...]
) -> Update:
    """PostgreSQL: the file row, its link and the upload's point-back as one statement
    (data-modifying WITH clauses, which SQLite lacks): one round trip instead of three.
    Parameters: ``f_<column>`` (files), ``l_<column>`` (file_uploads) and those of
    :func:`update_by_id` for the upload. Statements in a WITH clause get no Python-side
    column defaults from SQLAlchemy: give every column (:func:`_with_defaults`)."""
    new_file = insert(files).values({k: bindparam("f_" + k) for k in file_columns})
    new_link = insert(file_uploads).values({k: bindparam("l_" + k) for k in link_columns})
    return (
        update_by_id(uploads, upload_columns)
        .add_cte(new_file.cte("new_file"))
        .add_cte(new_link.cte("new_link"))
    )


def _with_defaults(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` and the Python-side default of each column of ``table`` it leaves out: a
    constant. (A default computed in Python is refused: in a WITH clause SQLAlchemy would
    send NULL for it; one in SQL is part of the statement.)"""
    full = dict(row)
    for column in table.columns:
        default = column.default
        if column.key in full or default is None or default.is_clause_element:
            continue
        if not default.is_scalar:
            raise TypeError(f"{table.name}.{column.key}: give its value (its default is computed)")
        full[column.key] = default.arg  # type: ignore[attr-defined]
    return full


#: What a claim requires of a row (pending, no live lease, due) and what it sets: written once,
#: for the claim of one file and the claim of a batch.
_CLAIMABLE = (
    # (Spelled out rather than IN: a statement without an expanding parameter takes the
    # cheaper path of catalog.fastsql on SQLite.)
    or_(*(files.c.status == status for status in PENDING)),
    or_(files.c.lease_until.is_(None), files.c.lease_until < bindparam("now")),
    # Not while it waits out a retry's backoff (another worker may have listed it as due
    # before that worker's retry put it back).
    or_(files.c.next_attempt_at.is_(None), files.c.next_attempt_at <= bindparam("now")),
)
_CLAIMED = {
    "lease_until": bindparam("v_lease_until"),
    "lease_holder": bindparam("v_lease_holder"),
    "status": FileStatus.VALIDATING.value,
    "attempts": files.c.attempts + 1,
    "updated_at": bindparam("now"),
}


@functools.lru_cache(maxsize=32)
def _update_held(columns: tuple[str, ...]) -> Update:
    """:func:`update_by_id` for a file still held by ``:holder`` (see update_held)."""
    return update_by_id(files, columns).where(
        or_(*(files.c.status == status for status in PENDING)),
        or_(files.c.lease_holder.is_(None), files.c.lease_holder == bindparam("holder")),
    )


_CLAIM = update(files).where(files.c.id == bindparam("row_id"), *_CLAIMABLE).values(_CLAIMED)
_CLAIM_MANY = (
    update(files)
    .where(files.c.id.in_(bindparam("ids", expanding=True)), *_CLAIMABLE)
    .values(_CLAIMED)
    .returning(files.c.id)
)


class FileRepository:
    """Rows of ``files``. Every write of a row goes through the invalidator, which drops the
    row's cache entry on commit on every instance (see tusserver.cache); ``get(cached=True)``
    may answer from the cache, plain ``get`` always reads the database."""

    def __init__(
        self,
        db: Database,
        *,
        cache: Cache | None = None,
        ttl: float = 0.0,
        invalidator: Invalidator | None = None,
    ) -> None:
        self._db = db
        self._cache = cache
        self._ns: Namespace[FileRecord | None] = Namespace(FILES, ttl)
        self.invalidator: Invalidator = invalidator or NotifyOnly()

    async def create_for_upload(
        self,
        new: NewFile,
        now: dt.datetime,
        *,
        claim: tuple[dt.datetime, str] | None = None,
        finish: Mapping[str, Any] | None = None,
    ) -> str:
        """Insert the file row for an upload, once: returns the file id (existing or new).

        The unique upload_id in file_uploads makes this idempotent across retries and
        instances; the upload row points back at the file. ``claim`` (lease end, holder):
        the row is inserted already claimed, as :meth:`claim` would leave it (a worker of
        this process takes it next; it spares that claim's statement and transaction).
        ``finish``: columns of the upload row that finish it, set by the statement that
        points it at its file: the upload is finished and its file recorded in one
        transaction (or neither is: its bytes are all stored, and the next request on it
        finishes it). Where the file row exists already, they are set on their own.
        """
        row: dict[str, Any] = {
            "id": new.id,
            "owner": new.owner,
            "name": new.name,
            "name_folded": fold_name(new.name)[:255],
            "folder": "/",
            "size": new.size,
            "declared_type": new.declared_type,
            "type_mismatch": False,
            "status": FileStatus.RECEIVED.value,
            "meta": dict(new.metadata),
            "tags": [],
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        if new.inspected is not None:
            row.update(new.inspected.columns())
        if claim is not None:
            row.update(
                status=FileStatus.VALIDATING.value,
                attempts=1,
                lease_until=claim[0],
                lease_holder=claim[1],
            )
        link = {
            "file_id": new.id,
            "upload_id": new.upload_id,
            "protocol": new.protocol,
            "client": new.client,
            "started_at": new.started_at,
            "finished_at": new.finished_at,
            "bytes": new.size,
        }
        finishing = dict(finish or {})
        values = {**finishing, "file_id": new.id}
        point_back_stmt = update_by_id(uploads, tuple(values)) if finishing else _POINT_BACK
        point_back = by_id_params(new.upload_id, values)

        def work(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":  # (a statement is a round trip there)
                file_row, link_row = _with_defaults(files, row), _with_defaults(file_uploads, link)
                stmt = _file_link_point_back(tuple(file_row), tuple(link_row), tuple(values))
                params = {"f_" + k: v for k, v in file_row.items()}
                params.update(("l_" + k, v) for k, v in link_row.items())
                fastsql.execute(conn, stmt, {**params, **point_back})
                return
            fastsql.execute(conn, _INSERT_FILE, row)
            fastsql.execute(conn, _INSERT_LINK, link)
            fastsql.execute(conn, point_back_stmt, point_back)

        try:
            await self._db.write(work, quick=True)
        except IntegrityError:
            # Another worker or instance created it first. (A new row needs no invalidation:
            # lookups of missing files are not cached.)
            query = select(file_uploads.c.file_id).where(file_uploads.c.upload_id == new.upload_id)
            existing = await self._db.read(lambda conn: conn.execute(query).scalar())
            if existing is None:
                raise
            if finishing:
                stmt = update_by_id(uploads, tuple(finishing))
                params = by_id_params(new.upload_id, finishing)
                await self._db.write(lambda conn: fastsql.execute(conn, stmt, params), quick=True)
            return str(existing)
        return new.id

    async def get(self, file_id: str, *, cached: bool = False) -> FileRecord | None:
        """The file; ``cached``: maybe from the cache (for reads that serve clients only).

        Callers still check who may see the record: the cache keys by id, not by caller.
        """
        if cached and self._cache is not None:
            return await self._cache.fetch(
                self._ns, file_id, lambda: self._read(file_id), keep=_is_record
            )
        return await self._read(file_id)

    async def _read(self, file_id: str) -> FileRecord | None:
        def work(conn: Connection) -> FileRecord | None:
            row = fastsql.first(conn, _BY_ID, {"id": file_id})
            return None if row is None else _record(row)

        return await self._db.read(work, quick=True)

    async def due(self, now: dt.datetime, limit: int = 20) -> list[str]:
        """Pending files whose next attempt is due and that no live worker holds."""
        query = (
            select(files.c.id)
            .where(
                files.c.status.in_(PENDING),
                or_(files.c.next_attempt_at.is_(None), files.c.next_attempt_at <= now),
                or_(files.c.lease_until.is_(None), files.c.lease_until < now),
            )
            .order_by(files.c.next_attempt_at)
            .limit(limit)
        )
        return await self._db.read(lambda conn: list(conn.execute(query).scalars()))

    async def claim(
        self, file_id: str, now: dt.datetime, lease: dt.timedelta, holder: str | None = None
    ) -> bool:
        """Take a pending file for one worker (any instance); False if someone else has it."""
        return bool(await self.claim_many([file_id], now, lease, holder))

    async def claim_many(
        self,
        file_ids: Sequence[str],
        now: dt.datetime,
        lease: dt.timedelta,
        holder: str | None = None,
    ) -> set[str]:
        """Take the pending files of ``file_ids`` for one worker in one statement (a burst of
        small files costs one claim, not one each); returns those taken, the others being
        held by someone else, done, or gone."""
        if not file_ids:
            return set()
        params: dict[str, Any] = {
            "now": now,
            "v_lease_until": now + lease,
            "v_lease_holder": holder,
        }
        keys = [(FILES, file_id) for file_id in file_ids]
        if len(file_ids) == 1:
            params["row_id"] = file_ids[0]
            won = await self.invalidator.run(
                self._db,
                lambda conn: fastsql.execute(conn, _CLAIM, params) == 1,
                *keys,
                quick=True,
            )
            return {file_ids[0]} if won else set()
        params["ids"] = list(file_ids)
        return await self.invalidator.run(
            self._db,
            lambda conn: set(conn.execute(_CLAIM_MANY, params).scalars()),
            *keys,
            quick=True,
        )

    async def leases_held_in(self, scope: str, now: dt.datetime) -> list[tuple[str, str]]:
        """(file id, holder) of the live leases whose holder names start with ``scope``."""
        query = select(files.c.id, files.c.lease_holder).where(
            files.c.status == FileStatus.VALIDATING.value,
            files.c.lease_until > now,
            files.c.lease_holder.startswith(scope, autoescape=True),
        )
        return await self._db.read(lambda conn: [(row[0], row[1]) for row in conn.execute(query)])

    async def release_lease(self, file_id: str, holder: str) -> bool:
        """Hand back the lease ``holder`` has on ``file_id`` (a holder known to be gone)."""
        stmt = (
            update(files)
            .where(
                files.c.id == file_id,
                files.c.status == FileStatus.VALIDATING.value,
                files.c.lease_holder == holder,
            )
            .values(lease_until=None, lease_holder=None)
        )
        return await self._db.write(lambda conn: conn.execute(stmt).rowcount == 1)

    async def release_leases_of(self, holder: str) -> int:
        """Hand back every lease ``holder`` has (a graceful stop): whatever it claimed,
        including a claim that committed after its caller gave up waiting for it."""
        stmt = (
            update(files)
            .where(
                files.c.status == FileStatus.VALIDATING.value,
                files.c.lease_holder == holder,
            )
            .values(lease_until=None, lease_holder=None)
        )
        return await self._db.write(lambda conn: conn.execute(stmt).rowcount)

    async def renew_leases(
        self, file_ids: Sequence[str], now: dt.datetime, until: dt.datetime, holder: str
    ) -> set[str]:
        """Extend the leases ``holder`` still has (being validated, lease not run out, handed
        back or taken by another) of ``file_ids``; returns those that were."""
        stmt = (
            update(files)
            .where(
                files.c.id.in_(file_ids),
                files.c.status == FileStatus.VALIDATING.value,
                files.c.lease_until.is_not(None),
                files.c.lease_until > now,
                files.c.lease_holder == holder,
            )
            .values(lease_until=until)
            .returning(files.c.id)
        )
        # No invalidation: leases are not part of what the cache serves.
        return await self._db.write(lambda conn: set(conn.execute(stmt).scalars()))

    async def update(self, file_id: str, **values: Any) -> None:
        if isinstance(values.get("status"), FileStatus):
            values["status"] = values["status"].value
        if "created_at" not in values:
            stmt, params = update_by_id(files, tuple(values)), by_id_params(file_id, values)
            await self.invalidator.run(
                self._db,
                lambda conn: fastsql.execute(conn, stmt, params),
                (FILES, file_id),
                quick=True,
            )
            return
        stmt = update(files).where(files.c.id == file_id).values(**values)
        # file_tags keeps a copy of created_at (tag searches by date): it follows.
        copy = (
            update(file_tags)
            .where(file_tags.c.file_id == file_id)
            .values(created_at=values["created_at"])
        )

        def work(conn: Connection) -> None:
            conn.execute(stmt)
            conn.execute(copy)

        await self.invalidator.run(self._db, work, (FILES, file_id))

    async def update_held(self, file_id: str, holder: str, **values: Any) -> bool:
        """``update`` of a file a pipeline worker is processing, written only while it is
        still that worker's: pending, and held by ``holder`` or by no one (a lease handed
        back). False, and nothing written, once it is not: another worker took it after the
        lease ran out (this one stalled), or it has its outcome already."""
        if isinstance(values.get("status"), FileStatus):
            values["status"] = values["status"].value
        stmt = _update_held(tuple(values))
        params = by_id_params(file_id, values)
        params["holder"] = holder
        return await self.invalidator.run(
            self._db,
            lambda conn: fastsql.execute(conn, stmt, params) == 1,
            (FILES, file_id),
            quick=True,
        )

    async def record_thumbnail_bytes(
        self, file_id: str, holder: str, owner: str, *, quota: int, size: int
    ) -> bool:
        """Record ``size`` bytes of thumbnails for a file being processed (held by
        ``holder``, see update_held) if its owner is within ``quota`` (its files, this one
        included without thumbnails, and its uploads), decided under the owner's quota lock;
        else record none (an earlier attempt's count is dropped) and return False. So the
        thumbnails of files processed one after the other take an owner past the quota at
        most once (by one file's thumbnails), not once per file that was accepted before any
        thumbnail was made."""
        stmt = _update_held(("thumbnail_bytes",))
        params = by_id_params(file_id, {"thumbnail_bytes": size})
        params["holder"] = holder
        own = select(files.c.thumbnail_bytes).where(files.c.id == file_id)

        def work(conn: Connection) -> bool:
            lock_owner(conn, owner)
            fits = used_bytes(conn, owner) - (conn.execute(own).scalar() or 0) <= quota
            written = {**params, "v_thumbnail_bytes": size if fits else 0}
            return fastsql.execute(conn, stmt, written) == 1 and fits

        recorded: bool = await self.invalidator.run(self._db, work, (FILES, file_id))
        return recorded

    async def make_all_due(self) -> None:
        """Operator retry: every pending file is due now (leases are kept)."""
        stmt = update(files).where(files.c.status.in_(PENDING)).values(next_attempt_at=None)
        await self.invalidator.run(self._db, lambda conn: conn.execute(stmt), (FILES, None))

    async def requeue_failed(self, now: dt.datetime) -> int:
        """Operator retry of files the pipeline gave up on: pending again, attempts reset."""
        stmt = (
            update(files)
            .where(files.c.status == FileStatus.FAILED.value)
            .values(
                status=FileStatus.RECEIVED.value,
                attempts=0,
                reason=None,
                lease_until=None,
                next_attempt_at=None,
                updated_at=now,
            )
        )
        return await self.invalidator.run(
            self._db, lambda conn: int(conn.execute(stmt).rowcount), (FILES, None)
        )

    async def pending_count(self) -> int:
        query = select(func.count()).select_from(files).where(files.c.status.in_(PENDING))
        return await self._db.read(lambda conn: int(conn.execute(query).scalar_one()))

    async def expired_quarantine(self, now: dt.datetime, limit: int = 200) -> list[FileRecord]:
        query = _SELECT.where(
            files.c.status == FileStatus.REJECTED.value,
            files.c.quarantine_until.is_not(None),
            files.c.quarantine_until < now,
        ).limit(limit)
        return await self._db.read(
            lambda conn: [_record(r) for r in conn.execute(query).mappings()]
        )

    async def delete(self, file_id: str) -> bool:
        """Forget a file; False if it was gone already (deleted by another request)."""
        unlink = delete(file_uploads).where(file_uploads.c.file_id == file_id)
        remove = delete(files).where(files.c.id == file_id)

        def work(conn: Connection) -> bool:
            conn.execute(unlink)
            return bool(conn.execute(remove).rowcount)

        return await self.invalidator.run(self._db, work, (FILES, file_id))

    async def organize(
        self,
        file_id: str,
        *,
        name: str | None = None,
        folder: str | None = None,
        tags: Sequence[str] | None = None,
        now: dt.datetime,
    ) -> None:
        """Rename, move and retag (see :func:`update_file`), invalidating the cached file."""
        await update_file(
            self._db,
            file_id,
            name=name,
            folder=folder,
            tags=tags,
            now=now,
            invalidator=self.invalidator,
        )

    async def finished_uploads_without_file(self, limit: int = 100) -> list[str]:
        """Uploads finished (not partial) that the pipeline has not taken in yet (recovery)."""
        query = (
            select(uploads.c.id)
            .where(
                uploads.c.state == "finished",
                uploads.c.is_partial.is_(False),
                uploads.c.file_id.is_(None),
            )
            .limit(limit)
        )
        return await self._db.read(lambda conn: list(conn.execute(query).scalars()))


# --- search ---------------------------------------------------------------------------------

SORTS = {"date": files.c.created_at, "name": files.c.name_folded, "size": files.c.size}


@dataclass(frozen=True, slots=True)
class FileQuery:
    """A validated search; every field is already parsed (see tusserver.api.files)."""

    owner: str | None  # None: all owners (admins)
    q: str | None = None
    match: str = "substring"  # or "prefix"
    mime: str | None = None  # "image/png" or "image/*"
    category: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    tags: tuple[str, ...] = ()
    folder: str | None = None
    status: str | None = None
    orientation: str | None = None  # landscape | portrait | square
    min_width: int | None = None
    min_height: int | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    sort: str = "date"
    descending: bool = True
    after: tuple[Any, str] | None = None  # keyset: (sort value, id) of the last item seen
    limit: int = 50


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_statement(query: FileQuery) -> Select[Any]:
    """The statement of a search: every value is bound, no SQL is built from strings.

    Newest first with a tag and no owner, the page walks that tag's entries of ``file_tags``
    in date order (their ``created_at`` is a copy of the file's, migration 0006) and joins
    the files to them; further tags are EXISTS tests. Otherwise every tag is an EXISTS test
    on the files, which an owner's own indexes (migration 0005) serve in any sort order.
    """
    by_tag = bool(query.tags) and query.sort == "date" and query.owner is None
    if by_tag:
        # file_tags holds one row per (file, tag): the join repeats no file.
        sort_col, id_col = file_tags.c.created_at, file_tags.c.file_id
        source: Any = file_tags.join(files, files.c.id == file_tags.c.file_id)
        conds: list[Any] = [file_tags.c.tag == query.tags[0]]
        exists_tags = query.tags[1:]
    else:
        sort_col, id_col = SORTS[query.sort], files.c.id
        source = files
        conds = []
        exists_tags = query.tags
    if query.owner is not None:
        conds.append(files.c.owner == query.owner)
    if query.q:
        folded = like_escape(fold_name(query.q))
        pattern = f"{folded}%" if query.match == "prefix" else f"%{folded}%"
        conds.append(files.c.name_folded.like(pattern, escape="\\"))
    if query.mime:
        if query.mime.endswith("/*"):
            prefix = like_escape(query.mime[:-1])
            conds.append(files.c.detected_type.like(f"{prefix}%", escape="\\"))
        else:
            conds.append(files.c.detected_type == query.mime)
    if query.category:
        conds.append(files.c.category == query.category)
    if query.min_size is not None:
        conds.append(files.c.size >= query.min_size)
    if query.max_size is not None:
        conds.append(files.c.size <= query.max_size)
    if query.created_from is not None:
        conds.append(
            sort_col >= query.created_from if by_tag else files.c.created_at >= query.created_from
        )
    if query.created_to is not None:
        conds.append(
            sort_col < query.created_to if by_tag else files.c.created_at < query.created_to
        )
    for tag in exists_tags:
        other = file_tags.alias()  # not the joined file_tags: each tag is its own test
        conds.append(
            select(other.c.file_id)
            .where(other.c.file_id == files.c.id, other.c.tag == tag)
            .exists()
        )
    if query.folder is not None:
        conds.append(files.c.folder == query.folder)
    if query.status is not None:
        conds.append(files.c.status == query.status)
    if query.orientation is not None:
        conds.append(files.c.media_orientation == query.orientation)
    if query.min_width is not None:
        conds.append(files.c.media_width >= query.min_width)
    if query.min_height is not None:
        conds.append(files.c.media_height >= query.min_height)
    if query.min_duration is not None:
        conds.append(files.c.media_duration >= query.min_duration)
    if query.max_duration is not None:
        conds.append(files.c.media_duration <= query.max_duration)
    if query.after is not None:
        value, last_id = query.after
        if query.descending:
            conds.append(or_(sort_col < value, and_(sort_col == value, id_col < last_id)))
        else:
            conds.append(or_(sort_col > value, and_(sort_col == value, id_col > last_id)))
    order = (sort_col.desc(), id_col.desc()) if query.descending else (sort_col.asc(), id_col.asc())
    return (
        select(files, file_uploads.c.upload_id)
        .select_from(source.outerjoin(file_uploads, file_uploads.c.file_id == files.c.id))
        .where(*conds)
        .order_by(*order)
        .limit(query.limit)
    )


#: PostgreSQL, for the search's transaction only (measured with 1,000,000 files, see
#: benchmarks/README.md):
#: - plan each search for its own values: a pooled connection re-uses its prepared statements,
#:   and after a few runs PostgreSQL may switch to a generic plan, blind to the pattern. An
#:   owner's names containing "ap" then went through the whole trigram index (a two-letter
#:   pattern has no trigram to look up): 600-800 ms instead of 2 ms. Only a known prefix can
#:   be an index range, too.
#: - no parallel workers: a page stops after ``limit`` rows, but workers run ahead until their
#:   queues fill. Every parallel plan seen was slower than the serial one (a tag across owners
#:   sorted by name: 71 ms against 25 ms; by size: 145 against 43, on 2 cores).
_SEARCH_SETTINGS = select(
    func.set_config("plan_cache_mode", "force_custom_plan", True),
    func.set_config("max_parallel_workers_per_gather", "0", True),
)


async def search_files(db: Database, query: FileQuery) -> list[FileRecord]:
    """Keyset-paginated search (see :func:`search_statement`)."""
    stmt = search_statement(query)

    def work(conn: Connection) -> list[FileRecord]:
        if conn.dialect.name == "postgresql":
            conn.execute(_SEARCH_SETTINGS)
        return [_record(r) for r in conn.execute(stmt).mappings()]

    return await db.read(work)


def fold_name(text: str) -> str:
    """What names are compared as: without case, and one form of each character (a name
    typed on macOS arrives decomposed, é as e + U+0301; one typed elsewhere composed). The
    ``name_folded`` column holds this of the name (cut to 255), and ``q`` is folded alike."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def sort_value(f: FileRecord, sort: str) -> Any:
    if sort == "date":
        return f.created_at
    if sort == "name":
        return fold_name(f.name)[:255]
    return f.size


# --- organization ---------------------------------------------------------------------------


async def update_file(
    db: Database,
    file_id: str,
    *,
    name: str | None,
    folder: str | None,
    tags: Sequence[str] | None,
    now: dt.datetime,
    invalidator: Invalidator | None = None,
) -> None:
    """Rename, move and retag a file in one transaction (each part optional).

    The transaction invalidates the file's cache entry through ``invalidator`` (pass the
    repository's, :meth:`FileRepository.organize` does); without one only other processes'
    caches hear of it (PostgreSQL NOTIFY).
    """
    values: dict[str, Any] = {"updated_at": now}
    if name is not None:
        values["name"] = name
        values["name_folded"] = fold_name(name)[:255]
    if folder is not None:
        values["folder"] = folder
    if tags is not None:
        values["tags"] = list(tags)
    stmt = update(files).where(files.c.id == file_id).values(**values)
    created_query = select(files.c.created_at).where(files.c.id == file_id)

    def work(conn: Connection) -> None:
        conn.execute(stmt)
        if tags is not None:
            conn.execute(delete(file_tags).where(file_tags.c.file_id == file_id))
            # Each tag row carries the file's created_at (read in this transaction).
            created = conn.execute(created_query).scalar()
            if tags and created is not None:
                rows = [{"file_id": file_id, "tag": t, "created_at": created} for t in tags]
                conn.execute(insert(file_tags), rows)

    await (invalidator or NotifyOnly()).run(db, work, (FILES, file_id))


async def rename_move(
    db: Database,
    file_id: str,
    *,
    name: str | None,
    folder: str | None,
    now: dt.datetime,
    invalidator: Invalidator | None = None,
) -> None:
    await update_file(
        db, file_id, name=name, folder=folder, tags=None, now=now, invalidator=invalidator
    )


async def list_folders(db: Database, owner: str | None) -> list[str]:
    """Folders of an owner: the ones created explicitly and the ones holding files."""
    explicit = select(folders.c.path).where(folders.c.owner == (owner or ""))
    used = (
        select(files.c.folder).where(files.c.owner == owner).distinct()
        if owner is not None
        else select(files.c.folder).where(files.c.owner.is_(None)).distinct()
    )

    def work(conn: Connection) -> set[str]:
        return set(conn.execute(explicit).scalars()) | set(conn.execute(used).scalars())

    # Every ancestor of a folder is a folder too: worked out in a thread (thousands of deep
    # folders are a second of CPU).
    return await asyncio.to_thread(_with_ancestors, await db.read(work) | {"/"})


def _with_ancestors(paths: set[str]) -> list[str]:
    for p in list(paths):
        parts = [x for x in p.split("/") if x]
        for i in range(len(parts)):
            paths.add("/" + "/".join(parts[:i]) + ("/" if i else ""))
    return sorted(paths)


#: Folders one owner may create explicitly (those holding files are not counted).
MAX_FOLDERS = 10_000


class TooManyFolders(Exception):
    """The owner has :data:`MAX_FOLDERS` folders already."""


async def create_folder(db: Database, owner: str | None, path: str, now: dt.datetime) -> None:
    """Create a folder (idempotent); TooManyFolders past :data:`MAX_FOLDERS`."""
    stmt = insert(folders).values(owner=owner or "", path=path, created_at=now)
    count = select(func.count()).select_from(folders).where(folders.c.owner == (owner or ""))
    exists = select(folders.c.path).where(folders.c.owner == (owner or ""), folders.c.path == path)

    def work(conn: Connection) -> None:
        if conn.execute(exists).first() is not None:
            return  # already there: creating is idempotent
        if conn.execute(count).scalar_one() >= MAX_FOLDERS:
            raise TooManyFolders(owner)
        conn.execute(stmt)

    with contextlib.suppress(IntegrityError):  # created meanwhile by another instance
        await db.write(work)


def _under(column: Any, path: str) -> Any:
    """``column`` is ``path`` or a path below it, letter case included: SQLite's LIKE
    ignores the case of ASCII letters (/Docs/ is not below /docs/); the LIKE narrows the rows
    first where an index can serve it."""
    return and_(
        column.like(like_escape(path) + "%", escape="\\"),
        func.substr(column, 1, len(path)) == path,
    )


async def delete_folder(db: Database, owner: str | None, path: str) -> bool:
    """Remove an empty folder; False when it (or a subfolder) still holds files."""
    owner_cond = files.c.owner == owner if owner is not None else files.c.owner.is_(None)
    busy_query = select(files.c.id).where(owner_cond, _under(files.c.folder, path)).limit(1)
    remove = delete(folders).where(folders.c.owner == (owner or ""), _under(folders.c.path, path))

    def work(conn: Connection) -> bool:
        if conn.execute(busy_query).first() is not None:
            return False
        conn.execute(remove)
        return True

    return await db.write(work)
