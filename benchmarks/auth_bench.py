"""Cost of authentication and rate limiting on the tus hot path (HEAD and small PATCHes).

    .venv/bin/python benchmarks/auth_bench.py            # ~2 minutes
    .venv/bin/python benchmarks/auth_bench.py --quick

Three configurations of the same server build, SQLite catalog, each in its own data dir:

    none        TUSSERVER_AUTH=none (no principal lookup, no limiter)
    jwt         TUSSERVER_AUTH=jwt, Bearer token from POST /api/v1/auth/login, all limits 0
    jwt+limits  the same with every limit on at rates far above the load (never a 429)

Workloads (one aiohttp client process, ``--concurrency`` workers):

    HEAD        each worker HEADs its own upload in a loop
    PATCH 1KiB  each worker appends 1 KiB PATCHes at sequential offsets to its own upload of
                a 1 GiB declared length

The configurations run in rounds (none, jwt, jwt+limits, none, ...) and the median round is
reported, with the overhead against ``none``. Results: benchmarks/results/auth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
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

from tusserver.testing import (  # noqa: E402
    clean_environ,
    tree_cpu_seconds,
    tusserver_command,
    tusserver_process,
)

RESULTS = HERE / "results"
TUS = {"Tus-Resumable": "1.0.0"}
USER, PASSWORD = "bench", "bench-password-123"
HIGH = "1000000000"  # a rate no benchmark reaches

CONFIGS: dict[str, dict[str, str]] = {
    "none": {"TUSSERVER_AUTH": "none", "TUSSERVER_RATE_LIMIT_CREATIONS": "0",
             "TUSSERVER_RATE_LIMIT_API": "0"},
    "jwt": {"TUSSERVER_AUTH": "jwt", "TUSSERVER_RATE_LIMIT_CREATIONS": "0",
            "TUSSERVER_RATE_LIMIT_API": "0", "TUSSERVER_RATE_LIMIT_PATCH_BYTES": "0"},
    "jwt+limits": {"TUSSERVER_AUTH": "jwt", "TUSSERVER_RATE_LIMIT_CREATIONS": HIGH,
                   "TUSSERVER_RATE_LIMIT_CREATIONS_BURST": HIGH,
                   "TUSSERVER_RATE_LIMIT_API": HIGH, "TUSSERVER_RATE_LIMIT_API_BURST": HIGH,
                   "TUSSERVER_RATE_LIMIT_PATCH_BYTES": HIGH},
}  # fmt: skip


def _exe() -> str:
    return tusserver_command()[0]


def _settings(extra: dict[str, str]) -> dict[str, str]:
    return {"TUSSERVER_LOG_LEVEL": "warning", "TUSSERVER_FSYNC": "false", **extra}


def _env(data: Path, extra: dict[str, str]) -> dict[str, str]:
    return {**clean_environ(), "TUSSERVER_DATA_DIR": str(data), **_settings(extra)}


class Server:
    """One configuration of tusserver (the shared harness of tusserver.testing)."""

    def __init__(self, name: str, data: Path) -> None:
        self.name, self.data = name, data
        self.process = tusserver_process(
            data, _settings(CONFIGS[name]), log_path=data.parent / f"{name}.log", name=name
        )

    @property
    def base(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def start(self) -> None:
        await asyncio.to_thread(self.process.start)

    def stop(self) -> None:
        self.process.terminate(timeout=10)


def add_user(data: Path) -> None:
    subprocess.run(
        [_exe(), "user", "add", USER], input=PASSWORD + "\n", text=True, check=True,
        env=_env(data, {}), cwd=REPO, stdout=subprocess.DEVNULL,
    )  # fmt: skip


async def login(s: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with s.post(base + "/api/v1/auth/login",
                      json={"username": USER, "password": PASSWORD}) as r:  # fmt: skip
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"login: {r.status} {body}")
    return {"Authorization": f"Bearer {body['access_token']}"}


async def create(s: aiohttp.ClientSession, base: str, auth: dict[str, str], length: int) -> str:
    async with s.post(
        base + "/uploads/", headers={**TUS, **auth, "Upload-Length": str(length)}
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"create: {r.status} {await r.text()}")
        loc = r.headers["Location"]
    return loc if loc.startswith("http") else base + loc


async def bench_head(s: aiohttp.ClientSession, urls: list[str], auth: dict[str, str],
                     seconds: float) -> dict[str, Any]:  # fmt: skip
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(url: str) -> None:
        nonlocal errors
        h = {**TUS, **auth}
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            async with s.head(url, headers=h) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            lat.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(worker(u) for u in urls))
    wall = time.monotonic() - t0
    return _summary(lat, wall, errors)


async def bench_patch(s: aiohttp.ClientSession, urls: list[str], auth: dict[str, str],
                      seconds: float, size: int) -> dict[str, Any]:  # fmt: skip
    body = os.urandom(size)
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def worker(url: str) -> None:
        nonlocal errors
        async with s.head(url, headers={**TUS, **auth}) as r:
            offset = int(r.headers["Upload-Offset"])
        while time.monotonic() < stop:
            h = {**TUS, **auth, "Upload-Offset": str(offset),
                 "Content-Type": "application/offset+octet-stream"}  # fmt: skip
            t0 = time.perf_counter()
            async with s.patch(url, headers=h, data=body) as r:
                await r.read()
                if r.status != 204:
                    errors += 1
                    offset = int(await _head(s, url, auth))
                else:
                    offset = int(r.headers["Upload-Offset"])
            lat.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(worker(u) for u in urls))
    wall = time.monotonic() - t0
    return _summary(lat, wall, errors)


async def _head(s: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> str:
    async with s.head(url, headers={**TUS, **auth}) as r:
        return r.headers["Upload-Offset"]


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of the server's process tree so far."""
    return tree_cpu_seconds(pid)


def _summary(lat: list[float], wall: float, errors: int) -> dict[str, Any]:
    return {"requests": len(lat), "errors": errors, "rps": round(len(lat) / wall, 1),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}  # fmt: skip


async def one_round(server: Server, conc: int, seconds: float, chunk: int) -> dict[str, Any]:
    await server.start()
    try:
        conn = aiohttp.TCPConnector(limit=conc + 4)
        async with aiohttp.ClientSession(connector=conn) as s:
            auth = await login(s, server.base) if server.name != "none" else {}
            urls = [await create(s, server.base, auth, 1 << 30) for _ in range(conc)]
            # warm-up
            await bench_head(s, urls, auth, 1.0)
            await bench_patch(s, urls, auth, 1.0, chunk)
            pid = server.pid
            cpu0 = server_cpu(pid)
            head = await bench_head(s, urls, auth, seconds)
            cpu1 = server_cpu(pid)
            patch = await bench_patch(s, urls, auth, seconds, chunk)
            cpu2 = server_cpu(pid)
            # Server CPU per request: steadier than rps when the client shares the machine.
            head["cpu_us"] = round((cpu1 - cpu0) / max(head["requests"], 1) * 1e6, 1)
            patch["cpu_us"] = round((cpu2 - cpu1) / max(patch["requests"], 1) * 1e6, 1)
            for u in urls:  # leave no 1 GiB reservations behind
                async with s.delete(u, headers={**TUS, **auth}) as r:
                    await r.read()
    finally:
        server.stop()
    return {"head": head, "patch": patch}


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=1024)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    work = Path(tempfile.mkdtemp(prefix="tus-authbench-"))
    servers = {}
    for name in CONFIGS:
        data = work / name
        data.mkdir()
        if name != "none":
            add_user(data)
        servers[name] = Server(name, data)
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in CONFIGS}
    for i in range(args.rounds):
        for name, server in servers.items():
            r = await one_round(server, args.concurrency, args.seconds, args.chunk)
            rounds[name].append(r)
            print(f"round {i + 1} {name:<11} HEAD {r['head']['rps']:>8.1f}/s  "
                  f"PATCH {r['patch']['rps']:>8.1f}/s  errors {r['head']['errors']}/"
                  f"{r['patch']['errors']}", flush=True)  # fmt: skip
    med: dict[str, dict[str, Any]] = {}
    for name, rs in rounds.items():
        med[name] = {}
        for kind in ("head", "patch"):
            ordered = sorted(rs, key=lambda r: r[kind]["rps"])
            med[name][kind] = dict(ordered[len(ordered) // 2][kind])
            med[name][kind]["rps_all_rounds"] = [r[kind]["rps"] for r in rs]
            cpus = sorted(r[kind]["cpu_us"] for r in rs)
            med[name][kind]["cpu_us"] = cpus[len(cpus) // 2]
    base = med["none"]
    print(f"\nmedian of {args.rounds} rounds, {args.seconds:.0f} s each, concurrency "
          f"{args.concurrency}, PATCH {args.chunk} B, SQLite, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'config':<12}{'HEAD/s':>10}{'p50':>8}{'p99':>8}{'vs none':>9}{'cpu us':>8}{'vs none':>9}"
          f"{'PATCH/s':>10}{'p50':>8}{'p99':>8}{'vs none':>9}{'cpu us':>8}{'vs none':>9}")  # fmt: skip
    for name, m in med.items():
        cells = []
        for kind in ("head", "patch"):
            r = m[kind]
            over = (base[kind]["rps"] / r["rps"] - 1) * 100 if r["rps"] else float("nan")
            r["overhead_pct_vs_none"] = round(over, 1)
            cpu_over = (
                (r["cpu_us"] / base[kind]["cpu_us"] - 1) * 100 if base[kind]["cpu_us"] else 0.0
            )
            r["cpu_overhead_pct_vs_none"] = round(cpu_over, 1)
            cells.append(f"{r['rps']:>10.1f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{over:>+8.1f}%"
                         f"{r['cpu_us']:>8.0f}{cpu_over:>+8.1f}%")  # fmt: skip
        print(f"{name:<12}" + "".join(cells))
    print("(overhead = extra time per request: rps_none / rps_config - 1; cpu us = server CPU "
          "per request, median round)")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("auth-quick.json" if args.quick else "auth.json")
    report = {"cpus": os.cpu_count(), "rounds": args.rounds, "seconds": args.seconds,
              "concurrency": args.concurrency, "chunk": args.chunk, "median": med,
              "all": rounds}  # fmt: skip
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
