"""Storage accounting: what the service holds for an owner, counted one way for every caller.

Everything the service keeps for an owner counts against the owner's quota:

- files in every state (received, validating, committed, failed), and rejected files while
  their bytes are kept in quarantine (``quarantine_until`` is set until they are purged);
- the thumbnails stored next to a file (``thumbnail_bytes``), with the file: they are made
  after the upload was accepted, so they may take an owner a few hundred kilobytes past the
  quota once, and the next creation sees them;
- uploads in progress, by their declared length, or by the bytes so far while the length is
  deferred (final uploads of a concatenation included, once their length is known);
- partial uploads of a concatenation, in progress or finished, until they expire or are
  deleted.

A finished upload that is not a partial is counted through the file it became, never twice.
The creation of an upload, the declaration of a deferred length and the length of a final
upload are checked and recorded in one transaction with the owner's usage
(:func:`reserve`), so concurrent requests cannot go past the quota together.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import ColumnElement, and_, func, or_, select, text
from sqlalchemy.engine import Connection

from .schema import files, uploads

__all__ = ["QuotaExceeded", "lock_owner", "quota_limit", "reserve", "used_bytes"]

#: Upload states whose bytes (or declared length) are held for the owner.
_OPEN_UPLOADS = ("receiving", "concatenating")
#: File states whose bytes are held for the owner (rejected: while in quarantine).
_HELD_FILES = ("received", "validating", "committed", "failed")
#: The first key of the two-key advisory locks of quota checks ('quot'): a key space apart
#: from the one-key (bigint) advisory locks of uploads and migrations.
_QUOTA_LOCK_CLASS = 0x71756F74


class QuotaExceeded(Exception):
    """``asked`` more bytes would take the owner past ``limit`` (``used`` already held)."""

    def __init__(self, *, used: int, limit: int, asked: int) -> None:
        super().__init__(used, limit, asked)
        self.used = used
        self.limit = limit
        self.asked = asked

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)

    def __str__(self) -> str:
        return (
            f"storage quota exceeded: {self.asked} bytes asked, "
            f"{self.left} bytes left in your quota"
        )


def quota_limit(*, role: str, quota_bytes: int | None, default: int) -> int | None:
    """The quota of a user in bytes, None for none: the user's own, else the server default
    (0 or None: no quota). Administrators have none."""
    if role == "admin":
        return None
    return quota_bytes or default or None


def _held_by(owner: str, exclude_upload: str | None) -> tuple[ColumnElement[int], ...]:
    open_upload = or_(
        uploads.c.state.in_(_OPEN_UPLOADS),
        and_(uploads.c.state == "finished", uploads.c.is_partial.is_(True)),
    )
    upload_cond = [uploads.c.owner == owner, open_upload]
    if exclude_upload is not None:
        upload_cond.append(uploads.c.id != exclude_upload)
    in_uploads = (
        select(func.coalesce(func.sum(func.coalesce(uploads.c.length, uploads.c.offset)), 0))
        .where(*upload_cond)
        .scalar_subquery()
    )
    in_files = (
        select(func.coalesce(func.sum(files.c.size + files.c.thumbnail_bytes), 0))
        .where(
            files.c.owner == owner,
            or_(
                files.c.status.in_(_HELD_FILES),
                and_(files.c.status == "rejected", files.c.quarantine_until.is_not(None)),
            ),
        )
        .scalar_subquery()
    )
    return in_uploads, in_files


def used_bytes(conn: Connection, owner: str, *, exclude_upload: str | None = None) -> int:
    """Bytes the service holds for ``owner`` (the one query; see the module's docstring).

    ``exclude_upload``: leave that upload out (its new size is being decided).
    """
    in_uploads, in_files = _held_by(owner, exclude_upload)
    return int(conn.execute(select(in_uploads + in_files)).scalar_one())


def lock_owner(conn: Connection, owner: str) -> None:
    """Serialize quota decisions of one owner until the transaction ends.

    PostgreSQL: a transaction-level advisory lock on the owner. SQLite: nothing to do, its
    writers are serialized (one connection per process; across processes a transaction that
    read before another wrote fails to commit and the unit of work runs again).
    """
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(owner.encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    conn.execute(
        text("SELECT pg_advisory_xact_lock(:cls, :key)"),
        {"cls": _QUOTA_LOCK_CLASS, "key": key},
    )


def reserve(
    conn: Connection,
    owner: str,
    *,
    limit: int,
    asked: int,
    exclude_upload: str | None = None,
) -> None:
    """Inside a write transaction: lock the owner's accounting and raise
    :class:`QuotaExceeded` unless ``asked`` more bytes fit in ``limit``. The caller then
    records them in the same transaction."""
    lock_owner(conn, owner)
    used = used_bytes(conn, owner, exclude_upload=exclude_upload)
    if used + asked > limit:
        raise QuotaExceeded(used=used, limit=limit, asked=asked)
