"""files: media facts (kind, width, height, duration, orientation, the `media` object),
thumbnail sizes and location_stripped, with indexes for the media search filters

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

The filters (orientation, min/max width, height and duration) are served within an owner's
files, like the other filters (migration 0005): (owner, media_orientation, created_at) keeps
the newest-first order of a shape's files one index range; the width, height and duration
indexes are ranges on (owner, value). Existing files get NULLs (not probed) and
location_stripped false.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_files_owner_media_orientation_created_at": ["owner", "media_orientation", "created_at"],
    "ix_files_owner_media_width": ["owner", "media_width"],
    "ix_files_owner_media_height": ["owner", "media_height"],
    "ix_files_owner_media_duration": ["owner", "media_duration"],
}


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("media_kind", sa.String(8), nullable=True))
        batch.add_column(sa.Column("media_width", sa.Integer, nullable=True))
        batch.add_column(sa.Column("media_height", sa.Integer, nullable=True))
        batch.add_column(sa.Column("media_duration", sa.Float, nullable=True))
        batch.add_column(sa.Column("media_orientation", sa.String(10), nullable=True))
        batch.add_column(sa.Column("media_info", sa.JSON, nullable=True))
        batch.add_column(sa.Column("thumbnails", sa.JSON, nullable=True))
        batch.add_column(
            sa.Column("location_stripped", sa.Boolean, nullable=False, server_default=sa.false())
        )
    for name, columns in _INDEXES.items():
        op.create_index(name, "files", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, "files")
    with op.batch_alter_table("files") as batch:
        for column in (
            "location_stripped",
            "thumbnails",
            "media_info",
            "media_orientation",
            "media_duration",
            "media_height",
            "media_width",
            "media_kind",
        ):
            batch.drop_column(column)
