"""files and file_uploads; uploads.file_id

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from tusserver.catalog.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("file_id", sa.String(32), nullable=True))
    op.create_table(
        "files",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("folder", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("declared_type", sa.String(255), nullable=True),
        sa.Column("detected_type", sa.String(255), nullable=True),
        sa.Column("category", sa.String(16), nullable=True),
        sa.Column("type_mismatch", sa.Boolean, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=True),
        sa.Column("store", sa.String(16), nullable=True),
        sa.Column("storage_key", sa.String(1024), nullable=True),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("committed_at", UTCDateTime, nullable=True),
        sa.Column("quarantine_until", UTCDateTime, nullable=True),
    )
    op.create_index("ix_files_status_next_attempt_at", "files", ["status", "next_attempt_at"])
    op.create_index("ix_files_owner_created_at", "files", ["owner", "created_at"])
    op.create_table(
        "file_uploads",
        sa.Column(
            "file_id",
            sa.String(32),
            sa.ForeignKey("files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("upload_id", sa.String(64), nullable=False, unique=True),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("client", sa.String(255), nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("file_uploads")
    op.drop_table("files")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("file_id")
