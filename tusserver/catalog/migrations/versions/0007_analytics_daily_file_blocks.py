"""analytics_daily and analytics_file_blocks, backfilled from analytics_rollup

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27

Measured on PostgreSQL with 1,000,000 files and 10,000,000 events (benchmarks/README.md,
search benchmark), a service-wide 30-day report took 257 ms (p50) to 312 ms (p99); now 11 to
20 ms:

- The top files ranked every file downloaded in the range: one group per file, 190,000 in a
  month, about 250 ms. analytics_file_blocks holds the downloads per file and block of 64
  days (one starts every 32): a file's count in a block bounds its count in any range inside
  it, so a report sums only the files whose bound reaches the top (some 430, 6 ms), with the
  same answer (tusserver/catalog/analytics.py, top_files).
- The series read 4,300 hourly rows (30 days x 24 hours x 6 kinds), most of the rest of the
  time in turning them into Python values. analytics_daily holds the rollup's rows per UTC
  day, except the per-file ones: a report by day reads those of its whole days (174 for
  29 days), and hourly rows only for the hours of its first and last days outside them.

Both are backfilled from the hourly rollup, so they hold the same history: a day's rows are
the sums of its hours; each hour's downloads count in the two blocks that hold its UTC day.
Writes to analytics_rollup wait meanwhile, and instances of the previous version must be
stopped first (their events would be missing from the new tables). About three minutes on
PostgreSQL with 15,000,000 rollup rows (3,000,000 daily rows and 10,200,000 block counts come
out of them: 2.9 GB with their indexes, against 5.2 GB for the hourly rollup), on a busy
2-core machine.
"""

import sqlalchemy as sa
from alembic import op

from tusserver.catalog.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# As in tusserver.catalog.analytics (BLOCK_STEP, BLOCK_DAYS): blocks start every 32 days (day
# numbers since 1970-01-01 UTC) and span 64, so each day is in the block starting at its day
# rounded down to a multiple of 32, and in the one before.
_STEP = 32

_rollup = sa.table(
    "analytics_rollup",
    sa.column("hour", sa.DateTime(timezone=True)),
    sa.column("owner", sa.String),
    sa.column("kind", sa.String),
    sa.column("dim", sa.String),
    sa.column("count", sa.BigInteger),
    sa.column("bytes", sa.BigInteger),
)
_daily = sa.table(
    "analytics_daily",
    sa.column("owner", sa.String),
    sa.column("day", sa.DateTime(timezone=True)),
    sa.column("kind", sa.String),
    sa.column("dim", sa.String),
    sa.column("count", sa.BigInteger),
    sa.column("bytes", sa.BigInteger),
)
_blocks = sa.table(
    "analytics_file_blocks",
    sa.column("owner", sa.String),
    sa.column("block", sa.Integer),
    sa.column("dim", sa.String),
    sa.column("count", sa.BigInteger),
)


def _day_number(dialect: str) -> sa.ColumnElement[int]:
    """The UTC day of analytics_rollup.hour, in days since 1970-01-01 (hours are after 1970)."""
    hour = _rollup.c.hour
    if dialect == "postgresql":  # timestamptz: the epoch is UTC whatever the session's zone
        days: sa.ColumnElement[float] = sa.func.floor(sa.func.extract("epoch", hour) / 86400)
    else:  # SQLite: "YYYY-MM-DD HH:MM:SS.ffffff", UTC
        days = sa.func.julianday(hour) - 2440587.5
    return sa.cast(days, sa.Integer)


def _midnight(dialect: str) -> sa.ColumnElement[object]:
    """analytics_rollup.hour truncated to its UTC day, as the column stores it."""
    hour = _rollup.c.hour
    if dialect == "postgresql":
        return sa.func.date_trunc("day", hour, "UTC")  # not in the session's zone
    return sa.func.strftime("%Y-%m-%d 00:00:00.000000", hour)  # SQLAlchemy's format


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Aggregations of some 11,000,000 rows (the benchmark's), for this transaction.
        op.execute(sa.select(sa.func.set_config("work_mem", "256MB", True)))
    r = _rollup.c
    per_file = sa.and_(r.kind == "file.downloaded", r.dim != "")

    op.create_table(
        "analytics_daily",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("day", UTCDateTime, primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("dim", sa.String(300), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
    )
    # (Grouped outside: PostgreSQL would not take a GROUP BY of the expression with its own
    # parameters for the one of the select list.)
    hourly = sa.select(
        r.owner, _midnight(bind.dialect.name).label("day"), r.kind, r.dim, r.count, r.bytes
    ).where(sa.not_(per_file))
    h = hourly.subquery().c
    op.execute(
        _daily.insert().from_select(
            ["owner", "day", "kind", "dim", "count", "bytes"],
            sa.select(
                h.owner, h.day, h.kind, h.dim, sa.func.sum(h.count), sa.func.sum(h.bytes)
            ).group_by(h.owner, h.day, h.kind, h.dim),
        )
    )

    op.create_table(
        "analytics_file_blocks",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("block", sa.Integer, primary_key=True),
        sa.Column("dim", sa.String(300), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    day_number = _day_number(bind.dialect.name).label("day")
    downloads = sa.select(r.owner, r.dim, r.count, day_number).where(per_file).subquery()
    d = downloads.c
    latest = (d.day - d.day % _STEP).label("block")
    per_block = sa.union_all(
        sa.select(d.owner, latest, d.dim, d.count),
        sa.select(d.owner, (latest - _STEP).label("block"), d.dim, d.count),
    ).subquery()
    p = per_block.c
    op.execute(
        _blocks.insert().from_select(
            ["owner", "block", "dim", "count"],
            sa.select(p.owner, p.block, p.dim, sa.func.sum(p.count)).group_by(
                p.owner, p.block, p.dim
            ),
        )
    )
    op.create_index(
        "ix_analytics_file_blocks_owner_block_count",
        "analytics_file_blocks",
        ["owner", "block", "count"],
    )


def downgrade() -> None:
    op.drop_index("ix_analytics_file_blocks_owner_block_count", "analytics_file_blocks")
    op.drop_table("analytics_file_blocks")
    op.drop_table("analytics_daily")
