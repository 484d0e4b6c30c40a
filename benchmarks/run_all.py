"""Benchmark tusserver against a trivial aiohttp sink and the official @tus/server.

    .venv/bin/python benchmarks/run_all.py            # full run, a few minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick    # smoke run, well under a minute

Every target runs as a subprocess on a free 127.0.0.1 port with its own temporary data
directory, and is driven by the same load generator (benchmarks/load.py). Results are printed
as a table and written to benchmarks/results/latest.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # tests.services (the PostgreSQL of the tusserver-pg target)

from load import BodySource, KiB, MiB, Scenario, run_scenario  # noqa: E402

from tusserver.testing import (  # noqa: E402
    ServerError,
    ServerProcess,
    process_tree,
    tree_cpu_seconds,
    tree_memory_mib,
)

RESULTS = HERE / "results"


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    large: Scenario
    medium: Scenario
    small: Scenario
    #: Peak-RSS scenarios, each on a fresh tusserver (one big PATCH per upload).
    memory: tuple[Scenario, ...]
    warmup: tuple[Scenario, ...]
    scenario_timeout: float
    #: Runs of each main scenario; the run with the median headline figure is reported.
    repeat: int
    #: No further run of a scenario once its runs (with their settle time) took this long:
    #: keeps the slow cases (tusserver's small uploads, fsync) from stretching the run.
    repeat_budget_s: float

    #: The main scenarios to run, by name (``--scenarios``); empty: all.
    only: tuple[str, ...] = ()

    @property
    def main(self) -> tuple[Scenario, ...]:
        every = (self.large, self.medium, self.small)
        return tuple(s for s in every if not self.only or s.name in self.only)


FULL = Plan(
    large=Scenario("large", uploads=8, size=64 * MiB, chunk=8 * MiB, concurrency=8),
    medium=Scenario("medium", uploads=64, size=4 * MiB, chunk=4 * MiB, concurrency=16),
    small=Scenario("small", uploads=2000, size=4 * KiB, chunk=4 * KiB, concurrency=32, mode="cwu"),
    memory=(
        Scenario("memory-8x64", uploads=8, size=64 * MiB, chunk=64 * MiB, concurrency=8),
        Scenario("memory-32x32", uploads=32, size=32 * MiB, chunk=32 * MiB, concurrency=32),
    ),
    warmup=(
        Scenario(
            "warmup-small", uploads=100, size=4 * KiB, chunk=4 * KiB, concurrency=16, mode="cwu"
        ),
        Scenario("warmup-large", uploads=4, size=8 * MiB, chunk=2 * MiB, concurrency=4),
    ),
    scenario_timeout=180.0,
    repeat=3,
    repeat_budget_s=20.0,
)

QUICK = Plan(
    large=Scenario("large", uploads=4, size=8 * MiB, chunk=2 * MiB, concurrency=4),
    medium=Scenario("medium", uploads=16, size=1 * MiB, chunk=1 * MiB, concurrency=8),
    small=Scenario("small", uploads=200, size=4 * KiB, chunk=4 * KiB, concurrency=32, mode="cwu"),
    memory=(
        Scenario("memory-4x16", uploads=4, size=16 * MiB, chunk=16 * MiB, concurrency=4),
        Scenario("memory-8x8", uploads=8, size=8 * MiB, chunk=8 * MiB, concurrency=8),
    ),
    warmup=(
        Scenario(
            "warmup-small", uploads=20, size=4 * KiB, chunk=4 * KiB, concurrency=8, mode="cwu"
        ),
    ),
    scenario_timeout=60.0,
    repeat=1,
    repeat_budget_s=0.0,
)


# --- targets --------------------------------------------------------------------------------


def _tusserver_bin() -> str:
    candidate = Path(sys.executable).parent / "tusserver"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("tusserver")
    if found is None:
        raise SystemExit("tusserver executable not found (install the project into the venv)")
    return found


def _base_env() -> dict[str, str]:
    # A developer's own TUSSERVER_* settings must not leak into the measurement.
    return {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}


def _tusserver(
    fsync: bool, *, postgres: bool = False
) -> Callable[[int, Path], tuple[list[str], dict[str, str]]]:
    def build(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
        argv = [_tusserver_bin(), "--data-dir", str(data), "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        env = _base_env()
        env["TUSSERVER_FSYNC"] = "true" if fsync else "false"
        env["TUSSERVER_LOG_LEVEL"] = "warning"
        # The tus protocol is measured here; auth has its own benchmark (auth on vs off).
        env["TUSSERVER_AUTH"] = "none"
        env["TUSSERVER_RATE_LIMIT_CREATIONS"] = "0"
        if postgres:
            # The catalog on PostgreSQL (started by this script, see _postgres_url); the
            # upload and object stores stay on the local disk.
            env["TUSSERVER_DATABASE_URL"] = _postgres_url(data.name)
        return argv, env

    return build


#: The throwaway PostgreSQL cluster of the ``tusserver-pg`` target (tests/services.py),
#: started on first use and stopped by stop_all().
_PG: list[Any] = []


def _postgres_url(name: str) -> str:
    from tests.services import PostgresServer

    if not _PG:
        _PG.append(PostgresServer().start())
    pg = _PG[0]
    db = name.replace("-", "_")
    if db not in _PG[1:]:
        _PG.append(db)
        pg.create_database(db)
    return str(pg.url(db))


def _sink(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
    argv = [sys.executable, str(HERE / "sink.py"), "--port", str(port), "--data-dir", str(data)]
    return argv, _base_env()


def _tus_node(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node not found")
    if not (REPO / "node_modules" / "@tus" / "server").is_dir():
        raise SystemExit("node_modules/@tus/server missing: run `npm install` at the repo root")
    env = _base_env()
    env.pop("DEBUG", None)  # @tus/server logs through `debug`
    return [node, str(HERE / "tus_node_server.mjs"), str(port), str(data)], env


#: name -> (argv/env builder, description)
TARGETS: dict[str, tuple[Callable[[int, Path], tuple[list[str], dict[str, str]]], str]] = {
    "sink": (_sink, "trivial aiohttp + aiofiles sink (no tus logic)"),
    "tusserver": (_tusserver(False), "tusserver, SQLite + local disk, fsync off"),
    "tusserver-fsync": (_tusserver(True), "tusserver, SQLite + local disk, fsync on"),
    "tusserver-pg": (
        _tusserver(False, postgres=True),
        "tusserver, PostgreSQL catalog (local cluster, fsync off) + local disk, fsync off",
    ),
    "tus-node": (_tus_node, "@tus/server + @tus/file-store (Node)"),
}


# --- /proc sampling (the shared harness of tusserver.testing) ------------------------------

tree_cpu_s = tree_cpu_seconds


async def settle(
    pid: int, *, busy: float = 0.05, window: float = 0.5, timeout: float = 45.0
) -> float:
    """Wait until the server tree uses < ``busy`` of a core over ``window`` seconds.

    Returns the seconds waited: background work a target left behind after the last response
    (for tusserver, its post-upload pipeline) shows up here instead of in the next scenario.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = tree_cpu_s(pid)
        await asyncio.sleep(window)
        if tree_cpu_s(pid) - c0 < busy * window:
            break
    return round(max(0.0, time.monotonic() - t0 - window), 2)


# --- the file system between targets -------------------------------------------------------

#: A finished target's files of at least this size are deleted at once (they hold the disk
#: space); the others stay until the end of the run (see :func:`retire`).
RETIRE_NOW_BYTES = 1 * MiB


def retire(data_dir: Path) -> None:
    """Free a finished target's disk space, but leave its many small files until the end.

    On ext4 without a journal (the root file system of this project's VMs), the inode
    allocator passes over every free inode deleted in the last minute (six while its inode
    table block is not written back), with a buffer-cache lookup for each. Deleting the
    thousands of small files a target wrote would bill the next target's file creations for
    it: measured here, 300-650 us of kernel CPU per created file instead of 10-20 us, for
    minutes. Large files are few inodes, so they go now; the run's work directory goes at the
    very end.
    """
    for path in data_dir.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= RETIRE_NOW_BYTES:
                path.unlink()


def create_probe_us(workdir: Path, files: int = 200) -> float:
    """Kernel CPU per file creation in ``workdir`` right now (the files are kept, see
    :func:`retire`): how costly the file system is at this moment, reported beside each
    target's figures so that runs on a file system in different states are not compared
    blindly."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=workdir))
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
    for i in range(files):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    spent = resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before
    return round(spent / files * 1e6, 1)


def journal_of(path: Path) -> bool | None:
    """Whether the ext4 file system holding ``path`` has a journal (None: not ext4, or not
    known)."""
    best: tuple[str, str] | None = None
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            device, mountpoint, fstype, *_ = line.split()
            inside = str(path).startswith(mountpoint.rstrip("/") + "/") or mountpoint == "/"
            if inside and (best is None or len(mountpoint) > len(best[0])):
                best = (mountpoint, device if fstype == "ext4" else "")
    if best is None or not best[1]:
        return None
    task = Path("/sys/fs/ext4") / Path(best[1]).name / "journal_task"
    try:
        return task.read_text().strip() != "<none>"
    except OSError:
        return None


# --- process management ---------------------------------------------------------------------


@dataclass
class Server:
    """One target as a subprocess (tusserver.testing.ServerProcess), in its own process group."""

    name: str
    builder: Callable[[int, Path], tuple[list[str], dict[str, str]]]
    workdir: Path
    process: ServerProcess | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"{self.name}-data"

    @property
    def port(self) -> int:
        assert self.process is not None
        return self.process.port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/uploads/"

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        data, builder = self.data_dir, self.builder
        self.process = ServerProcess(
            lambda port: builder(port, data)[0],
            env=builder(0, data)[1],
            cwd=REPO,
            log_path=self.workdir / f"{self.name}.log",
            # Ready once the creation URL answers anything but a server error.
            ready_path="/uploads/",
            ready=lambda status: status < 500,
            name=self.name,
        )
        self.process.spawn()
        _LIVE.append(self)

    def log_tail(self, lines: int = 20) -> str:
        if self.process is None:
            return ""
        return "\n".join(self.process.log().splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None
        end = time.monotonic() + timeout
        try:
            code = await asyncio.to_thread(self.process.wait_ready, end)
        except ServerError as exc:
            raise RuntimeError(
                f"{self.name} not ready after {timeout}s:\n{self.log_tail()}"
            ) from exc
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate(timeout=10)
        if self in _LIVE:
            _LIVE.remove(self)


_LIVE: list[Server] = []


def stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()
    if _PG:
        with contextlib.suppress(Exception):
            _PG[0].close()
        _PG.clear()


# --- py-spy (optional) ----------------------------------------------------------------------


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    exe = str(py_spy) if py_spy.exists() else shutil.which("py-spy")
    if exe is None:
        print("  (--py-spy: py-spy not installed; `pip install py-spy` into the venv)")
        return None
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
    # --gil: only the thread holding the GIL is sampled, i.e. where Python time really goes
    # (threads blocked in sqlite/queue waits would otherwise dominate the counts).
    argv += ["--rate", "250", "--nonblocking", "--gil"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _package_of(frame: str) -> str:
    """The top-level package or module of a py-spy frame label ("f (aiohttp/web.py:1)")."""
    path = frame.rpartition("(")[2].rstrip(")")
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def _stop_py_spy(proc: subprocess.Popen[bytes], out: Path, top: int = 15) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        return {"error": err.strip()[-500:]}
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    by_module: Counter[str] = Counter()
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        # "func (path/file.py:123)" -> "func (path/file.py)": one row per function.
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        self_t[frames[-1]] += n
        by_module[_package_of(frames[-1])] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return {"error": "no samples"}

    def table(c: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "pct": round(100 * n / total, 1)} for f, n in c.most_common(top)]

    return {
        "samples": total,
        "raw": str(out),
        "top_self": table(self_t),
        "self_by_package": table(by_module),
        "top_inclusive": table(incl),
    }


# --- the run --------------------------------------------------------------------------------


def _sync() -> None:
    # Flush dirty pages left by the previous step so writeback does not bill the next one.
    os.sync()


async def bench_target(
    name: str, workdir: Path, plan: Plan, source: BodySource, py_spy: bool
) -> dict[str, Any]:
    builder, description = TARGETS[name]
    server = Server(name, builder, workdir)
    out: dict[str, Any] = {"description": description, "scenarios": {}}
    print(f"\n== {name}: {description}", flush=True)
    out["create_probe_us"] = create_probe_us(workdir)
    print(f"  file creation costs {out['create_probe_us']} us of kernel CPU here now", flush=True)
    try:
        server.start()
        await server.wait_ready()
        out["rss_idle_mib"] = tree_memory_mib(server.pid, "VmRSS")
        for scenario in plan.warmup:
            await run_scenario(server.endpoint, scenario, source, timeout=plan.scenario_timeout)
        await settle(server.pid)
        for scenario in plan.main:
            runs = []
            began = time.monotonic()
            for i in range(plan.repeat):
                if i and time.monotonic() - began >= plan.repeat_budget_s:
                    break
                _sync()
                spy = None
                spy_out = RESULTS / f"py-spy-{name}-{scenario.name}.txt"
                if py_spy and name.startswith("tusserver") and scenario.name == "small" and i == 0:
                    spy = _start_py_spy(server.pid, spy_out)
                cpu0 = tree_cpu_s(server.pid)
                res = await run_scenario(
                    server.endpoint, scenario, source, timeout=plan.scenario_timeout
                )
                res.server_cpu_s = round(tree_cpu_s(server.pid) - cpu0, 2)
                if spy is not None:
                    res.extra["py_spy"] = _stop_py_spy(spy, spy_out)
                res.extra["settle_s"] = await settle(server.pid)
                res.extra["server_cpu_s_incl_settle"] = round(tree_cpu_s(server.pid) - cpu0, 2)
                res.extra["mib_per_s_incl_settle"] = _incl_settle(res.as_dict())
                runs.append(res.as_dict())
                _print_progress(runs[-1])
            out["scenarios"][scenario.name] = _median_run(runs)
        out["rss_peak_mib"] = tree_memory_mib(server.pid, "VmHWM")
        out["pid_count"] = len(process_tree(server.pid))
    except Exception as exc:  # one broken target must not sink the whole run
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  ERROR: {out['error']}", flush=True)
    finally:
        server.stop()
        retire(server.data_dir)
        _sync()
    return out


def _incl_settle(r: dict[str, Any]) -> float | None:
    """MiB/s counting the server's work after the last response (its pipeline) as time."""
    span = r["wall_s"] + (r["extra"].get("settle_s") or 0.0)
    return round(r["bytes_acked"] / MiB / span, 1) if span else None


async def bench_memory(
    name: str, workdir: Path, scenario: Scenario, source: BodySource, timeout: float
) -> dict[str, Any]:
    """Peak RSS of a fresh server while ``scenario`` runs (one big PATCH per upload), and
    of its pipeline's work on the finished files."""
    builder = TARGETS[name][0]
    server = Server(f"{name}-{scenario.name}", builder, workdir)
    out: dict[str, Any] = {"target": name, "description": scenario.describe()}
    print(f"\n== {scenario.name}: {name}, {scenario.describe()}", flush=True)
    try:
        server.start()
        await server.wait_ready()
        out["rss_idle_mib"] = tree_memory_mib(server.pid, "VmRSS")
        cpu0 = tree_cpu_s(server.pid)
        res = await run_scenario(server.endpoint, scenario, source, timeout=timeout)
        res.server_cpu_s = round(tree_cpu_s(server.pid) - cpu0, 2)
        res.extra["settle_s"] = await settle(server.pid)
        res.extra["server_cpu_s_incl_settle"] = round(tree_cpu_s(server.pid) - cpu0, 2)
        out["rss_peak_mib"] = tree_memory_mib(server.pid, "VmHWM")
        out["result"] = res.as_dict()
        _print_progress(res.as_dict())
        print(f"  peak RSS {out['rss_peak_mib']} MiB (idle {out['rss_idle_mib']} MiB)")
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  ERROR: {out['error']}", flush=True)
    finally:
        server.stop()
        retire(server.data_dir)
        _sync()
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median headline figure, plus every run's figures under ``runs``."""
    key = "uploads_per_s" if runs[0]["scenario"] == "small" else "mib_per_s"
    if any(r["errors"] or r["timed_out"] for r in runs):
        chosen = next(r for r in runs if r["errors"] or r["timed_out"])
    else:
        chosen = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    out = dict(chosen)
    out["headline"] = key
    out["runs"] = [
        {k: r[k] for k in ("mib_per_s", "uploads_per_s", "patch_p50_ms", "patch_p99_ms", "wall_s")}
        | {"server_cpu_s": r["server_cpu_s"], "settle_s": r["extra"].get("settle_s")}
        for r in runs
    ]
    return out


def _print_progress(r: dict[str, Any]) -> None:
    status = "ok" if not r["errors"] and not r["timed_out"] else "FAILED"
    print(
        f"  {r['scenario']:<7} {r['description']}: {r['mib_per_s']} MiB/s, "
        f"{r['uploads_per_s']} uploads/s, PATCH p50 {r['patch_p50_ms']} ms "
        f"p99 {r['patch_p99_ms']} ms, {r['wall_s']} s, server CPU {r['server_cpu_s']} s, "
        f"settle {r['extra'].get('settle_s', '-')} s "
        f"[{status}{'' if status == 'ok' else ': ' + str(r['first_error'])}]",
        flush=True,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return round(a / b, 3)


def _metric(targets: dict[str, Any], name: str, scenario: str, key: str) -> float | None:
    res = targets.get(name, {}).get("scenarios", {}).get(scenario)
    if not res or res["errors"] or res["timed_out"]:
        return None
    value = res[key] if key in res else res["extra"].get(key)
    return float(value) if value is not None else None


def cpu_ms_per_upload(targets: dict[str, Any], name: str, key: str) -> float | None:
    """Server CPU per small upload in ms; ``key`` server_cpu_s (during the requests) or
    server_cpu_s_incl_settle (until the server is idle again: the pipeline's work too)."""
    res = targets.get(name, {}).get("scenarios", {}).get("small")
    if not res or res["errors"] or res["timed_out"] or not res["completed"]:
        return None
    cpu = res["server_cpu_s"] if key == "server_cpu_s" else res["extra"].get(key)
    return None if cpu is None else round(cpu / res["completed"] * 1000, 3)


def _per_upload(targets: dict[str, Any], name: str, key: str) -> str:
    v = cpu_ms_per_upload(targets, name, key)
    return "-" if v is None else f"{v:g}"


def compute_ratios(targets: dict[str, Any]) -> dict[str, float | None]:
    def m(n: str, s: str, k: str) -> float | None:
        return _metric(targets, n, s, k)

    return {
        "tusserver_large_mib_s_vs_sink": _ratio(
            m("tusserver", "large", "mib_per_s"), m("sink", "large", "mib_per_s")
        ),
        # The pipeline's work on the finished files counted (MiB / (wall + settle)).
        "tusserver_large_mib_s_incl_pipeline_vs_sink": _ratio(
            m("tusserver", "large", "mib_per_s_incl_settle"), m("sink", "large", "mib_per_s")
        ),
        "tusserver_fsync_large_mib_s_vs_sink": _ratio(
            m("tusserver-fsync", "large", "mib_per_s"), m("sink", "large", "mib_per_s")
        ),
        "tusserver_medium_mib_s_vs_sink": _ratio(
            m("tusserver", "medium", "mib_per_s"), m("sink", "medium", "mib_per_s")
        ),
        "tusserver_small_uploads_s_vs_tus_node": _ratio(
            m("tusserver", "small", "uploads_per_s"), m("tus-node", "small", "uploads_per_s")
        ),
        "tusserver_fsync_small_uploads_s_vs_tus_node": _ratio(
            m("tusserver-fsync", "small", "uploads_per_s"),
            m("tus-node", "small", "uploads_per_s"),
        ),
        "tusserver_small_cpu_per_upload_incl_pipeline_vs_tus_node": _ratio(
            cpu_ms_per_upload(targets, "tusserver", "server_cpu_s_incl_settle"),
            cpu_ms_per_upload(targets, "tus-node", "server_cpu_s_incl_settle"),
        ),
        "tusserver_pg_small_uploads_s_vs_tus_node": _ratio(
            m("tusserver-pg", "small", "uploads_per_s"), m("tus-node", "small", "uploads_per_s")
        ),
        "tusserver_pg_small_cpu_per_upload_incl_pipeline_vs_tus_node": _ratio(
            cpu_ms_per_upload(targets, "tusserver-pg", "server_cpu_s_incl_settle"),
            cpu_ms_per_upload(targets, "tus-node", "server_cpu_s_incl_settle"),
        ),
        "tusserver_small_post_p99_vs_tus_node": _ratio(
            m("tusserver", "small", "post_p99_ms"), m("tus-node", "small", "post_p99_ms")
        ),
        "tusserver_large_mib_s_vs_tus_node": _ratio(
            m("tusserver", "large", "mib_per_s"), m("tus-node", "large", "mib_per_s")
        ),
    }


def print_tables(report: dict[str, Any]) -> None:
    targets = report["targets"]

    def cell(name: str, scenario: str, key: str) -> str:
        res = targets[name].get("scenarios", {}).get(scenario)
        if not res:
            return "-"
        if res["errors"] or res["timed_out"]:
            return "FAIL"
        v = res[key]
        return "-" if v is None else f"{v:g}"

    header = (
        f"{'target':<16}{'large MiB/s':>12}{'medium MiB/s':>13}{'small up/s':>11}"
        f"{'peak RSS MiB':>13}{'idle RSS':>9}"
    )
    print("\n" + header)
    print("-" * len(header))
    for name, t in targets.items():
        print(
            f"{name:<16}{cell(name, 'large', 'mib_per_s'):>12}"
            f"{cell(name, 'medium', 'mib_per_s'):>13}"
            f"{cell(name, 'small', 'uploads_per_s'):>11}"
            f"{t.get('rss_peak_mib', '-')!s:>13}{t.get('rss_idle_mib', '-')!s:>9}"
        )
    header = f"{'PATCH latency ms':<16}" + "".join(
        f"{s + ' p50':>12}{s + ' p99':>12}" for s in ("large", "medium", "small")
    )
    print("\n" + header)
    print("-" * len(header))
    for name in targets:
        row = f"{name:<16}"
        for s in ("large", "medium", "small"):
            row += f"{cell(name, s, 'patch_p50_ms'):>12}{cell(name, s, 'patch_p99_ms'):>12}"
        print(row)

    def settle_cell(name: str, scenario: str) -> str:
        res = targets[name].get("scenarios", {}).get(scenario)
        return "-" if not res else f"{res['extra'].get('settle_s', '-')}"

    header = (
        f"{'server CPU s':<16}{'large':>12}{'medium':>12}{'small':>12}"
        f"{'settle s: L':>12}{'M':>8}{'S':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for name in targets:
        print(
            f"{name:<16}"
            + "".join(f"{cell(name, s, 'server_cpu_s'):>12}" for s in ("large", "medium", "small"))
            + "".join(
                f"{settle_cell(name, s):>{w}}"
                for s, w in (("large", 12), ("medium", 8), ("small", 8))
            )
        )
    header = (
        f"{'small uploads':<16}{'up/s':>9}{'CPU ms/up':>11}{'+pipeline':>11}"
        f"{'POST p50':>10}{'POST p99':>10}{'HEAD p99':>10}{'create us':>11}"
    )
    print("\n" + header + "   (CPU per upload: server CPU / uploads; +pipeline incl. settle;")
    print(" " * len(header) + "    create us: kernel CPU per file creation before the target)")
    print("-" * len(header))
    for name in targets:
        print(
            f"{name:<16}{cell(name, 'small', 'uploads_per_s'):>9}"
            f"{_per_upload(targets, name, 'server_cpu_s'):>11}"
            f"{_per_upload(targets, name, 'server_cpu_s_incl_settle'):>11}"
            f"{cell(name, 'small', 'post_p50_ms'):>10}{cell(name, 'small', 'post_p99_ms'):>10}"
            f"{cell(name, 'small', 'patch_p99_ms'):>10}"
            f"{targets[name].get('create_probe_us', '-')!s:>11}"
        )
    for name, mem in (report.get("memory") or {}).items():
        print(
            f"\n{name} ({mem['target']}, {mem['description']}): peak RSS "
            f"{mem.get('rss_peak_mib', 'FAIL')} MiB (idle {mem.get('rss_idle_mib', '-')} MiB)"
        )
    print("\nratios:")
    for k, v in report["ratios"].items():
        print(f"  {k:<44} {v if v is not None else '-'}")


def _source_digest() -> str:
    """sha256 of the server's Python sources (the work tree may be uncommitted)."""
    h = hashlib.sha256()
    for top in ("tusserver", "storage_backends", "auth"):
        for f in sorted((REPO / top).rglob("*.py")):
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _version(argv: Sequence[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.repeat:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.scenarios:
        plan = dataclasses.replace(plan, only=tuple(args.scenarios))
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tusbench-", dir=args.tmp_dir))
    source = BodySource()
    started = time.monotonic()
    if os.getloadavg()[0] > 1.0:
        print(f"warning: load average {os.getloadavg()[0]:.1f}: other work will skew the figures")
    if journal_of(workdir) is False:
        print(
            "note: the work directory is on ext4 without a journal: file creations cost more "
            "for minutes after many deletions (see retire() in run_all.py)"
        )
    report: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "node": _version(["node", "--version"]),
            "git_commit": _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(_version(["git", "-C", str(REPO), "status", "--porcelain"])),
            "server_source_sha256": _source_digest(),
            "repeat": plan.repeat,
            "loadavg_at_start": os.getloadavg()[0],
            "workdir": str(workdir),
            "workdir_journaled": journal_of(workdir),
            "units": "MiB = 2**20 bytes; latencies in ms; CPU in seconds; RSS in MiB",
            "scenarios": {s.name: s.describe() for s in (*plan.main, *plan.memory)},
        },
        "targets": {},
    }
    try:
        for name in [] if args.memory_only else args.targets:
            report["targets"][name] = await bench_target(name, workdir, plan, source, args.py_spy)
        if not args.skip_memory:
            report["memory"] = {
                s.name: await bench_memory("tusserver", workdir, s, source, plan.scenario_timeout)
                for s in plan.memory
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ratios"] = compute_ratios(report["targets"])
    report["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    report["meta"]["loadavg_at_end"] = os.getloadavg()[0]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument(
        "--targets",
        nargs="+",
        choices=list(TARGETS),
        default=list(TARGETS),
        help="targets to run (default: all)",
    )
    p.add_argument("--repeat", type=int, help="runs per scenario (default: 3, --quick: 1)")
    p.add_argument(
        "--scenarios",
        nargs="+",
        choices=["large", "medium", "small"],
        help="main scenarios to run (default: all three)",
    )
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS scenarios")
    p.add_argument(
        "--memory-only", action="store_true", help="only the peak-RSS scenarios (no targets)"
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="profile tusserver with py-spy during the small-upload scenario",
    )
    p.add_argument("--tmp-dir", help="where the servers' data directories go (default: $TMPDIR)")
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args(argv)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        report = asyncio.run(main_async(args))
    finally:
        stop_all()
    print_tables(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} ({report['meta']['duration_s']} s)")
    failed = any(
        t.get("error") or any(r["errors"] or r["timed_out"] for r in t["scenarios"].values())
        for t in report["targets"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
