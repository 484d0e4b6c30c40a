"""Tables of the catalog (SQLAlchemy Core). Alembic migrations create them; keep in step."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator

__all__ = ["UTCDateTime", "metadata", "upload_concat_parts", "uploads"]

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
