"""lease holder: which process holds a file's pipeline lease

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

A process restarted after a crash takes back, at once, the files its dead predecessor on the
same host held, instead of waiting for their leases to run out (tusserver.pipeline.holders).
Leases taken before this revision have no holder and run out as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("lease_holder", sa.String(160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("lease_holder")
