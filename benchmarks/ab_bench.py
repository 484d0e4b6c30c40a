"""Interleaved A/B of tusserver source trees on large uploads: peak RSS, MiB/s, server CPU.

    .venv/bin/python benchmarks/ab_bench.py --var main=/tmp/main-src --var new=. --var sink=sink
    .venv/bin/python benchmarks/ab_bench.py --var a=SRC --var b=SRC,TUSSERVER_WRITE_BUFFER_SIZE=131072

Each ``--var label=SRC[,ENV=VALUE...]`` is a directory holding ``tusserver``,
``storage_backends`` and ``auth`` (e.g. ``git archive main tusserver storage_backends auth |
tar -x -C /tmp/main-src``), put first on ``PYTHONPATH`` of the server, plus extra
environment; ``sink`` is benchmarks/sink.py. Every run is a fresh server (fsync off, auth
none, no rate limit) on 127.0.0.1; the variants alternate in each round (A B, then B A) so
drift on a shared machine hits them alike. Per run: peak RSS (``VmHWM``), idle RSS, MiB/s of
the uploads, MiB/s counting the server's work after the last response (its pipeline:
``settle``) as time, and server CPU seconds with and without that work, and its user part alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load import BodySource, KiB, MiB, Scenario, run_scenario  # noqa: E402
from run_all import create_probe_us, retire, settle  # noqa: E402

from tusserver.testing import (  # noqa: E402
    ServerProcess,
    tree_cpu_seconds,
    tree_cpu_split,
    tree_memory_mib,
    tusserver_command,
)

SCENARIOS = {
    "m8x64": Scenario("m8x64", uploads=8, size=64 * MiB, chunk=64 * MiB, concurrency=8),
    "m32x32": Scenario("m32x32", uploads=32, size=32 * MiB, chunk=32 * MiB, concurrency=32),
    # One upload alone: what a single client gets (no other upload to overlap its writes).
    "s1x256": Scenario("s1x256", uploads=1, size=256 * MiB, chunk=256 * MiB, concurrency=1),
    "large": Scenario("large", uploads=8, size=64 * MiB, chunk=8 * MiB, concurrency=8),
    "large4": Scenario("large4", uploads=8, size=64 * MiB, chunk=8 * MiB, concurrency=4),
    # The small-upload workload of run_all (issue #21): creation-with-upload, then a HEAD.
    "small": Scenario(
        "small", uploads=2000, size=4 * KiB, chunk=4 * KiB, concurrency=32, mode="cwu"
    ),
}


async def one_run(
    label: str, src: str, extra_env: dict[str, str], scenario: Scenario, work: Path
) -> dict[str, Any]:
    probe_us = create_probe_us(work)
    # A fresh directory per run: earlier runs' small files stay until the end (retire).
    data = Path(tempfile.mkdtemp(prefix=f"{label}-data-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    if src == "sink":

        def argv(port: int) -> list[str]:
            sink = [sys.executable, str(HERE / "sink.py")]
            return [*sink, "--port", str(port), "--data-dir", str(data)]

    else:
        env["PYTHONPATH"] = str(Path(src).resolve())
        env.update(
            TUSSERVER_FSYNC="false",
            TUSSERVER_LOG_LEVEL="warning",
            TUSSERVER_AUTH="none",
            TUSSERVER_RATE_LIMIT_CREATIONS="0",
        )

        def argv(port: int) -> list[str]:
            serve = [*tusserver_command(), "--data-dir", str(data), "serve"]
            return [*serve, "--host", "127.0.0.1", "--port", str(port)]

    env.update(extra_env)
    proc = ServerProcess(
        argv,
        env=env,
        log_path=work / f"{label}.log",
        ready_path="/uploads/",
        ready=lambda status: status < 500,
        name=label,
        cwd=work,
    )
    proc.spawn()
    try:
        if await asyncio.to_thread(proc.wait_ready, time.monotonic() + 30) is not None:
            raise RuntimeError(f"{label} exited:\n{proc.log()[-2000:]}")
        assert proc.pid is not None
        pid = proc.pid
        await settle(pid)
        os.sync()
        idle = tree_memory_mib(pid, "VmRSS")
        cpu0 = tree_cpu_seconds(pid)
        user0, _ = tree_cpu_split(pid)
        res = await run_scenario(f"{proc.url}/uploads/", scenario, BodySource(), timeout=300)
        cpu = tree_cpu_seconds(pid) - cpu0
        settled = await settle(pid)
        user = tree_cpu_split(pid)[0] - user0
        mib = res.bytes_acked / MiB
        return {
            "label": label,
            "uploads": scenario.uploads,
            "scenario": scenario.name,
            "ok": not res.errors and not res.timed_out,
            "first_error": res.first_error,
            "rss_peak_mib": tree_memory_mib(pid, "VmHWM"),
            "rss_idle_mib": idle,
            "mib_per_s": res.mib_per_s,
            "mib_per_s_incl_settle": round(mib / (res.wall_s + settled), 1),
            "settle_s": settled,
            "server_cpu_s": round(cpu, 2),
            "server_cpu_s_incl_settle": round(tree_cpu_seconds(pid) - cpu0, 2),
            # User CPU alone (pipeline included): steadier than the total on a shared VM.
            "server_user_cpu_s_incl_settle": round(user, 2),
            "uploads_per_s": res.uploads_per_s,
            "post_p99_ms": res.post_p99_ms,
            "loadavg": round(os.getloadavg()[0], 1),
            "create_probe_us": probe_us,
        }
    finally:
        proc.terminate(timeout=10)
        retire(data)  # the small files stay until the end of the run (see run_all.retire)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    variants = []
    for spec in args.var:
        label, _, rest = spec.partition("=")
        src, *pairs = rest.split(",")
        variants.append((label, src, dict(p.split("=", 1) for p in pairs)))
    work = Path(tempfile.mkdtemp(prefix="tus-ab-", dir=args.tmp_dir))
    rows: list[dict[str, Any]] = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        for r in range(args.rounds):
            for name in args.scenarios:
                for label, src, env in variants if r % 2 == 0 else variants[::-1]:
                    row = await one_run(label, src, env, SCENARIOS[name], work)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--var", action="append", required=True, help="label=SRC[,ENV=VALUE...]")
    p.add_argument(
        "--scenarios", nargs="+", choices=list(SCENARIOS), default=["m8x64", "m32x32", "large4"]
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tmp-dir", help="where the servers' data directories go")
    p.add_argument("--output", type=Path, default=HERE / "results" / "ab.json")
    args = p.parse_args()
    rows = asyncio.run(main_async(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2) + "\n")
    print(
        f"\n{'variant':<12}{'scenario':<10}{'peak RSS':>10}{'MiB/s':>8}{'incl':>8}{'CPU s':>8}"
        f"{'up/s':>8}{'ms/up':>7}{'user':>7}"
    )
    for r in rows:
        print(
            f"{r['label']:<12}{r['scenario']:<10}{r['rss_peak_mib']:>10}{r['mib_per_s']:>8}"
            f"{r['mib_per_s_incl_settle']:>8}{r['server_cpu_s_incl_settle']:>8}"
            f"{r['uploads_per_s']:>8}{1000 * r['server_cpu_s_incl_settle'] / r['uploads']:>7.2f}"
            f"{1000 * r['server_user_cpu_s_incl_settle'] / r['uploads']:>7.2f}"
            f"{'' if r['ok'] else '  FAILED: ' + str(r['first_error'])}"
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
