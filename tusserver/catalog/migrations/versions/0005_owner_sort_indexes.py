"""per-owner sort indexes: name, size and date (with id) for keyset pages of one owner

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Measured on PostgreSQL with 1,000,000 files (benchmarks/search_bench.py): sorting one owner's
files by name or size walked the global index and discarded other owners' rows (62-84 ms);
with these indexes the same queries take about 1 ms.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_files_owner_name_folded_id", "files", ["owner", "name_folded", "id"])
    op.create_index("ix_files_owner_size_id", "files", ["owner", "size", "id"])
    op.create_index("ix_files_owner_created_at_id", "files", ["owner", "created_at", "id"])
    op.drop_index("ix_files_owner_created_at", "files")


def downgrade() -> None:
    op.create_index("ix_files_owner_created_at", "files", ["owner", "created_at"])
    op.drop_index("ix_files_owner_created_at_id", "files")
    op.drop_index("ix_files_owner_size_id", "files")
    op.drop_index("ix_files_owner_name_folded_id", "files")
