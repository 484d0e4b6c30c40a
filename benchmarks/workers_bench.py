"""Upload throughput of one server process against two, and the ceiling of the machine.

    .venv/bin/python benchmarks/workers_bench.py            # 3 rounds, ~6 min on 2 idle cores
    .venv/bin/python benchmarks/workers_bench.py --quick    # 1 round of smaller scenarios
    .venv/bin/python benchmarks/workers_bench.py --variants sink sqlite   # no PostgreSQL

Variants, each with 1 and then 2 server processes (``--processes``), run interleaved in one
run (round 1: every variant, round 2: every variant, ...) so that drift in the machine's load
hits all of them:

- ``sink``: benchmarks/sink.py, a bare aiohttp handler (no database, no tus logic); two
  processes = two sink processes on one port (SO_REUSEPORT). The ceiling: what N aiohttp
  processes do with this client on this machine.
- ``sqlite``: ``tusserver serve --workers N`` on the embedded default (SQLite + local disk,
  the pipeline in the server), auth, rate limits and fsync off: run_all.py's ``tusserver``.
- ``postgres``: the same with PostgreSQL as the catalog (a throwaway cluster started here
  with tests/services.py, fsync off; upload locks and the cache on PostgreSQL as ``auto``
  chooses them). Its CPU is reported apart (``db CPU``): it shares the cores too.

The load generator (load.py: one asyncio process, aiohttp) runs in this process and shares
the cores with the servers: its CPU is reported beside the server's, ``cores busy`` =
(server + client + database CPU) / wall time, and ``CPU bound`` = the rate that CPU per upload
allows once the cores are free: all cores busy, each server process and the client (one
process) at most one core each. With 2 processes on 2 cores the client
takes part of the second core, so 2 processes cannot reach 2x; the sink's ratio is what the
machine gives a server that costs next to nothing, and ``CPU bound`` of 2 processes / that of
1 is the ratio the measured CPU per upload allows (on a loaded machine the measured rates
stay far below it).

Scenarios (as in run_all.py): ``small`` = 2000 uploads of 4 KiB (POST + one PATCH),
concurrency 32; ``large`` = 8 concurrent uploads of 64 MiB in 8 MiB PATCHes. The median
round is reported; every round is kept in benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from load import BodySource, KiB, MiB, Scenario, run_scenario  # noqa: E402
from run_all import (  # noqa: E402
    RESULTS,
    Server,
    _base_env,
    _sync,
    _tusserver_bin,
    retire,
    settle,
    stop_all,
)

from tusserver.testing import process_tree, tree_cpu_seconds  # noqa: E402

Builder = Callable[[int, Path], tuple[list[str], dict[str, str]]]
VARIANTS = ("sink", "sqlite", "postgres")


def _tusserver(workers: int, database_url: str | None = None) -> Builder:
    def build(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
        argv = [_tusserver_bin(), "--data-dir", str(data), "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        env = _base_env()
        env.update(
            TUSSERVER_FSYNC="false",
            TUSSERVER_LOG_LEVEL="warning",
            TUSSERVER_AUTH="none",
            TUSSERVER_RATE_LIMIT_CREATIONS="0",
        )
        if database_url:
            env["TUSSERVER_DATABASE_URL"] = database_url
        return argv, env

    return build


def _sink(processes: int) -> Builder:
    def build(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, str(HERE / "sink.py"), "--port", str(port)]
        argv += ["--data-dir", str(data), "--processes", str(processes)]
        return argv, _base_env()

    return build


def _cpu_by_process(pid: int) -> dict[int, float]:
    """Own user + system CPU seconds of each live process of the tree (no reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / tick
    return out


class Postgres:
    """A throwaway PostgreSQL (tests/services.py), one fresh database per run."""

    def __init__(self, workdir: Path) -> None:
        import services

        workdir.mkdir(parents=True, exist_ok=True)
        for d in (workdir.parent, workdir):
            d.chmod(0o755)  # the cluster runs as `postgres` when we are root
        self.server = services.PostgresServer(base_dir=workdir)
        self.server.start()
        self._n = 0

    def fresh_url(self) -> str:
        self._n += 1
        return self.server.create_database(f"bench{self._n}")

    def cpu_s(self) -> float:
        proc = self.server.proc
        return tree_cpu_seconds(proc.pid) if proc is not None else 0.0

    def close(self) -> None:
        self.server.close()


async def _one(
    variant: str,
    processes: int,
    scenario: Scenario,
    workdir: Path,
    source: BodySource,
    pg: Postgres | None,
) -> dict[str, Any]:
    if variant == "sink":
        builder = _sink(processes)
    elif variant == "postgres":
        assert pg is not None
        builder = _tusserver(processes, pg.fresh_url())
    else:
        builder = _tusserver(processes)
    # A fresh data directory per run: earlier runs' small files stay until the end (retire).
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}{processes}-", dir=workdir))
    server = Server(f"{variant}{processes}", builder, run_dir)
    try:
        server.start()
        await server.wait_ready()
        await asyncio.sleep(1.0)  # every process up (the supervisor forks after binding)
        warm = Scenario("warmup", 50, 4 * KiB, 4 * KiB, 8)
        await run_scenario(server.endpoint, warm, source, timeout=120)
        await settle(server.pid)
        _sync()
        cpu0, client0 = _cpu_by_process(server.pid), time.process_time()
        tree0, db0 = tree_cpu_seconds(server.pid), pg.cpu_s() if pg else 0.0
        res = await run_scenario(server.endpoint, scenario, source, timeout=600)
        tree1, client1 = tree_cpu_seconds(server.pid), time.process_time()
        cpu1, db1 = _cpu_by_process(server.pid), pg.cpu_s() if pg else 0.0
        out = res.as_dict()
        out["server_cpu_s"] = round(tree1 - tree0, 2)
        out["client_cpu_s"] = round(client1 - client0, 2)
        out["db_cpu_s"] = round(db1 - db0, 2) if variant == "postgres" else 0.0
        busy = out["server_cpu_s"] + out["client_cpu_s"] + out["db_cpu_s"]
        out["cores_busy"] = round(busy / res.wall_s, 2) if res.wall_s else None
        # CPU of each process that used any (the supervisor uses next to none): the balance
        split = sorted((round(cpu1[p] - cpu0.get(p, 0.0), 2) for p in cpu1), reverse=True)
        out["cpu_by_process_s"] = [c for c in split if c >= 0.05]
        out["server_processes"] = len(process_tree(server.pid))
        out["settle_s"] = await settle(server.pid)
        if res.completed:
            per = 1000 / res.completed
            out["server_cpu_ms_per_upload"] = round(out["server_cpu_s"] * per, 2)
            out["client_cpu_ms_per_upload"] = round(out["client_cpu_s"] * per, 2)
            out["db_cpu_ms_per_upload"] = round(out["db_cpu_s"] * per, 2)
        return out
    finally:
        server.stop()
        retire(server.data_dir)


def _headline(scenario: str) -> tuple[str, str]:
    return ("uploads_per_s", "uploads/s") if scenario == "small" else ("mib_per_s", "MiB/s")


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _combos(variants: list[str], processes: list[int]) -> Iterator[tuple[str, int]]:
    for v in variants:
        for n in processes:
            yield v, n


def _summarize(
    scenario: str, runs: dict[tuple[str, int], list[dict[str, Any]]], cpus: int, base_n: int
) -> dict[str, Any]:
    key, _ = _headline(scenario)
    out: dict[str, Any] = {}
    for (v, n), rs in runs.items():
        med = statistics.median(r[key] for r in rs)
        chosen = min(rs, key=lambda r: abs(r[key] - med))
        entry: dict[str, Any] = {"median": med, "all": [r[key] for r in rs], "run": chosen}
        if scenario == "small" and chosen.get("completed"):
            cpu_ms = (
                chosen["server_cpu_ms_per_upload"]
                + chosen["client_cpu_ms_per_upload"]
                + chosen["db_cpu_ms_per_upload"]
            )
            # The most this CPU cost per upload allows: every core busy, each server process
            # at most one core, the client (one process) at most one core.
            bounds = [cpus * 1000 / cpu_ms] if cpu_ms else []
            if chosen["server_cpu_ms_per_upload"]:
                bounds.append(n * 1000 / chosen["server_cpu_ms_per_upload"])
            if chosen["client_cpu_ms_per_upload"]:
                bounds.append(1000 / chosen["client_cpu_ms_per_upload"])
            entry["cpu_bound_uploads_per_s"] = round(min(bounds), 1) if bounds else None
        out.setdefault(v, {})[str(n)] = entry
    for v, by_n in out.items():
        base = by_n.get(str(base_n), {}).get("median")
        for n, entry in list(by_n.items()):
            if n == str(base_n) or not base:
                continue
            entry["ratio_vs_1"] = round(entry["median"] / base, 2)
            bound = entry.get("cpu_bound_uploads_per_s")
            base_bound = by_n[str(base_n)].get("cpu_bound_uploads_per_s")
            if bound and base_bound:
                entry["cpu_bound_ratio_vs_1"] = round(bound / base_bound, 2)
    return out


def _print_table(name: str, summary: dict[str, Any]) -> None:
    _, unit = _headline(name)
    print(f"\n{name} ({unit}, median of rounds):")
    head = f"  {'variant':9} {'procs':>5} {unit:>10} {'ratio':>6} {'CPU bound':>10}"
    head += f" {'srv ms/up':>9} {'cli ms/up':>9} {'db ms/up':>8} {'busy':>5}  CPU by process s"
    print(head)
    for v, by_n in summary.items():
        for n, e in by_n.items():
            r = e["run"]
            ratio = e.get("ratio_vs_1")
            bound = e.get("cpu_bound_uploads_per_s")
            print(
                f"  {v:9} {n:>5} {e['median']:10.1f} {ratio if ratio else '':>6} "
                f"{bound if bound else '':>10} {r.get('server_cpu_ms_per_upload', ''):>9} "
                f"{r.get('client_cpu_ms_per_upload', ''):>9} {r.get('db_cpu_ms_per_upload', ''):>8} "
                f"{r['cores_busy']:>5}  {r['cpu_by_process_s']}"
            )


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--scenarios", nargs="+", choices=("small", "large"), default=None)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        scenarios = [
            Scenario("small", 300, 4 * KiB, 4 * KiB, 32),
            Scenario("large", 4, 16 * MiB, 8 * MiB, 4),
        ]
        args.rounds = 1
    else:
        scenarios = [
            Scenario("small", 2000, 4 * KiB, 4 * KiB, 32),
            Scenario("large", 8, 64 * MiB, 8 * MiB, 8),
        ]
    if args.scenarios:
        scenarios = [s for s in scenarios if s.name in args.scenarios]
    source = BodySource()
    cpus = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {cpus} CPUs, {platform.platform()}",
        "python": platform.python_version(),
        "cpus": cpus,
        "rounds": args.rounds,
        "loadavg": {"start": _loadavg()},
        "results": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="tus-workers-bench-"))
    print(f"{cpus} CPUs, shared by the client and the servers; load average {_loadavg()}")
    pg: Postgres | None = None
    try:
        if "postgres" in args.variants:
            pg = Postgres(workdir / "pg")
        for scenario in scenarios:
            key, unit = _headline(scenario.name)
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {
                c: [] for c in _combos(args.variants, args.processes)
            }
            for _ in range(args.rounds):
                for v, n in _combos(args.variants, args.processes):
                    r = await _one(v, n, scenario, workdir, source, pg)
                    r["loadavg_after"] = _loadavg()
                    runs[(v, n)].append(r)
                    print(
                        f"  {scenario.name:5} {v:8} x{n}: {r[key]:8.1f} {unit}  server CPU "
                        f"{r['server_cpu_s']:6.2f} s  client {r['client_cpu_s']:5.2f} s  db "
                        f"{r['db_cpu_s']:5.2f} s  busy {r['cores_busy']}  by process "
                        f"{r['cpu_by_process_s']}  errors {r['errors']}  load "
                        f"{r['loadavg_after'][0]}",
                        flush=True,
                    )
            summary = _summarize(scenario.name, runs, cpus, args.processes[0])
            report["results"][scenario.name] = summary
            _print_table(scenario.name, summary)
    finally:
        stop_all()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg"]["end"] = _loadavg()
    print(f"\nload average at the end: {report['loadavg']['end']}")
    RESULTS.mkdir(exist_ok=True)
    out = args.output or RESULTS / ("workers-quick.json" if args.quick else "workers.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"written {out}")
    errors = sum(
        r["errors"]
        for s in report["results"].values()
        for by_n in s.values()
        for e in by_n.values()
        for r in [e["run"]]
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
