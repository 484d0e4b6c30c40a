"""Repository of tus uploads: the durable state behind every tus response."""

from __future__ import annotations

import base64
import datetime as dt
import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, union, update
from sqlalchemy.engine import Connection, RowMapping

from . import fastsql
from .db import Database
from .schema import (
    by_id_params,
    file_uploads,
    files,
    update_by_id,
    upload_concat_parts,
    uploads,
)
from .usage import lock_owner, reserve, used_bytes

__all__ = ["UploadRecord", "UploadRepository", "UploadState"]


class UploadState(enum.StrEnum):
    RECEIVING = "receiving"
    #: A final upload waiting for its partial uploads (concatenation-unfinished).
    CONCATENATING = "concatenating"
    FINISHED = "finished"
    TERMINATED = "terminated"
    EXPIRED = "expired"
    #: Refused at the first bytes (forbidden type), or a final upload whose length went past
    #: the maximum size or the quota at concatenation; nothing more is accepted.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    owner: str | None
    length: int | None
    offset: int
    metadata: Mapping[str, bytes | None]
    is_partial: bool
    is_final: bool
    state: UploadState
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime | None
    #: The file this upload became, once the pipeline took it in.
    file_id: str | None = None
    #: That file's status when the record was read (:meth:`UploadRepository.get` reads it
    #: with the upload, for HEAD); None when not read or when there is no file.
    file_status: str | None = None

    @property
    def is_gone(self) -> bool:
        return self.state in (UploadState.TERMINATED, UploadState.EXPIRED, UploadState.REJECTED)


def _encode_meta(meta: Mapping[str, bytes | None]) -> dict[str, str | None]:
    return {k: None if v is None else base64.b64encode(v).decode("ascii") for k, v in meta.items()}


def _decode_meta(raw: Mapping[str, str | None]) -> dict[str, bytes | None]:
    return {k: None if v is None else base64.b64decode(v) for k, v in raw.items()}


def _record(row: RowMapping) -> UploadRecord:
    return UploadRecord(
        id=row["id"],
        owner=row["owner"],
        length=row["length"],
        offset=row["offset"],
        metadata=_decode_meta(row["meta"]),
        is_partial=row["is_partial"],
        is_final=row["is_final"],
        state=UploadState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        file_id=row["file_id"],
        file_status=row.get("file_status"),
    )


class UploadRepository:
    """Each method is one unit of work on the catalog (see :class:`Database`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self, record: UploadRecord, parts: Sequence[str] = (), *, quota: int | None = None
    ) -> None:
        """Insert an upload (and the parts of a final one).

        ``quota``: the owner's quota; the upload's length (0 while deferred) must fit in what
        is left of it, checked in the same transaction (else
        :class:`~tusserver.catalog.usage.QuotaExceeded`).
        """
        values: dict[str, Any] = {
            "id": record.id,
            "owner": record.owner,
            "length": record.length,
            "offset": record.offset,
            "meta": _encode_meta(record.metadata),
            "is_partial": record.is_partial,
            "is_final": record.is_final,
            "state": record.state.value,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "expires_at": record.expires_at,
        }
        rows = [{"final_id": record.id, "position": i, "part_id": p} for i, p in enumerate(parts)]

        def work(conn: Connection) -> None:
            if quota is not None and record.owner is not None:
                reserve(conn, record.owner, limit=quota, asked=record.length or 0)
            fastsql.execute(conn, _INSERT, values)
            if rows:
                conn.execute(insert(upload_concat_parts), rows)

        await self._db.write(work, quick=quota is None)

    async def update_within_quota(
        self, upload_id: str, owner: str, *, quota: int, size: int, **values: Any
    ) -> None:
        """Update an upload whose size becomes ``size`` (a declared length), in one
        transaction with the check that it fits in the owner's ``quota``
        (else :class:`~tusserver.catalog.usage.QuotaExceeded`)."""
        if "state" in values and isinstance(values["state"], UploadState):
            values["state"] = values["state"].value
        stmt = update_by_id(uploads, tuple(values))
        params = by_id_params(upload_id, values)

        def work(conn: Connection) -> None:
            reserve(conn, owner, limit=quota, asked=size, exclude_upload=upload_id)
            conn.execute(stmt, params)

        await self._db.write(work)

    async def reserve_body(
        self, upload_id: str, owner: str, *, quota: int, offset: int, want: int | None, exact: bool
    ) -> tuple[int, bool]:
        """Before a body of a deferred-length upload at ``offset``: what it may bring within
        the owner's ``quota`` (``want`` at most; None: all that is left), and whether that is
        now counted. It is counted at once, under the owner's lock, as the upload's ``offset``
        column (offset + the bytes granted) until :meth:`settle_offset`, so concurrent bodies
        cannot go past the quota together. ``exact``: ``want`` or nothing (a body of a known
        size that does not fit is refused whole, and nothing is counted for it)."""

        def work(conn: Connection) -> tuple[int, bool]:
            lock_owner(conn, owner)
            left = max(0, quota - used_bytes(conn, owner, exclude_upload=upload_id) - offset)
            if exact and want is not None and want > left:
                return left, False
            grant = left if want is None else min(left, want)
            conn.execute(_SET_OFFSET, by_id_params(upload_id, {"offset": offset + grant}))
            return grant, True

        return await self._db.write(work)

    async def settle_offset(self, upload_id: str, offset: int) -> None:
        """After a body of a deferred-length upload: count what it really brought."""
        stmt = (
            update(uploads)
            .where(
                uploads.c.id == upload_id,
                uploads.c.length.is_(None),
                uploads.c.state == UploadState.RECEIVING.value,
            )
            .values(offset=offset)
        )
        await self._db.write(lambda conn: conn.execute(stmt), quick=True)

    async def used_bytes(self, owner: str) -> int:
        """Bytes the service holds for ``owner``: see :mod:`tusserver.catalog.usage`."""
        return await self._db.read(lambda conn: used_bytes(conn, owner))

    async def get(self, upload_id: str) -> UploadRecord | None:
        def work(conn: Connection) -> UploadRecord | None:
            row = fastsql.first(conn, _BY_ID, {"id": upload_id})
            return None if row is None else _record(row)

        return await self._db.read(work, quick=True)

    async def get_many(self, upload_ids: Sequence[str]) -> dict[str, UploadRecord]:
        if not upload_ids:
            return {}
        query = select(uploads).where(uploads.c.id.in_(set(upload_ids)))

        def work(conn: Connection) -> dict[str, UploadRecord]:
            return {r["id"]: _record(r) for r in conn.execute(query).mappings()}

        return await self._db.read(work)

    async def known_ids(self, upload_ids: Collection[str]) -> set[str]:
        """Those of ``upload_ids`` the catalog names: by an upload row, or by a file's link
        to the upload its bytes came by. One query (both columns are indexed); the orphan
        sweep asks a page of a chunk store's listing at a time."""
        if not upload_ids:
            return set()
        ids = sorted(set(upload_ids))
        query = union(
            select(uploads.c.id).where(uploads.c.id.in_(ids)),
            select(file_uploads.c.upload_id).where(file_uploads.c.upload_id.in_(ids)),
        )
        return await self._db.read(lambda conn: set(conn.execute(query).scalars()))

    async def parts_of(self, final_id: str) -> list[str]:
        query = (
            select(upload_concat_parts.c.part_id)
            .where(upload_concat_parts.c.final_id == final_id)
            .order_by(upload_concat_parts.c.position)
        )
        return await self._db.read(lambda conn: list(conn.execute(query).scalars()))

    async def finals_waiting_on(self, part_id: str) -> list[str]:
        """Final uploads still concatenating that include ``part_id``."""
        query = (
            select(uploads.c.id)
            .join(upload_concat_parts, upload_concat_parts.c.final_id == uploads.c.id)
            .where(
                upload_concat_parts.c.part_id == part_id,
                uploads.c.state == UploadState.CONCATENATING.value,
            )
            .distinct()
        )
        return await self._db.read(lambda conn: list(conn.execute(query).scalars()))

    async def update(self, upload_id: str, **values: Any) -> None:
        """Update columns of one upload (``state`` may be an UploadState)."""
        if "state" in values and isinstance(values["state"], UploadState):
            values["state"] = values["state"].value
        stmt = update_by_id(uploads, tuple(values))
        params = by_id_params(upload_id, values)
        await self._db.write(lambda conn: fastsql.execute(conn, stmt, params), quick=True)

    async def expired_ids(self, now: dt.datetime, limit: int = 500) -> list[str]:
        """Unfinished uploads, and finished partial uploads, whose expiry has passed; not a
        finished partial that a final still waits for (the final expires first, its expiry
        moved by its other partials' progress, and then the partial)."""
        final = uploads.alias("final")
        waited_for = (
            select(upload_concat_parts.c.part_id)
            .join(final, final.c.id == upload_concat_parts.c.final_id)
            .where(
                upload_concat_parts.c.part_id == uploads.c.id,
                final.c.state == UploadState.CONCATENATING.value,
            )
            .exists()
        )
        query = (
            select(uploads.c.id)
            .where(
                or_(
                    uploads.c.state.in_(
                        [UploadState.RECEIVING.value, UploadState.CONCATENATING.value]
                    ),
                    and_(
                        uploads.c.state == UploadState.FINISHED.value,
                        uploads.c.is_partial.is_(True),
                        ~waited_for,
                    ),
                ),
                uploads.c.expires_at.is_not(None),
                uploads.c.expires_at < now,
            )
            .limit(limit)
        )
        return await self._db.read(lambda conn: list(conn.execute(query).scalars()))

    async def tombstones_before(
        self,
        cutoff: dt.datetime,
        limit: int = 500,
        *,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[tuple[dt.datetime, str]]:
        """Ended uploads last updated before ``cutoff``, as (updated_at, id) in that order;
        ``after``: the page after that key (the last of the page before)."""
        gone = [UploadState.TERMINATED.value, UploadState.EXPIRED.value, UploadState.REJECTED.value]
        query = select(uploads.c.updated_at, uploads.c.id).where(
            uploads.c.state.in_(gone), uploads.c.updated_at < cutoff
        )
        if after is not None:
            at, last = after
            query = query.where(
                or_(
                    uploads.c.updated_at > at,
                    and_(uploads.c.updated_at == at, uploads.c.id > last),
                )
            )
        query = query.order_by(uploads.c.updated_at, uploads.c.id).limit(limit)
        return await self._db.read(lambda conn: [(r[0], r[1]) for r in conn.execute(query)])

    async def end_quarantine(self, file_id: str) -> None:
        """A rejected file whose bytes (its upload's) were deleted: it holds them no more."""
        stmt = (
            update(files)
            .where(files.c.id == file_id, files.c.status == "rejected")
            .values(quarantine_until=None)
        )
        await self._db.write(lambda conn: conn.execute(stmt))

    async def delete(self, upload_id: str) -> None:
        stmt = delete(uploads).where(uploads.c.id == upload_id)
        await self._db.write(lambda conn: conn.execute(stmt))


#: Built once: the most frequent statements of the tus hot path.
#: The upload, and the status of the file it became (one read for HEAD instead of two).
_BY_ID = (
    select(uploads, files.c.status.label("file_status"))
    .select_from(uploads.outerjoin(files, files.c.id == uploads.c.file_id))
    .where(uploads.c.id == bindparam("id"))
)
_INSERT = insert(uploads)
_SET_OFFSET = update_by_id(uploads, ("offset",))
