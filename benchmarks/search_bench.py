"""Search and analytics latency on a large catalog, through the real HTTP API.

    .venv/bin/python benchmarks/search_bench.py                 # PG 1M files / 10M events + SQLite
    .venv/bin/python benchmarks/search_bench.py --quick         # small smoke run
    .venv/bin/python benchmarks/search_bench.py --pg-dir DIR    # keep / reuse the seeded cluster

PostgreSQL: a throwaway cluster (tests/services.PostgresServer), migrated with the app's own
migrations, seeded by COPY (asyncpg ``copy_records_to_table``) with secondary indexes dropped
during the load and rebuilt after; the rollups (hourly ``analytics_rollup``, daily
``analytics_daily``, per-file ``analytics_file_blocks``) are computed from the seeded events
with the same keys ``write_events`` maintains; then VACUUM ANALYZE. With ``--pg-dir`` the
cluster lives in that directory and later runs reuse it without seeding (after applying any
newer migration, which backfills what it adds, and VACUUM ANALYZE). SQLite: a
``tusserver.db`` in a temporary data dir, seeded the same way with executemany. Then
``tusserver serve`` runs as a subprocess (auth none: the caller is admin, limits off, no
server-side cache, so every analytics request is a query) and each query type is requested
sequentially ~200 times; p50/p99 are printed and written to benchmarks/results/search.json.
Queries with p99 over 50 ms are EXPLAINed: the statements are those of tusserver's own
parse_query/search_files and analytics.report, with the settings their unit of work applies
first, so they are what the server ran.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from load import percentile  # noqa: E402

from tests.services import PostgresServer  # noqa: E402
from tusserver.testing import tusserver_process  # noqa: E402

RESULTS = HERE / "results"
DAY = dt.timedelta(days=1)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SPAN_DAYS = 400
SLOW_MS = 50.0

WORDS = [
    "sunset",
    "beach",
    "holiday",
    "invoice",
    "report",
    "draft",
    "final",
    "budget",
    "family",
    "wedding",
    "birthday",
    "party",
    "concert",
    "meeting",
    "notes",
    "scan",
    "receipt",
    "contract",
    "photo",
    "video",
    "clip",
    "music",
    "track",
    "podcast",
    "lecture",
    "slides",
    "thesis",
    "paper",
    "chapter",
    "summary",
    "backup",
    "archive",
    "export",
    "design",
    "sketch",
    "logo",
    "banner",
    "poster",
    "flyer",
    "menu",
    "recipe",
    "garden",
    "mountain",
    "river",
    "forest",
    "city",
    "street",
    "night",
    "winter",
    "summer",
    "spring",
    "autumn",
    "project",
    "roadmap",
    "minutes",
    "agenda",
    "interview",
    "resume",
    "letter",
    "statement",
    "payslip",
    "passport",
    "ticket",
    "boarding",
    "itinerary",
    "map",
    "route",
    "screenshot",
    "mockup",
    "wireframe",
    "demo",
    "release",
    "build",
    "log",
    "dataset",
    "sample",
    "training",
    "model",
    "results",
    "figure",
    "chart",
    "table",
    "appendix",
]
TYPES = [  # detected type, category, extension, weight
    ("image/jpeg", "image", "jpg", 30),
    ("image/png", "image", "png", 15),
    ("video/mp4", "video", "mp4", 10),
    ("audio/mpeg", "audio", "mp3", 8),
    ("application/pdf", "document", "pdf", 20),
    ("text/plain", "document", "txt", 7),
    ("application/zip", "other", "zip", 10),
]
FOLDERS = ["/", "/", "/", "/photos/", "/photos/2025/", "/docs/", "/docs/work/", "/music/", "/tmp/"]
TAGS = [f"tag{i:02d}" for i in range(40)] + ["work", "personal", "todo", "starred", "shared"]
KINDS = [  # kind, weight
    ("upload.started", 25),
    ("upload.finished", 23),
    ("file.committed", 20),
    ("file.rejected", 2),
    ("file.downloaded", 28),
    ("file.deleted", 2),
]
REASONS = [
    "virus found: Eicar-Test-Signature",
    "type not allowed: application/x-dosexec",
    "too large: 2147483648 > 1073741824",
    "type mismatch: declared image/png",
]
CLIENTS = ["tus-js-client/4.1.0", "tusserver-client/1.0", "curl/8.5.0", None]

FILE_COLS = [
    "id",
    "owner",
    "name",
    "name_folded",
    "folder",
    "size",
    "declared_type",
    "detected_type",
    "category",
    "type_mismatch",
    "sha256",
    "status",
    "reason",
    "store",
    "storage_key",
    "meta",
    "tags",
    "attempts",
    "next_attempt_at",
    "lease_until",
    "created_at",
    "updated_at",
    "committed_at",
    "quarantine_until",
]
TAG_COLS = ["file_id", "tag", "created_at"]  # created_at: the file's (migration 0006)
EVENT_COLS = [
    "at",
    "kind",
    "owner",
    "file_id",
    "upload_id",
    "bytes",
    "duration_ms",
    "client",
    "detail",
]


# --- synthetic data -------------------------------------------------------------------------


class Synth:
    def __init__(self, owners: int, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        self.owners = [hashlib.md5(f"owner{i}".encode()).hexdigest() for i in range(owners)]
        # Zipf-ish: a few heavy owners, a long tail.
        weights = [1 / (i + 1) ** 0.7 for i in range(owners)]
        self.owner_cum = _cum(weights)
        self.type_cum = _cum([t[3] for t in TYPES])
        self.kind_cum = _cum([k[1] for k in KINDS])
        self.tag_cum = _cum([1 / (i + 1) ** 0.5 for i in range(len(TAGS))])
        self.file_ids: list[str] = []

    def files(self, n: int, start: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        rng = self.rng
        owners = rng.choices(self.owners, cum_weights=self.owner_cum, k=n)
        types = rng.choices(TYPES, cum_weights=self.type_cum, k=n)
        rows, tags = [], []
        span = SPAN_DAYS * 86400
        for i in range(n):
            fid = f"{rng.getrandbits(128):032x}"
            self.file_ids.append(fid)
            mime, cat, ext, _ = types[i]
            name = f"{rng.choice(WORDS).title()}-{rng.choice(WORDS)}_{start + i:07d}.{ext}"
            created = NOW - dt.timedelta(seconds=rng.random() * span)
            r = rng.random()
            status = "committed" if r < 0.97 else ("rejected" if r < 0.99 else "failed")
            ftags: list[str] = []
            if rng.random() < 0.2:
                ftags = sorted(
                    set(rng.choices(TAGS, cum_weights=self.tag_cum, k=rng.randint(1, 3)))
                )
                tags.extend((fid, t, created) for t in ftags)
            rows.append((
                fid, owners[i], name, name.casefold()[:255], rng.choice(FOLDERS),
                min(int(rng.lognormvariate(13, 2.5)), 2**40), mime, mime, cat, False,
                hashlib.sha256(fid.encode()).hexdigest(), status,
                None if status == "committed" else rng.choice(REASONS),
                "local", fid, json.dumps({"filename": name}), json.dumps(ftags), 1, None, None,
                created, created, created if status == "committed" else None, None,
            ))  # fmt: skip
        return rows, tags

    def events(self, n: int) -> list[tuple[Any, ...]]:
        rng = self.rng
        owners = rng.choices(self.owners, cum_weights=self.owner_cum, k=n)
        kinds = rng.choices(KINDS, cum_weights=self.kind_cum, k=n)
        types = rng.choices(TYPES, cum_weights=self.type_cum, k=n)
        fids = rng.choices(self.file_ids, k=n)
        span = SPAN_DAYS * 86400
        rows = []
        for i in range(n):
            kind = kinds[i][0]
            at = NOW - dt.timedelta(seconds=rng.random() * span)
            detail = None
            up = None
            dur = None
            if kind.startswith("upload."):
                up = f"{rng.getrandbits(128):032x}"
                if kind == "upload.finished":
                    dur = rng.randint(10, 60000)
            elif kind == "file.committed":
                detail = types[i][0]
            elif kind == "file.rejected":
                detail = rng.choice(REASONS)
            nbytes = (
                0
                if kind in ("upload.started", "file.deleted")
                else int(rng.lognormvariate(13, 2.5))
            )
            rows.append((at, kind, owners[i], None if up else fids[i], up, nbytes, dur,
                         rng.choice(CLIENTS), detail))  # fmt: skip
        return rows


def _cum(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


# Rollup rows computed in SQL from the events table, with the keys write_events() maintains:
# (hour, owner or "", kind, "") for every event, plus "type:<detail[:200]>" for file.committed,
# "reason:<text before ':' stripped [:200] or 'unknown'>" for file.rejected and
# "file:<file_id>" for file.downloaded.
def _rollup_sql(hour_expr: str, substr: str, instr_reason: str) -> str:
    return f"""
INSERT INTO analytics_rollup (hour, owner, kind, dim, count, bytes)
SELECT hour, owner, kind, dim, count(*), sum(bytes) FROM (
  SELECT {hour_expr} AS hour, coalesce(owner, '') AS owner, kind, '' AS dim, bytes FROM events
  UNION ALL
  SELECT {hour_expr}, coalesce(owner, ''), kind, 'type:' || {substr}(detail, 1, 200), bytes
    FROM events WHERE kind = 'file.committed' AND detail IS NOT NULL AND detail <> ''
  UNION ALL
  SELECT {hour_expr}, coalesce(owner, ''), kind, 'reason:' || {instr_reason}, bytes
    FROM events WHERE kind = 'file.rejected' AND detail IS NOT NULL AND detail <> ''
  UNION ALL
  SELECT {hour_expr}, coalesce(owner, ''), kind, 'file:' || file_id, bytes
    FROM events WHERE kind = 'file.downloaded' AND file_id IS NOT NULL AND file_id <> ''
) AS x GROUP BY hour, owner, kind, dim
"""


PG_ROLLUP = _rollup_sql(
    "date_trunc('hour', at)",
    "substr",
    "coalesce(nullif(substr(trim(split_part(detail, ':', 1)), 1, 200), ''), 'unknown')",
)
SQLITE_ROLLUP = _rollup_sql(
    "strftime('%Y-%m-%d %H:00:00.000000', at)",
    "substr",
    "coalesce(nullif(substr(trim(CASE WHEN instr(detail, ':') > 0 "
    "THEN substr(detail, 1, instr(detail, ':') - 1) ELSE detail END), 1, 200), ''), 'unknown')",
)


# write_events() also counts every event under the service-wide owner ALL_OWNERS ("*"), which
# service-wide reports read: derive those rows from the per-owner ones.
SERVICE_ROLLUP = """
INSERT INTO analytics_rollup (hour, owner, kind, dim, count, bytes)
SELECT hour, '*', kind, dim, sum(count), sum(bytes) FROM analytics_rollup
WHERE owner <> '*' GROUP BY hour, kind, dim
"""


# ... and the same per UTC day, except the per-file rows (as migration 0007 does).
def _daily_sql(day_expr: str) -> str:
    return f"""
INSERT INTO analytics_daily (owner, day, kind, dim, count, bytes)
SELECT owner, day, kind, dim, sum(count), sum(bytes) FROM (
  SELECT owner, {day_expr} AS day, kind, dim, count, bytes FROM analytics_rollup
  WHERE NOT (kind = 'file.downloaded' AND dim <> '')
) AS d GROUP BY owner, day, kind, dim
"""


PG_DAILY = _daily_sql("date_trunc('day', hour, 'UTC')")
SQLITE_DAILY = _daily_sql("strftime('%Y-%m-%d 00:00:00.000000', hour)")


# write_events() also counts each download in the two 64-day blocks (one starts every 32 days,
# day numbers since 1970-01-01 UTC) that hold its day, per owner and service-wide: derive them
# from the hourly download rows (as migration 0007 does).
def _blocks_sql(day_expr: str) -> str:
    downloads = (
        f"(SELECT owner, dim, count, {day_expr} AS day FROM analytics_rollup "
        "WHERE kind = 'file.downloaded' AND dim <> '')"
    )
    return f"""
INSERT INTO analytics_file_blocks (owner, block, dim, count)
SELECT owner, block, dim, sum(count) FROM (
  SELECT owner, day - day % 32 AS block, dim, count FROM {downloads} AS d
  UNION ALL
  SELECT owner, day - day % 32 - 32, dim, count FROM {downloads} AS d
) AS x GROUP BY owner, block, dim
"""


PG_BLOCKS = _blocks_sql("CAST(floor(extract(epoch FROM hour) / 86400) AS integer)")
SQLITE_BLOCKS = _blocks_sql("CAST(julianday(hour) - 2440587.5 AS INTEGER)")


async def _migrate(url: str) -> None:
    from tusserver.catalog.db import create_database
    from tusserver.catalog.migrate import upgrade

    db = create_database(url)
    try:
        await upgrade(db)
    finally:
        await db.dispose()


# --- PostgreSQL seeding ---------------------------------------------------------------------


async def seed_pg(dsn: str, url: str, n_files: int, n_events: int, budget: float) -> dict[str, Any]:
    import asyncpg

    await _migrate(url)
    conn = await asyncpg.connect(dsn)
    info: dict[str, Any] = {}
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        tables = (
            "files", "file_tags", "events", "analytics_rollup", "analytics_daily",
            "analytics_file_blocks",
        )  # fmt: skip
        idx = await conn.fetch(
            """SELECT i.indexname, i.indexdef FROM pg_indexes i
               JOIN pg_class c ON c.relname = i.indexname
               JOIN pg_index x ON x.indexrelid = c.oid
               WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
                 AND NOT x.indisprimary AND NOT x.indisunique""",
            list(tables),
        )
        info["indexes"] = {r["indexname"]: r["indexdef"] for r in idx}
        for r in idx:
            await conn.execute(f'DROP INDEX "{r["indexname"]}"')
        synth = Synth(1000)
        t0 = time.monotonic()
        batch = 200_000
        n_tags = 0
        for start in range(0, n_files, batch):
            rows, tags = synth.files(min(batch, n_files - start), start)
            await conn.copy_records_to_table("files", records=rows, columns=FILE_COLS)
            await conn.copy_records_to_table("file_tags", records=tags, columns=TAG_COLS)
            n_tags += len(tags)
        info["files"], info["file_tags"] = n_files, n_tags
        info["files_load_s"] = round(time.monotonic() - t0, 1)
        print(f"  files: {n_files} rows (+{n_tags} tags) in {info['files_load_s']} s", flush=True)
        t0 = time.monotonic()
        loaded = 0
        batch = 500_000
        while loaded < n_events:
            if time.monotonic() - t0 > budget:
                print(f"  events: load budget of {budget:.0f} s reached", flush=True)
                break
            rows = synth.events(min(batch, n_events - loaded))
            await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLS)
            loaded += len(rows)
            print(f"  events: {loaded} ({time.monotonic() - t0:.0f} s)", flush=True)
        info["events"] = loaded
        info["events_load_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        await conn.execute(PG_ROLLUP)
        await conn.execute(SERVICE_ROLLUP)
        await conn.execute(PG_DAILY)
        await conn.execute(PG_BLOCKS)
        info["daily_rows"] = await conn.fetchval("SELECT count(*) FROM analytics_daily")
        info["block_rows"] = await conn.fetchval("SELECT count(*) FROM analytics_file_blocks")
        info["rollup_rows"] = await conn.fetchval("SELECT count(*) FROM analytics_rollup")
        info["rollup_s"] = round(time.monotonic() - t0, 1)
        print(f"  rollup: {info['rollup_rows']} rows, daily {info['daily_rows']}, file blocks "
              f"{info['block_rows']}, in {info['rollup_s']} s", flush=True)  # fmt: skip
        t0 = time.monotonic()
        for name, ddl in info["indexes"].items():
            await conn.execute(ddl)
        # VACUUM too: it sets the visibility map (index-only scans) as autovacuum would in
        # a settled catalog, and keeps autovacuum from running during the measurements.
        await conn.execute("VACUUM (ANALYZE)")
        info["index_s"] = round(time.monotonic() - t0, 1)
        print(f"  indexes rebuilt + VACUUM ANALYZE in {info['index_s']} s", flush=True)
        info["sample"] = await _sample(conn.fetch, "$1")
    finally:
        await conn.close()
    return info


async def _sample(fetch: Callable[..., Any], ph: str) -> dict[str, Any]:
    """Query values that exist: owners (spread over heavy and light ones), min/max size."""
    rows = await fetch("SELECT owner, count(*) AS n FROM files GROUP BY owner ORDER BY n DESC")
    owners = [r[0] for r in rows]
    counts = [r[1] for r in rows]
    return {
        "owners": owners,
        "owner_files_max": counts[0],
        "owner_files_median": counts[len(counts) // 2],
    }


# --- SQLite seeding -------------------------------------------------------------------------


def _sqlite_val(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return v


async def seed_sqlite(path: Path, n_files: int, n_events: int) -> dict[str, Any]:
    await _migrate(f"sqlite+aiosqlite:///{path}")
    con = sqlite3.connect(path)
    info: dict[str, Any] = {}
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        synth = Synth(1000)
        t0 = time.monotonic()
        rows, tags = synth.files(n_files, 0)
        with con:
            con.executemany(
                f"INSERT INTO files ({', '.join(FILE_COLS)}) VALUES ({', '.join('?' * len(FILE_COLS))})",
                [tuple(_sqlite_val(v) for v in r) for r in rows],
            )
            con.executemany(
                "INSERT INTO file_tags (file_id, tag, created_at) VALUES (?, ?, ?)",
                [tuple(_sqlite_val(v) for v in t) for t in tags],
            )
        info["files"], info["file_tags"] = n_files, len(tags)
        events = synth.events(n_events)
        with con:
            con.executemany(
                f"INSERT INTO events ({', '.join(EVENT_COLS)}) VALUES ({', '.join('?' * len(EVENT_COLS))})",
                [tuple(_sqlite_val(v) for v in r) for r in events],
            )
            con.execute(SQLITE_ROLLUP)
            con.execute(SERVICE_ROLLUP)
            con.execute(SQLITE_DAILY)
            con.execute(SQLITE_BLOCKS)
        con.execute("ANALYZE")
        info["events"] = n_events
        info["rollup_rows"] = con.execute("SELECT count(*) FROM analytics_rollup").fetchone()[0]
        info["load_s"] = round(time.monotonic() - t0, 1)
        print(f"  sqlite: {n_files} files, {n_events} events, {info['rollup_rows']} rollup rows "
              f"in {info['load_s']} s", flush=True)  # fmt: skip

        async def fetch(sql: str, *args: Any) -> list[Any]:
            return con.execute(sql, args).fetchall()

        info["sample"] = await _sample(fetch, "?")
    finally:
        con.close()
    return info


# --- a kept cluster (--pg-dir) ----------------------------------------------------------------


class KeptPostgres(PostgresServer):
    """A PostgresServer in a directory given by the caller, which outlives the run: created
    (initdb) the first time, started again as it is later. ``seed.json`` there says what the
    database ``searchbench`` holds once a seeding has completed."""

    def __init__(self, path: Path, settings: dict[str, str]) -> None:
        super().__init__(settings=settings)
        shutil.rmtree(self.dir, ignore_errors=True)  # the temp dir the base class made
        path.mkdir(parents=True, exist_ok=True)
        self.dir = path.resolve()
        self.data_dir = self.dir / "data"
        self._prepared = (self.data_dir / "PG_VERSION").exists()

    @property
    def seed_file(self) -> Path:
        return self.dir / "seed.json"

    def seeded(self, n_files: int, n_events: int) -> dict[str, Any] | None:
        """The info of the seeding this cluster holds, if it is one of these sizes."""
        try:
            info: dict[str, Any] = json.loads(self.seed_file.read_text())
        except (OSError, ValueError):
            return None
        return (
            info
            if (info.get("files"), info.get("requested_events")) == (n_files, n_events)
            else None
        )

    def close(self) -> None:  # stop, keep the directory
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True


async def reuse_pg(dsn: str, url: str, seed: dict[str, Any]) -> dict[str, Any]:
    """A kept, seeded database: migrated to this revision (new migrations backfill what they
    add from the seeded rows), VACUUM ANALYZEd, sampled."""
    import asyncpg

    age = NOW - dt.datetime.fromisoformat(seed["when"])
    print(f"  reusing the database seeded at {seed['when']} ({age} ago: the last "
          f"{age} of the 30-day range have no seeded events)", flush=True)  # fmt: skip
    t0 = time.monotonic()
    await _migrate(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        info = {k: v for k, v in seed.items() if k != "sample"}
        info["reused"] = True
        info["rollup_rows"] = await conn.fetchval("SELECT count(*) FROM analytics_rollup")
        info["migrate_vacuum_s"] = round(time.monotonic() - t0, 1)
        print(f"  migrated + VACUUM ANALYZE in {info['migrate_vacuum_s']} s", flush=True)
        info["sample"] = await _sample(conn.fetch, "$1")
    finally:
        await conn.close()
    return info


# --- the server -----------------------------------------------------------------------------


class Server:
    """tusserver as a subprocess (the shared harness of tusserver.testing)."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path) -> None:
        settings = dict(
            TUSSERVER_AUTH="none",
            TUSSERVER_RATE_LIMIT_API="0",
            # No server-side cache: analytics reports are cached for 5 s, and every request
            # of the service-wide report would otherwise be a hit, not a query.
            TUSSERVER_CACHE_TTL="0",
            TUSSERVER_AUTO_MIGRATE="true",
            TUSSERVER_LOG_LEVEL="warning",
        )
        settings.update(env)
        self.process = tusserver_process(data_dir, settings, log_path=log)
        self.base = self.process.url

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Start it and wait until /healthz answers."""
        await self.process.astart(deadline=timeout)

    def stop(self) -> None:
        self.process.terminate(timeout=15)


# --- queries --------------------------------------------------------------------------------


def query_makers(sample: dict[str, Any]) -> dict[str, Callable[[random.Random], dict[str, str]]]:
    owners = sample["owners"]

    def owner(r: random.Random) -> str:
        return r.choice(owners)

    def word(r: random.Random) -> str:
        return r.choice(WORDS)

    def size_range(r: random.Random) -> dict[str, str]:
        lo = int(r.lognormvariate(13, 2.5))
        return {"min_size": str(lo), "max_size": str(lo * 2)}

    return {
        "owner": lambda r: {"owner": owner(r)},
        "owner+q substring": lambda r: {"owner": owner(r), "q": word(r)[1:5]},
        "q prefix (all)": lambda r: {"q": word(r)[:4], "match": "prefix"},
        "q substring (all)": lambda r: {"q": word(r)[1:6]},
        "q rare substring (all)": lambda r: {"q": f"_{r.randint(0, 999_999):06d}"},
        "type image/* +owner": lambda r: {"type": "image/*", "owner": owner(r)},
        "size range (all)": size_range,
        "size range +owner": lambda r: {**size_range(r), "owner": owner(r)},
        "tag (all)": lambda r: {"tag": r.choice(TAGS)},
        "tag +owner": lambda r: {"tag": r.choice(TAGS), "owner": owner(r)},
        "sort name +owner": lambda r: {"owner": owner(r), "sort": "name"},
        "sort -size +owner": lambda r: {"owner": owner(r), "sort": "-size"},
        "sort name (all)": lambda r: {"sort": "name"},
        "sort -size (all)": lambda r: {"sort": "-size"},
    }


async def _timed_get(
    s: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[float, Any]:
    t0 = time.perf_counter()
    async with s.get(url, params=params) as resp:
        body = await resp.read()
        dt_ = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"GET {url} {params}: {resp.status} {body[:300]!r}")
    return dt_, json.loads(body)


def _stats(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": round(max(samples) * 1000, 3) if samples else None,
    }


async def run_queries(
    base: str, sample: dict[str, Any], n: int, per_query_budget: float
) -> dict[str, Any]:
    rng = random.Random(7)
    out: dict[str, Any] = {}
    files_url = base + "/api/v1/files"
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        for _ in range(10):  # warm the pool and caches a little
            await _timed_get(s, files_url, {"owner": rng.choice(sample["owners"])})
        for name, make in query_makers(sample).items():
            samples, slowest = [], (0.0, {})
            t_end = time.monotonic() + per_query_budget
            for _ in range(n):
                params = make(rng)
                took, _body = await _timed_get(s, files_url, params)
                samples.append(took)
                if took > slowest[0]:
                    slowest = (took, params)
                if time.monotonic() > t_end:
                    break
            out[name] = {**_stats(samples), "slowest_params": slowest[1]}
            _print_row(name, out[name])
        # cursor pages: first page then follow next_cursor; time pages 2..6
        for name, extra in (("cursor pages 2-6 +owner", True), ("cursor pages 2-6 (all)", False),
                            ("cursor pages 2-6 sort name (all)", None)):  # fmt: skip
            samples, slowest = [], (0.0, {})
            t_end = time.monotonic() + per_query_budget
            while len(samples) < n and time.monotonic() < t_end:
                params: dict[str, str] = {}
                if extra is True:
                    params["owner"] = rng.choice(sample["owners"][:200])
                elif extra is None:
                    params["sort"] = "name"
                _, body = await _timed_get(s, files_url, params)
                for _page in range(5):
                    if not body.get("next_cursor"):
                        break
                    p = {**params, "cursor": body["next_cursor"]}
                    took, body = await _timed_get(s, files_url, p)
                    samples.append(took)
                    if took > slowest[0]:
                        slowest = (took, p)
            out[name] = {**_stats(samples), "slowest_params": slowest[1]}
            _print_row(name, out[name])
        for name, maker in (
            ("analytics 30d service", lambda: {}),
            ("analytics 30d ?user=", lambda: {"user": rng.choice(sample["owners"])}),
        ):
            samples = []
            t_end = time.monotonic() + per_query_budget
            for _ in range(n):
                took, _body = await _timed_get(s, base + "/api/v1/analytics", maker())
                samples.append(took)
                if time.monotonic() > t_end:
                    break
            out[name] = _stats(samples)
            _print_row(name, out[name])
    return out


def _print_row(name: str, r: dict[str, Any]) -> None:
    flag = "  SLOW" if (r["p99_ms"] or 0) > SLOW_MS else ""
    print(f"    {name:<34} n={r['n']:>4}  p50 {r['p50_ms']:>9.2f} ms  p99 {r['p99_ms']:>9.2f} ms{flag}",
          flush=True)  # fmt: skip


# --- EXPLAIN --------------------------------------------------------------------------------


def _statement(params: dict[str, str]) -> Any:
    """The SQLAlchemy statement search_files builds for these request parameters."""
    from multidict import MultiDict

    from auth.principal import UNAUTHENTICATED_OPERATOR
    from tusserver.api.files import parse_query
    from tusserver.catalog.files import search_statement

    fq, _sort = parse_query(MultiDict(params), UNAUTHENTICATED_OPERATOR)
    return search_statement(fq)


class _Capture:
    """A stand-in Database: runs a unit of work on a connection that only records statements
    (the PostgreSQL-only ones included), so EXPLAIN sees exactly what the server runs."""

    def __init__(self) -> None:
        self.statements: list[Any] = []
        self.dialect = types.SimpleNamespace(name="postgresql")  # of the connection

    async def read(self, work: Callable[[Any], Any]) -> Any:
        return work(self)

    def execute(self, stmt: Any, *args: Any) -> Any:
        self.statements.append(stmt)
        return self

    def all(self) -> list[Any]:
        return []

    def mappings(self) -> list[Any]:
        return []


async def explain_pg(dsn: str, params: dict[str, str]) -> str:
    from multidict import MultiDict

    from auth.principal import UNAUTHENTICATED_OPERATOR
    from tusserver.api.files import parse_query
    from tusserver.catalog.files import search_files

    fq, _sort = parse_query(MultiDict(params), UNAUTHENTICATED_OPERATOR)
    cap = _Capture()
    await search_files(cap, fq)  # type: ignore[arg-type]
    return await _pg_explain(dsn, cap.statements)


async def _pg_explain(dsn: str, statements: list[Any]) -> str:
    """EXPLAIN ANALYZE every SELECT of a unit of work, after its set_config() statements."""
    import asyncpg
    from sqlalchemy.dialects.postgresql.asyncpg import dialect as pg_dialect

    conn = await asyncpg.connect(dsn)
    out = []
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        async with conn.transaction():
            for stmt in statements:
                compiled = stmt.compile(
                    dialect=pg_dialect(), compile_kwargs={"render_postcompile": True}
                )
                args = [compiled.params[k] for k in compiled.positiontup]
                # an uninitialized dialect renders ESCAPE '\\' (standard_conforming_strings off)
                sql = compiled.string.replace("ESCAPE '\\\\'", "ESCAPE '\\'")
                if "set_config" in sql:  # the unit's settings: applied, as in the server
                    await conn.fetch(sql, *args)
                    out.append(sql + "\n" + repr(args))
                    continue
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
                out.append(sql + "\n" + repr(args) + "\n" + "\n".join(r[0] for r in rows))
    finally:
        await conn.close()
    return "\n\n".join(out)


class _Recording:
    """A Database whose units of work run on a real connection that also records each
    statement: the top files of a report depend on what earlier statements returned."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.statements: list[Any] = []
        self.dialect = db.dialect

    async def read(self, work: Callable[[Any], Any]) -> Any:
        outer = self

        class Conn:
            def __init__(self, conn: Any) -> None:
                self._conn = conn
                self.dialect = conn.dialect

            def execute(self, stmt: Any, *args: Any) -> Any:
                outer.statements.append(stmt)
                return self._conn.execute(stmt, *args)

        return await self._db.read(lambda conn: work(Conn(conn)))


async def explain_pg_analytics(url: str, dsn: str, owner: str | None) -> str:
    """The statements tusserver.catalog.analytics.report() runs for the default 30 days, run
    once to record them (which depend on the data), then EXPLAINed."""
    from tusserver.catalog.analytics import report
    from tusserver.catalog.db import create_database

    end = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    db = create_database(url)
    try:
        rec = _Recording(db)
        await report(rec, start=end - dt.timedelta(days=30), end=end, owner=owner)  # type: ignore[arg-type]
    finally:
        await db.dispose()
    return await _pg_explain(dsn, rec.statements)


async def explain_sqlite(path: Path, params: dict[str, str]) -> str:
    from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

    compiled = _statement(params).compile(dialect=sqlite_dialect())
    args = [_sqlite_val(compiled.params[k]) for k in compiled.positiontup]
    con = sqlite3.connect(path)
    try:
        plan = con.execute("EXPLAIN QUERY PLAN " + compiled.string, args).fetchall()
        t0 = time.perf_counter()
        con.execute(compiled.string, args).fetchall()
        took = (time.perf_counter() - t0) * 1000
    finally:
        con.close()
    return (compiled.string + "\n" + repr(args) + "\n" + "\n".join(str(p) for p in plan)
            + f"\n(run directly: {took:.1f} ms)")  # fmt: skip


async def explain_slow(
    results: dict[str, Any], explain: Callable[[dict[str, str]], Any]
) -> dict[str, str]:
    plans = {}
    for name, r in results.items():
        if (r["p99_ms"] or 0) > SLOW_MS and "slowest_params" in r:
            try:
                plans[name] = await explain(r["slowest_params"])
            except Exception as exc:
                plans[name] = f"explain failed: {exc!r}"
    return plans


# --- main -----------------------------------------------------------------------------------


async def run_pg(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    settings = {"shared_buffers": "1GB", "work_mem": "32MB"}
    kept = KeptPostgres(args.pg_dir, settings) if args.pg_dir else None
    print(f"PostgreSQL: starting {'the cluster in ' + str(kept.dir) if kept else 'a throwaway cluster'}",
          flush=True)  # fmt: skip
    with kept or PostgresServer(settings=settings) as pg:
        seed = kept.seeded(args.pg_files, args.pg_events) if kept else None
        dsn = pg.dsn("searchbench")
        if kept is not None and seed is not None:
            url = pg.url("searchbench")
            info = await reuse_pg(dsn, url, seed)
        else:
            if kept is not None:
                kept.seed_file.unlink(missing_ok=True)
            url = pg.create_database("searchbench")
            info = await seed_pg(dsn, url, args.pg_files, args.pg_events, args.events_budget)
            if kept is not None:
                kept.seed_file.write_text(
                    json.dumps(
                        {**info, "requested_events": args.pg_events, "when": NOW.isoformat()},
                        default=str,
                    )
                )
        sample = info.pop("sample")
        info.update(owner_files_max=sample["owner_files_max"],
                    owner_files_median=sample["owner_files_median"])  # fmt: skip
        if args.seed_only:
            return {"data": info}
        server = Server({"TUSSERVER_DATABASE_URL": url}, work / "pg-data", work / "pg-server.log")
        try:
            await server.wait_ready()
            print("  queries (sequential, one client):", flush=True)
            res = await run_queries(server.base, sample, args.requests, args.query_budget)
        finally:
            server.stop()
        plans = await explain_slow(res, lambda p: explain_pg(dsn, p))
        for name, owner in (("analytics 30d service", None),
                            ("analytics 30d ?user=", sample["owners"][0])):  # fmt: skip
            if args.explain_analytics or (res[name]["p99_ms"] or 0) > SLOW_MS:
                try:
                    plans[name] = await explain_pg_analytics(url, dsn, owner)
                except Exception as exc:
                    plans[name] = f"explain failed: {exc!r}"
        for name, plan in plans.items():
            print(f"\n  EXPLAIN ANALYZE [{name}]:\n{plan}\n", flush=True)
        return {"data": info, "queries": res, "explain": plans}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pg-files", type=int, default=1_000_000)
    ap.add_argument("--pg-events", type=int, default=10_000_000)
    ap.add_argument("--events-budget", type=float, default=300.0, help="seconds for the event COPY")
    ap.add_argument("--sqlite-files", type=int, default=100_000)
    ap.add_argument("--sqlite-events", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--query-budget", type=float, default=30.0, help="max seconds per query type")
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--out", default="", help="results file name (default search.json)")
    ap.add_argument(
        "--pg-dir",
        type=Path,
        help="keep the PostgreSQL cluster in this directory instead of a throwaway one: "
        "seeded the first time, reused as it is by later runs with the same --pg-files and "
        "--pg-events (migrated to the current revision first; seeding takes ~10 min); "
        "delete the directory to seed afresh",
    )
    ap.add_argument(
        "--explain-analytics",
        action="store_true",
        help="EXPLAIN ANALYZE the analytics statements on PostgreSQL even when they are fast",
    )
    ap.add_argument(
        "--seed-only",
        action="store_true",
        help="seed PostgreSQL (or migrate a kept --pg-dir cluster) and stop: no queries, no "
        "SQLite, no results file",
    )
    args = ap.parse_args()
    if args.quick:
        args.pg_files, args.pg_events = 20_000, 100_000
        args.sqlite_files, args.sqlite_events = 5_000, 20_000
        args.requests = 20
    RESULTS.mkdir(exist_ok=True)
    report: dict[str, Any] = {
        "when": NOW.isoformat(), "cpus": os.cpu_count(), "requests_per_query": args.requests,
        "slow_threshold_p99_ms": SLOW_MS,
    }  # fmt: skip
    # Data dirs and server logs; deleted at the end (the clusters are throwaway already).
    work = Path(tempfile.mkdtemp(prefix="tus-searchbench-"))
    try:
        if not args.skip_pg:
            report["postgresql"] = await run_pg(args, work)
        if args.seed_only:
            return 0
        if not args.skip_sqlite:
            print("SQLite:", flush=True)
            data = work / "sqlite-data"
            data.mkdir()
            dbpath = data / "tusserver.db"
            info = await seed_sqlite(dbpath, args.sqlite_files, args.sqlite_events)
            sample = info.pop("sample")
            info.update(owner_files_max=sample["owner_files_max"],
                        owner_files_median=sample["owner_files_median"])  # fmt: skip
            server = Server({}, data, work / "sqlite-server.log")
            try:
                await server.wait_ready()
                print("  queries (sequential, one client):", flush=True)
                res = await run_queries(server.base, sample, args.requests, args.query_budget)
            finally:
                server.stop()
            plans = await explain_slow(res, lambda p: explain_sqlite(dbpath, p))
            report["sqlite"] = {"data": info, "queries": res, "explain": plans}
            for name, plan in plans.items():
                print(f"\n  EXPLAIN QUERY PLAN [{name}]:\n{plan}\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = RESULTS / (args.out or ("search-quick.json" if args.quick else "search.json"))
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
