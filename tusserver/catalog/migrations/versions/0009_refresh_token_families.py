"""refresh token families: the session a refresh token belongs to, and what it was rotated into

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-06

A refresh token is used once and rotated into a new one of the same family (the session a
login started). ``replaced_by`` records the rotation, so a second use of a rotated token is
recognized as reuse (a stolen copy) and revokes the whole family, the token it was rotated
into included (OAuth 2.0 Security Best Current Practice, refresh token rotation). Tokens
issued before this revision are each their own family.

Numbered 0009 so it does not collide with another 0008 under way; it follows whatever
revision is the head when it is merged.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("refresh_tokens", sa.Column("family", sa.String(64), nullable=True))
    op.add_column("refresh_tokens", sa.Column("replaced_by", sa.String(64), nullable=True))
    tokens = sa.table("refresh_tokens", sa.column("jti", sa.String), sa.column("family", sa.String))
    op.execute(tokens.update().values(family=tokens.c.jti))
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])


def downgrade() -> None:
    op.drop_index("ix_refresh_tokens_family", "refresh_tokens")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("replaced_by")
        batch.drop_column("family")
