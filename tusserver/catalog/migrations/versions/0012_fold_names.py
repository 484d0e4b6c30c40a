"""files: name_folded of every row folded as new rows are (no case, one Unicode form)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Migration 0004 filled ``name_folded`` with the database's ``lower(name)``: SQLite lowers
ASCII letters only, PostgreSQL's lower() is not Python's casefold() (ß), and neither brought
a decomposed name (as macOS sends them) to the composed form. Rows written since are folded
in Python (``catalog.files.fold_name``), and so are the search text and the name cursor: a
row folded otherwise was missed by a search and could be skipped by a page of the name sort.
Every row is folded again here, in batches, in Python; the function is written out below as
it was at this revision.
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_BATCH = 1000


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())[:255]


def upgrade() -> None:
    conn = op.get_bind()
    files = sa.table(
        "files", sa.column("id", sa.String), sa.column("name", sa.String),
        sa.column("name_folded", sa.String),
    )  # fmt: skip
    update = (
        sa.update(files)
        .where(files.c.id == sa.bindparam("row_id"))
        .values(name_folded=sa.bindparam("folded"))
    )
    last = ""
    while True:
        rows = conn.execute(
            sa.select(files.c.id, files.c.name, files.c.name_folded)
            .where(files.c.id > last)
            .order_by(files.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        changed = [
            {"row_id": row_id, "folded": _fold(name)}
            for row_id, name, folded in rows
            if _fold(name) != folded
        ]
        if changed:
            conn.execute(update, changed)
        last = rows[-1][0]


def downgrade() -> None:
    pass  # the folding of 0004 was a lesser one: rows folded better are kept
