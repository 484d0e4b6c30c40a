"""uploads and concatenation parts

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from tusserver.catalog.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("length", sa.BigInteger, nullable=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("is_partial", sa.Boolean, nullable=False),
        sa.Column("is_final", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_uploads_owner", "uploads", ["owner"])
    op.create_index("ix_uploads_state_expires_at", "uploads", ["state", "expires_at"])
    op.create_table(
        "upload_concat_parts",
        sa.Column(
            "final_id",
            sa.String(64),
            sa.ForeignKey("uploads.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("part_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_upload_concat_parts_part_id", "upload_concat_parts", ["part_id"])


def downgrade() -> None:
    op.drop_table("upload_concat_parts")
    op.drop_table("uploads")
