"""search columns and indexes, tags, folders, events and hourly rollups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from tusserver.catalog.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(
            sa.Column("name_folded", sa.String(255), nullable=False, server_default="")
        )
    op.execute("UPDATE files SET name_folded = lower(name)")
    op.create_index("ix_files_created_at_id", "files", ["created_at", "id"])
    op.create_index("ix_files_owner_folder", "files", ["owner", "folder"])
    op.create_index("ix_files_name_folded", "files", ["name_folded"])
    op.create_index("ix_files_size", "files", ["size"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Substring search on names: a trigram index (needs the pg_trgm extension; when the
        # role may not create it, search still works, only slower).
        bind.exec_driver_sql("SAVEPOINT trgm")
        try:
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            bind.exec_driver_sql(
                "CREATE INDEX ix_files_name_trgm ON files USING gin (name_folded gin_trgm_ops)"
            )
            bind.exec_driver_sql("RELEASE SAVEPOINT trgm")
        except Exception:
            bind.exec_driver_sql("ROLLBACK TO SAVEPOINT trgm")
    op.create_table(
        "file_tags",
        sa.Column(
            "file_id",
            sa.String(32),
            sa.ForeignKey("files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_index("ix_file_tags_tag", "file_tags", ["tag", "file_id"])
    op.create_table(
        "folders",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("file_id", sa.String(32), nullable=True),
        sa.Column("upload_id", sa.String(64), nullable=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("detail", sa.String(255), nullable=True),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_table(
        "analytics_rollup",
        sa.Column("hour", UTCDateTime, primary_key=True),
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("dim", sa.String(300), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_analytics_rollup_owner_hour", "analytics_rollup", ["owner", "hour"])


def downgrade() -> None:
    op.drop_table("analytics_rollup")
    op.drop_table("events")
    op.drop_table("folders")
    op.drop_table("file_tags")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql("DROP INDEX IF EXISTS ix_files_name_trgm")
    op.drop_index("ix_files_size", "files")
    op.drop_index("ix_files_name_folded", "files")
    op.drop_index("ix_files_owner_folder", "files")
    op.drop_index("ix_files_created_at_id", "files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("name_folded")
