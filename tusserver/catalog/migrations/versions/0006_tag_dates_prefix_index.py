"""file_tags.created_at, a copy of each file's, with index (tag, created_at, file_id);
analytics_rollup indexes (owner, dim, hour) and (owner, kind, hour) instead of (owner, hour);
on PostgreSQL a pattern index for name prefixes and a finer histogram of name_folded

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Measured on PostgreSQL with 1,000,000 files and 10,000,000 events (EXPLAIN ANALYZE, see
benchmarks/README.md, search benchmark):

- The newest files with a tag, across owners, walked the global date index and probed file_tags
  for every file (74-173 ms); the tag's entries in date order are one range of the new index
  (0.4 ms). It also serves "all files with this tag", as ix_file_tags_tag did.
- A name prefix across owners was estimated at 15 rows instead of 12,000 (the range fell inside
  one of the 100 histogram buckets), so all matches were fetched and sorted: 26 ms, 2 ms with
  1000 buckets (the date index, filtered). A rare prefix is an index range instead: on a
  database whose collation is not "C", only with text_pattern_ops (LIKE 'abc%' cannot use a
  default btree there; the test and benchmark clusters are "C").
- A service-wide report's series read the month's 220,000 rollup rows to keep the 4,300 with
  dim "" (42-62 ms, 8 ms by owner, dim, hour); its breakdowns read only their kinds.
"""

import sqlalchemy as sa
from alembic import op

from tusserver.catalog.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_files = sa.table("files", sa.column("id"), sa.column("created_at"))
_file_tags = sa.table("file_tags", sa.column("file_id"), sa.column("created_at"))


def upgrade() -> None:
    op.drop_index("ix_file_tags_tag", "file_tags")
    op.add_column("file_tags", sa.Column("created_at", UTCDateTime, nullable=True))
    op.execute(
        _file_tags.update().values(
            created_at=sa.select(_files.c.created_at)
            .where(_files.c.id == _file_tags.c.file_id)
            .scalar_subquery()
        )
    )
    with op.batch_alter_table("file_tags") as batch:
        batch.alter_column("created_at", existing_type=UTCDateTime, nullable=False)
    op.create_index(
        "ix_file_tags_tag_created_at_file_id", "file_tags", ["tag", "created_at", "file_id"]
    )
    op.create_index(
        "ix_analytics_rollup_owner_dim_hour", "analytics_rollup", ["owner", "dim", "hour"]
    )
    op.create_index(
        "ix_analytics_rollup_owner_kind_hour", "analytics_rollup", ["owner", "kind", "hour"]
    )
    op.drop_index("ix_analytics_rollup_owner_hour", "analytics_rollup")
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_files_name_folded_pattern",
            "files",
            ["name_folded"],
            postgresql_ops={"name_folded": "text_pattern_ops"},
        )
        # A finer histogram: with the default 100 buckets, a common prefix ("fina": 1.2 % of
        # the names) fell inside one bucket and was estimated at 15 rows, so the planner
        # fetched and sorted all 12,000 instead of walking the date index (26 ms, now 2 ms).
        op.execute("ALTER TABLE files ALTER COLUMN name_folded SET STATISTICS 1000")
        op.execute("ANALYZE files")  # ~5 s with 1,000,000 files


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE files ALTER COLUMN name_folded SET STATISTICS -1")
        op.drop_index("ix_files_name_folded_pattern", "files")
    op.create_index("ix_analytics_rollup_owner_hour", "analytics_rollup", ["owner", "hour"])
    op.drop_index("ix_analytics_rollup_owner_kind_hour", "analytics_rollup")
    op.drop_index("ix_analytics_rollup_owner_dim_hour", "analytics_rollup")
    op.drop_index("ix_file_tags_tag_created_at_file_id", "file_tags")
    with op.batch_alter_table("file_tags") as batch:
        batch.drop_column("created_at")
    op.create_index("ix_file_tags_tag", "file_tags", ["tag", "file_id"])
