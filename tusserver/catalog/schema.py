"""Tables of the catalog (SQLAlchemy Core). Alembic migrations create them; keep in step."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Update,
    bindparam,
    update,
)
from sqlalchemy.types import TypeDecorator

__all__ = [
    "UTCDateTime",
    "analytics_daily",
    "analytics_file_blocks",
    "analytics_rollup",
    "audit_log",
    "by_id_params",
    "events",
    "file_tags",
    "file_uploads",
    "files",
    "folders",
    "metadata",
    "rate_buckets",
    "refresh_tokens",
    "update_by_id",
    "upload_concat_parts",
    "uploads",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


uploads = Table(
    "uploads",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=True, index=True),
    # NULL while the length is deferred.
    Column("length", BigInteger, nullable=True),
    # Progress as last acknowledged; the chunk store's own count is the truth it came from.
    # While a body of a deferred-length upload is received under a quota, it also counts the
    # bytes reserved for that body (catalog/usage.py), settled once the body is in.
    Column("offset", BigInteger, nullable=False, default=0),
    # {key: base64 of the raw value, or null}: values are arbitrary bytes.
    Column("meta", JSON, nullable=False),
    Column("is_partial", Boolean, nullable=False, default=False),
    Column("is_final", Boolean, nullable=False, default=False),
    # receiving | concatenating | finished | terminated | expired
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    # The file this upload became (set by the pipeline when it takes the upload in).
    Column("file_id", String(32), nullable=True),
    Index("ix_uploads_state_expires_at", "state", "expires_at"),
)

upload_concat_parts = Table(
    "upload_concat_parts",
    metadata,
    Column(
        "final_id",
        String(64),
        ForeignKey("uploads.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("part_id", String(64), nullable=False, index=True),
)

files = Table(
    "files",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("name", String(255), nullable=False),
    # The name folded (catalog.files.fold_name: no case, one Unicode form), cut to 255: what
    # name search and the name sort compare.
    Column("name_folded", String(255), nullable=False),
    Column("folder", String(1024), nullable=False, default="/"),
    Column("size", BigInteger, nullable=False),
    Column("declared_type", String(255), nullable=True),
    Column("detected_type", String(255), nullable=True),
    Column("category", String(16), nullable=True),
    Column("type_mismatch", Boolean, nullable=False, default=False),
    Column("sha256", String(64), nullable=True),
    # received | validating | committed | rejected | failed
    Column("status", String(16), nullable=False),
    Column("reason", String(1024), nullable=True),
    Column("store", String(16), nullable=True),
    Column("storage_key", String(1024), nullable=True),
    # {key: text value} of the client's metadata, for display and search.
    Column("meta", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    # Who holds the lease (migration 0010): see tusserver.pipeline.holders.
    Column("lease_holder", String(160), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("committed_at", UTCDateTime, nullable=True),
    Column("quarantine_until", UTCDateTime, nullable=True),
    # What the media probe found (migration 0008): image, video or audio; NULL otherwise.
    Column("media_kind", String(8), nullable=True),
    # As displayed (after EXIF orientation or a video's rotation).
    Column("media_width", Integer, nullable=True),
    Column("media_height", Integer, nullable=True),
    Column("media_duration", Float, nullable=True),  # seconds
    # landscape | portrait | square, from width and height (the `orientation` search filter).
    Column("media_orientation", String(10), nullable=True),
    # The files API's `media` object, exactly.
    Column("media_info", JSON, nullable=True),
    # {"256": bytes, "1024": bytes}: the WebP thumbnails stored next to the object.
    Column("thumbnails", JSON, nullable=True),
    Column("location_stripped", Boolean, nullable=False, default=False),
    # The sum of the thumbnails' bytes (migration 0011): held for the owner, so in the usage.
    Column("thumbnail_bytes", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_files_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_files_owner_created_at_id", "owner", "created_at", "id"),
    Index("ix_files_owner_name_folded_id", "owner", "name_folded", "id"),
    Index("ix_files_owner_size_id", "owner", "size", "id"),
    Index("ix_files_created_at_id", "created_at", "id"),
    Index("ix_files_owner_folder", "owner", "folder"),
    Index("ix_files_name_folded", "name_folded"),
    Index("ix_files_size", "size"),
    # The media search filters within an owner's files (migration 0008).
    Index(
        "ix_files_owner_media_orientation_created_at", "owner", "media_orientation", "created_at"
    ),
    Index("ix_files_owner_media_width", "owner", "media_width"),
    Index("ix_files_owner_media_height", "owner", "media_height"),
    Index("ix_files_owner_media_duration", "owner", "media_duration"),
    # PostgreSQL only (migrations 0004, 0006): ix_files_name_trgm, a trigram index for
    # substrings, and ix_files_name_folded_pattern (name_folded text_pattern_ops) for prefixes
    # under any collation.
)

file_uploads = Table(
    "file_uploads",
    metadata,
    Column("file_id", String(32), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    # The tus upload (or form upload) the bytes came in by; unique: one file per upload.
    Column("upload_id", String(64), nullable=False, unique=True),
    Column("protocol", String(16), nullable=False),
    Column("client", String(255), nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    # auth.users.fold_username(username): unique, so names differing only in case are one.
    # NULL only for accounts from before migration 0013 whose folded name an older account
    # already held (see that migration).
    Column("username_folded", String(255), nullable=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),  # user | admin
    Column("disabled", Boolean, nullable=False, default=False),
    # Bytes of storage the user may hold; NULL: the server default.
    Column("quota_bytes", BigInteger, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Tokens issued before this instant are refused (logout everywhere, disable).
    Column("tokens_valid_after", UTCDateTime, nullable=True),
    Index("ix_users_username_folded", "username_folded", unique=True),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    # The session: the jti of the token a login issued, shared by every rotation of it.
    Column("family", String(64), nullable=True),
    # The jti this token was rotated into (set when it was used): reuse is then theft.
    Column("replaced_by", String(64), nullable=True),
    Index("ix_refresh_tokens_user_id", "user_id"),
    Index("ix_refresh_tokens_family", "family"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("ip", String(64), nullable=True),
    Column("detail", JSON, nullable=False),
    Index("ix_audit_log_at", "at"),
)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

file_tags = Table(
    "file_tags",
    metadata,
    Column("file_id", String(32), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(64), primary_key=True),
    # The file's created_at, copied (files.created_at never changes; every write of the tags
    # sets it): a tag's files newest first, across owners, are one range of the index below.
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_file_tags_tag_created_at_file_id", "tag", "created_at", "file_id"),
)

folders = Table(
    "folders",
    metadata,
    Column("owner", String(64), primary_key=True),
    # "/a/b/" style: starts and ends with "/"; the root "/" always exists implicitly.
    Column("path", String(1024), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    # upload.started | upload.finished | file.committed | file.rejected | file.downloaded
    # | file.deleted
    Column("kind", String(32), nullable=False),
    Column("owner", String(64), nullable=True),
    Column("file_id", String(32), nullable=True),
    Column("upload_id", String(64), nullable=True),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("duration_ms", Integer, nullable=True),
    Column("client", String(255), nullable=True),
    Column("detail", String(255), nullable=True),
    Index("ix_events_at", "at"),
)

#: Per-hour aggregates of events, maintained as events are written: analytics read these,
#: never the raw events, so queries stay fast however many events accumulate.
analytics_rollup = Table(
    "analytics_rollup",
    metadata,
    Column("hour", UTCDateTime, primary_key=True),
    Column("owner", String(64), primary_key=True),  # "" for no owner
    Column("kind", String(32), primary_key=True),
    # "" for the total; "type:<mime>", "reason:<text>" or "file:<id>" for breakdowns.
    Column("dim", String(300), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    # The series of a report (its dim = "" rows) and its breakdowns by kind (migration 0006).
    Index("ix_analytics_rollup_owner_dim_hour", "owner", "dim", "hour"),
    Index("ix_analytics_rollup_owner_kind_hour", "owner", "kind", "hour"),
)


@functools.lru_cache(maxsize=128)
def update_by_id(table: Table, columns: tuple[str, ...]) -> Update:
    """``UPDATE table SET c = :v_c, ... WHERE id = :row_id``, built once per column set.

    Execute it with ``{"row_id": ..., "v_<column>": ...}`` (see :func:`by_id_params`). A
    statement object built once keeps its cache key: building one per call cost more CPU
    than running it on SQLite (the hot tus path updates a row per request).
    """
    return (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values({name: bindparam("v_" + name) for name in columns})
    )


def by_id_params(row_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of :func:`update_by_id`'s statement for ``values``."""
    params = {"v_" + k: v for k, v in values.items()}
    params["row_id"] = row_id
    return params


#: The rows of analytics_rollup summed per UTC day, except the per-file ones ("file:<id>"),
#: maintained with it (same transaction): a report by day reads these for the whole days of its
#: range, and the hourly rows only for the hours of its first and last days outside them
#: (migration 0007). Per-file rows are not kept per day: files are rarely downloaded twice in
#: a day, so they would be nearly as many.
analytics_daily = Table(
    "analytics_daily",
    metadata,
    Column("owner", String(64), primary_key=True),  # as in analytics_rollup
    Column("day", UTCDateTime, primary_key=True),  # midnight UTC
    Column("kind", String(32), primary_key=True),
    Column("dim", String(300), primary_key=True),  # "", "type:<mime>" or "reason:<text>"
    Column("count", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
)

#: Downloads per file and overlapping block of days, maintained with analytics_rollup (same
#: transaction, same owners): a block starts every 32 days and spans 64, so every day is in two
#: blocks and every range of up to 33 days lies inside one. A file's count in that block bounds
#: its count in the range, so a report ranks the top files by checking only the few files whose
#: bound reaches the top (analytics.top_files), not every file downloaded in the range
#: (migration 0007).
analytics_file_blocks = Table(
    "analytics_file_blocks",
    metadata,
    Column("owner", String(64), primary_key=True),  # as in analytics_rollup; "*": everyone
    # The block's first day, in days since 1970-01-01 (UTC): a multiple of 32.
    Column("block", Integer, primary_key=True),
    Column("dim", String(300), primary_key=True),  # "file:<id>", the dim of analytics_rollup
    Column("count", BigInteger, nullable=False),
    # A block's files by count, highest first (the bounds, in the order they are checked).
    Index("ix_analytics_file_blocks_owner_block_count", "owner", "block", "count"),
)
