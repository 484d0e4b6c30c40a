"""Repository of files: what finished uploads became, and the pipeline's durable state."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from .db import Database
from .schema import file_uploads, files, uploads

__all__ = ["FileRecord", "FileRepository", "FileStatus", "NewFile"]


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
    )


_SELECT = select(files, file_uploads.c.upload_id).join(
    file_uploads, file_uploads.c.file_id == files.c.id, isouter=True
)


class FileRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_for_upload(self, new: NewFile, now: dt.datetime) -> str:
        """Insert the file row for an upload, once: returns the file id (existing or new).

        The unique upload_id in file_uploads makes this idempotent across retries and
        instances; the upload row points back at the file.
        """
        async with self._db.engine.begin() as conn:
            existing = (
                await conn.execute(
                    select(file_uploads.c.file_id).where(file_uploads.c.upload_id == new.upload_id)
                )
            ).scalar()
            if existing is not None:
                return str(existing)
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(files).values(
                        id=new.id,
                        owner=new.owner,
                        name=new.name,
                        folder="/",
                        size=new.size,
                        declared_type=new.declared_type,
                        type_mismatch=False,
                        status=FileStatus.RECEIVED.value,
                        meta=dict(new.metadata),
                        tags=[],
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await conn.execute(
                    insert(file_uploads).values(
                        file_id=new.id,
                        upload_id=new.upload_id,
                        protocol=new.protocol,
                        client=new.client,
                        started_at=new.started_at,
                        finished_at=new.finished_at,
                        bytes=new.size,
                    )
                )
                await conn.execute(
                    update(uploads).where(uploads.c.id == new.upload_id).values(file_id=new.id)
                )
        except IntegrityError:
            # Another worker or instance created it first.
            async with self._db.engine.connect() as conn:
                existing = (
                    await conn.execute(
                        select(file_uploads.c.file_id).where(
                            file_uploads.c.upload_id == new.upload_id
                        )
                    )
                ).scalar()
            if existing is None:
                raise
            return str(existing)
        return new.id

    async def get(self, file_id: str) -> FileRecord | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(_SELECT.where(files.c.id == file_id))).mappings().first()
        return None if row is None else _record(row)

    async def due(self, now: dt.datetime, limit: int = 20) -> list[str]:
        """Pending files whose next attempt is due and that no live worker holds."""
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                select(files.c.id)
                .where(
                    files.c.status.in_(PENDING),
                    or_(files.c.next_attempt_at.is_(None), files.c.next_attempt_at <= now),
                    or_(files.c.lease_until.is_(None), files.c.lease_until < now),
                )
                .order_by(files.c.next_attempt_at)
                .limit(limit)
            )
            return [r[0] for r in rows]

    async def claim(self, file_id: str, now: dt.datetime, lease: dt.timedelta) -> bool:
        """Take a pending file for one worker (any instance); False if someone else has it."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(files)
                .where(
                    and_(
                        files.c.id == file_id,
                        files.c.status.in_(PENDING),
                        or_(files.c.lease_until.is_(None), files.c.lease_until < now),
                    )
                )
                .values(
                    lease_until=now + lease,
                    status=FileStatus.VALIDATING.value,
                    attempts=files.c.attempts + 1,
                    updated_at=now,
                )
            )
            return result.rowcount == 1

    async def update(self, file_id: str, **values: Any) -> None:
        if isinstance(values.get("status"), FileStatus):
            values["status"] = values["status"].value
        async with self._db.engine.begin() as conn:
            await conn.execute(update(files).where(files.c.id == file_id).values(**values))

    async def make_all_due(self) -> None:
        """Operator retry: every pending file is due now (leases are kept)."""
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(files).where(files.c.status.in_(PENDING)).values(next_attempt_at=None)
            )

    async def pending_count(self) -> int:
        async with self._db.engine.connect() as conn:
            count = await conn.execute(
                select(func.count()).select_from(files).where(files.c.status.in_(PENDING))
            )
            return int(count.scalar_one())

    async def expired_quarantine(self, now: dt.datetime, limit: int = 200) -> list[FileRecord]:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                _SELECT.where(
                    files.c.status == FileStatus.REJECTED.value,
                    files.c.quarantine_until.is_not(None),
                    files.c.quarantine_until < now,
                ).limit(limit)
            )
            return [_record(r) for r in rows.mappings()]

    async def delete(self, file_id: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(delete(file_uploads).where(file_uploads.c.file_id == file_id))
            await conn.execute(delete(files).where(files.c.id == file_id))

    async def finished_uploads_without_file(self, limit: int = 100) -> list[str]:
        """Uploads finished (not partial) that the pipeline has not taken in yet (recovery)."""
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                select(uploads.c.id)
                .where(
                    uploads.c.state == "finished",
                    uploads.c.is_partial.is_(False),
                    uploads.c.file_id.is_(None),
                )
                .limit(limit)
            )
            return [r[0] for r in rows]
