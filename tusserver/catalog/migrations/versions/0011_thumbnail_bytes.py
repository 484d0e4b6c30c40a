"""files: thumbnail_bytes, the bytes of a file's thumbnails (counted in the owner's usage)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

The WebP thumbnails stored next to a file (migration 0008) are bytes the service holds for
the file's owner, so the usage query (catalog/usage.py) adds them to the file's size. Their
lengths are in the ``thumbnails`` JSON object ({"256": n, "1024": n}); a plain column keeps
the usage query a sum of columns. Existing rows are filled in from the JSON.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(
            sa.Column("thumbnail_bytes", sa.BigInteger, nullable=False, server_default="0")
        )
    if op.get_bind().dialect.name == "postgresql":
        total = "(SELECT SUM(value::bigint) FROM json_each_text(thumbnails))"
        is_object = "json_typeof(thumbnails) = 'object'"
    else:
        total = "(SELECT SUM(value) FROM json_each(thumbnails))"
        is_object = "json_type(thumbnails) = 'object'"
    op.execute(
        f"UPDATE files SET thumbnail_bytes = COALESCE({total}, 0) "  # noqa: S608 - constant
        f"WHERE thumbnails IS NOT NULL AND {is_object}"
    )


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("thumbnail_bytes")
