"""users: username_folded, so that usernames differing only in case are one name

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Usernames were unique as typed: ``Alice`` and ``alice`` could both register, two accounts a
page showing names cannot tell apart, while the sign-in rate limits already counted them as
one name. ``username_folded`` holds the name case-folded (``auth.users.fold_username``,
written out below as it is at this revision) under a unique index: a registration whose name
differs from a taken one only in case is refused like a taken name, also when two of them
race, and a sign-in finds the account whatever the case. ``username`` keeps the name as typed.

A catalog may already hold names that differ only in case. The migration neither fails on
them nor renames or disables anyone (a person would lose the name they sign in with): each
set of such accounts keeps every account, and the oldest (by ``created_at``, then id) gets
the folded name; the others keep ``username_folded`` NULL (which the unique index allows
any number of times). So no new account can take any case of that name, the oldest account
answers to any case of it at sign-in, and each of the others to its exact spelling only (an
exact spelling is always looked up first). An operator who wants them gone disables them
(``tusserver user disable NAME`` takes the exact spelling first, too). Their names are
logged as a warning when the migration runs.
"""

import sqlalchemy as sa
import structlog
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BATCH = 1000


def _fold(name: str) -> str:
    return name.casefold()


def upgrade() -> None:
    op.add_column("users", sa.Column("username_folded", sa.String(255), nullable=True))
    conn = op.get_bind()
    users = sa.table(
        "users", sa.column("id", sa.String), sa.column("username", sa.String),
        sa.column("username_folded", sa.String), sa.column("created_at"),
    )  # fmt: skip
    fill = (
        sa.update(users)
        .where(users.c.id == sa.bindparam("row_id"))
        .values(username_folded=sa.bindparam("folded"))
    )
    # Every account its folded name, in batches (by id).
    last = ""
    while True:
        rows = conn.execute(
            sa.select(users.c.id, users.c.username)
            .where(users.c.id > last)
            .order_by(users.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        conn.execute(fill, [{"row_id": i, "folded": _fold(name)} for i, name in rows])
        last = rows[-1][0]
    # Names held by several accounts (rare): the oldest keeps it, the others keep NULL.
    shared = (
        conn.execute(
            sa.select(users.c.username_folded)
            .group_by(users.c.username_folded)
            .having(sa.func.count() > 1)
        )
        .scalars()
        .all()
    )
    left_out: list[str] = []
    for folded in shared:
        holder, *others = conn.execute(
            sa.select(users.c.id, users.c.username)
            .where(users.c.username_folded == folded)
            .order_by(users.c.created_at, users.c.id)
        ).all()
        conn.execute(
            sa.update(users)
            .where(users.c.id.in_([i for i, _ in others]))
            .values(username_folded=None)
        )
        left_out += [f"{name} (id {i}; {holder[1]} holds the name)" for i, name in others]
    op.create_index("ix_users_username_folded", "users", ["username_folded"], unique=True)
    if left_out:
        structlog.get_logger("tusserver.migrate").warning(
            "accounts whose names differ from an older account's only in case keep signing "
            "in with their exact spelling only",
            accounts=left_out,
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_index("ix_users_username_folded")
        batch.drop_column("username_folded")
