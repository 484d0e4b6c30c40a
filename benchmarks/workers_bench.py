"""Upload throughput of ``tusserver serve --workers 1`` against ``--workers 2``.

    .venv/bin/python benchmarks/workers_bench.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/workers_bench.py --quick    # smoke run

The embedded default (SQLite + local disk, the pipeline in the server), auth and rate limits
off, fsync off: the same server as run_all.py's ``tusserver`` target, started with
``--workers N``. The load generator (load.py: one asyncio process, aiohttp) runs in this
process and shares the machine's cores with the server: its own CPU time is reported beside
the server's, and ``cores busy`` = (server + client CPU) / wall time says how close the run
came to the machine's ceiling (the number of CPUs). Once the cores are full, more server
processes cannot help: the client is then the limit.

Scenarios (as in run_all.py): ``small`` = 2000 uploads of 4 KiB (POST + one PATCH),
concurrency 32; ``large`` = 8 concurrent uploads of 64 MiB in 8 MiB PATCHes. Each
configuration runs ``--rounds`` times, alternating, and the median round is reported.
Results: benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from load import BodySource, KiB, MiB, Scenario, run_scenario  # noqa: E402
from run_all import (  # noqa: E402
    RESULTS,
    Server,
    _base_env,
    _sync,
    _tusserver_bin,
    settle,
    stop_all,
)

from tusserver.testing import process_tree, tree_cpu_seconds  # noqa: E402


def _builder(workers: int) -> Callable[[int, Path], tuple[list[str], dict[str, str]]]:
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
        return argv, env

    return build


async def _one(
    workers: int, scenario: Scenario, workdir: Path, source: BodySource
) -> dict[str, Any]:
    server = Server(f"workers{workers}", _builder(workers), workdir)
    try:
        server.start()
        await server.wait_ready()
        await asyncio.sleep(1.0)  # every process up (the supervisor forks after binding)
        warm = Scenario("warmup", 50, 4 * KiB, 4 * KiB, 8)
        await run_scenario(server.endpoint, warm, source, timeout=120)
        await settle(server.pid)
        _sync()
        server_cpu0, client_cpu0 = tree_cpu_seconds(server.pid), time.process_time()
        res = await run_scenario(server.endpoint, scenario, source, timeout=600)
        out = res.as_dict()
        out["server_cpu_s"] = round(tree_cpu_seconds(server.pid) - server_cpu0, 2)
        out["client_cpu_s"] = round(time.process_time() - client_cpu0, 2)
        out["cores_busy"] = round((out["server_cpu_s"] + out["client_cpu_s"]) / res.wall_s, 2)
        out["server_processes"] = len(process_tree(server.pid))
        out["settle_s"] = await settle(server.pid)
        return out
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
    source = BodySource()
    cpus = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {"cpus": cpus, "rounds": args.rounds, "results": {}}
    workdir = Path(tempfile.mkdtemp(prefix="tus-workers-bench-"))
    print(f"{cpus} CPUs; client and server share them", flush=True)
    try:
        for scenario in scenarios:
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.workers}
            for _ in range(args.rounds):
                for n in args.workers:  # alternating: drift in the machine's load hits both
                    r = await _one(n, scenario, workdir, source)
                    runs[n].append(r)
                    head = r["uploads_per_s"] if scenario.name == "small" else r["mib_per_s"]
                    print(
                        f"  {scenario.name:5} --workers {n}: "
                        f"{head:8.1f} {'uploads/s' if scenario.name == 'small' else 'MiB/s'}"
                        f"  server CPU {r['server_cpu_s']:6.2f} s  client CPU "
                        f"{r['client_cpu_s']:6.2f} s  cores busy {r['cores_busy']:.2f}"
                        f"  errors {r['errors']}",
                        flush=True,
                    )
            key = "uploads_per_s" if scenario.name == "small" else "mib_per_s"
            summary: dict[str, Any] = {}
            for n, rs in runs.items():
                med = statistics.median(r[key] for r in rs)
                chosen = min(rs, key=lambda r: abs(r[key] - med))
                summary[str(n)] = {"median": med, "run": chosen, "all": [r[key] for r in rs]}
            base = summary[str(args.workers[0])]["median"]
            for n in args.workers[1:]:
                summary[f"ratio_{n}_vs_{args.workers[0]}"] = (
                    round(summary[str(n)]["median"] / base, 2) if base else None
                )
            report["results"][scenario.name] = summary
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("workers-quick.json" if args.quick else "workers.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {out}")
    for name, summary in report["results"].items():
        ratios = {k: v for k, v in summary.items() if k.startswith("ratio")}
        medians = {k: v["median"] for k, v in summary.items() if not k.startswith("ratio")}
        print(f"{name}: medians {medians} {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
