"""Latency of GET /file/{id} with the server-side cache on and off, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/cache_bench.py            # ~3 minutes
    .venv/bin/python benchmarks/cache_bench.py --quick    # ~40 seconds

One run covers both databases: SQLite (a ``tusserver.db`` in a temporary data dir) and
PostgreSQL (a throwaway cluster, tests/services.PostgresServer). Each catalog is migrated with
the app's own migrations and seeded with ``--files`` committed file rows of one user (created
through the app's UserRepository). Then ``tusserver serve`` runs as a subprocess with JWT
auth (the default, so every request also looks up its caller) and rate limits off, in two
configurations, alternating for ``--rounds`` rounds:

    cache       TUSSERVER_CACHE_TTL=30 (the default)
    no cache    TUSSERVER_CACHE_TTL=0  (no file, user or analytics caching)

Each round: every file is requested once (warm-up, fills the cache), then for ``--seconds``
each of two workloads requests random files of the set:

    sequential  one client, one request at a time: the latency of a request on its own
    concurrent  ``--concurrency`` clients at once: throughput and latency under load

p50/p99 are nearest-rank percentiles of the client-measured latency (send to body read),
in ms; the round with the median throughput is reported. Results: benchmarks/results/cache.json
(cache-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import sys
import tempfile
import time
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
USER, PASSWORD = "bench", "bench-password-123"
MODES = {"cache": "30", "no cache": "0"}


# --- the catalog ----------------------------------------------------------------------------


async def seed(url: str, n_files: int) -> tuple[str, list[str]]:
    """Migrate, create the user, insert ``n_files`` committed files of theirs; (user id, ids)."""
    from sqlalchemy import insert

    # tusserver first: importing auth.users before it is a circular import.
    from tusserver.catalog.db import create_database
    from tusserver.catalog.migrate import upgrade
    from tusserver.catalog.schema import files

    from auth.passwords import hash_password  # isort: skip
    from auth.users import UserRepository  # isort: skip

    db = create_database(url)
    try:
        await upgrade(db)
        user = await UserRepository(db).create(USER, await hash_password(PASSWORD))
        now = dt.datetime.now(dt.UTC)
        rows = []
        for i in range(n_files):
            name = f"photo-{i:06d}.jpg"
            rows.append({
                "id": secrets.token_hex(16), "owner": user.id, "name": name,
                "name_folded": name, "folder": "/bench/", "size": 100_000 + i,
                "declared_type": "image/jpeg", "detected_type": "image/jpeg",
                "category": "image", "type_mismatch": False, "sha256": secrets.token_hex(32),
                "status": "committed", "reason": None, "store": "local",
                "storage_key": f"bench/{i}", "meta": {"filename": name}, "tags": ["bench"],
                "attempts": 1, "next_attempt_at": None, "lease_until": None,
                "created_at": now, "updated_at": now, "committed_at": now,
                "quarantine_until": None,
            })  # fmt: skip
        async with db.engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                await conn.execute(insert(files), rows[start : start + 1000])
        return user.id, [r["id"] for r in rows]
    finally:
        await db.dispose()


# --- the server -----------------------------------------------------------------------------


class Server:
    """tusserver as a subprocess (the shared harness of tusserver.testing)."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path) -> None:
        settings = dict(
            TUSSERVER_AUTH="jwt",
            TUSSERVER_JWT_SECRET="b" * 40,
            TUSSERVER_RATE_LIMIT_API="0",
            TUSSERVER_RATE_LIMIT_CREATIONS="0",
            TUSSERVER_SWEEP_INTERVAL="0",
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


# --- the load -------------------------------------------------------------------------------


async def login(s: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with s.post(
        base + "/api/v1/auth/login", json={"username": USER, "password": PASSWORD}
    ) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"login: {r.status} {body}")
    return {"Authorization": f"Bearer {body['access_token']}"}


async def load(
    s: aiohttp.ClientSession,
    base: str,
    auth: dict[str, str],
    ids: list[str],
    *,
    workers: int,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal errors
        rnd = random.Random(seed * 1000 + n)
        while time.monotonic() < stop:
            url = f"{base}/api/v1/file/{rnd.choice(ids)}"
            t0 = time.perf_counter()
            async with s.get(url, headers=auth) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    wall = time.monotonic() - t0
    return {"requests": len(lat), "errors": errors, "rps": round(len(lat) / wall, 1),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}  # fmt: skip


async def one_round(
    env: dict[str, str], data: Path, log: Path, ids: list[str], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    server = Server(env, data, log)
    try:
        await server.wait_ready()
        conn = aiohttp.TCPConnector(limit=args.concurrency + 4)
        async with aiohttp.ClientSession(connector=conn) as s:
            auth = await login(s, server.base)
            for file_id in ids:  # warm-up: every file once
                async with s.get(f"{server.base}/api/v1/file/{file_id}", headers=auth) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"warm-up: {r.status} {await r.text()}")
            seq = await load(s, server.base, auth, ids, workers=1, seconds=args.seconds, seed=seed)
            conc = await load(
                s, server.base, auth, ids,
                workers=args.concurrency, seconds=args.seconds, seed=seed,
            )  # fmt: skip
            async with s.get(server.base + "/metrics") as r:
                metrics = await r.text()
    finally:
        server.stop()
    hits = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('tusserver_cache_hits_total{namespace="file"}')
    )
    return {"sequential": seq, "concurrent": conc, "file_cache_hits": int(hits)}


def median_round(rounds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r[kind]["rps"])
    chosen = dict(ordered[len(ordered) // 2][kind])
    chosen["rps_all_rounds"] = [r[kind]["rps"] for r in rounds]
    return chosen


async def bench_database(
    label: str, db_env: dict[str, str], url: str, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    _, ids = await seed(url, args.files)
    print(f"{label}: {len(ids)} files seeded", flush=True)
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for i in range(args.rounds):
        for mode, ttl in MODES.items():
            data = work / f"{label}-data"
            data.mkdir(exist_ok=True)
            env = {**db_env, "TUSSERVER_CACHE_TTL": ttl}
            r = await one_round(env, data, work / f"{label}-server.log", ids, args, seed=i)
            rounds[mode].append(r)
            print(f"  round {i + 1} {mode:<9} sequential {r['sequential']['rps']:>7.1f}/s "
                  f"p50 {r['sequential']['p50_ms']:.2f} p99 {r['sequential']['p99_ms']:.2f} | "
                  f"concurrent {r['concurrent']['rps']:>7.1f}/s p50 {r['concurrent']['p50_ms']:.2f} "
                  f"p99 {r['concurrent']['p99_ms']:.2f} | hits {r['file_cache_hits']} "
                  f"errors {r['sequential']['errors'] + r['concurrent']['errors']}", flush=True)  # fmt: skip
    return {
        mode: {kind: median_round(rs, kind) for kind in ("sequential", "concurrent")}
        | {"file_cache_hits_all_rounds": [r["file_cache_hits"] for r in rs]}
        for mode, rs in rounds.items()
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.files, args.rounds, args.seconds = 500, 1, 3.0
    work = Path(tempfile.mkdtemp(prefix="tus-cachebench-"))
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(), "cpus": os.cpu_count(),
        "files": args.files, "rounds": args.rounds, "seconds": args.seconds,
        "concurrency": args.concurrency, "auth": "jwt", "modes": MODES,
    }  # fmt: skip
    if not args.skip_sqlite:
        data = work / "sqlite-data"
        data.mkdir()
        url = f"sqlite+aiosqlite:///{(data / 'tusserver.db').resolve()}"
        report["sqlite"] = await bench_database("sqlite", {}, url, work, args)
    if not args.skip_pg:
        print("PostgreSQL: starting a throwaway cluster", flush=True)
        with PostgresServer() as pg:
            url = pg.create_database("cachebench")
            report["postgresql"] = await bench_database(
                "postgresql", {"TUSSERVER_DATABASE_URL": url}, url, work, args
            )
    print(f"\nGET /api/v1/file/{{id}}, {args.files} files, JWT auth, median of {args.rounds} "
          f"round(s) of {args.seconds:g} s, concurrency {args.concurrency}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'database':<12}{'mode':<10}{'seq/s':>9}{'p50':>8}{'p99':>8}"
          f"{'conc/s':>10}{'p50':>8}{'p99':>8}")  # fmt: skip
    for label in ("sqlite", "postgresql"):
        for mode, m in report.get(label, {}).items():
            s, c = m["sequential"], m["concurrent"]
            print(f"{label:<12}{mode:<10}{s['rps']:>9.1f}{s['p50_ms']:>8.2f}{s['p99_ms']:>8.2f}"
                  f"{c['rps']:>10.1f}{c['p50_ms']:>8.2f}{c['p99_ms']:>8.2f}")  # fmt: skip
    print("(latencies in ms, measured by the client: send to body read)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("cache-quick.json" if args.quick else "cache.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
