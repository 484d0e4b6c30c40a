"""Cost of envelope encryption at rest: large uploads, commits and downloads, off vs on.

    .venv/bin/python benchmarks/encryption_bench.py                 # ~1.5 minutes on 2 cores
    .venv/bin/python benchmarks/encryption_bench.py --mib 16 --rounds 1   # smoke run
    .venv/bin/python benchmarks/encryption_bench.py --py-spy        # + one profiled round each

Issue #10: "MB/s of large uploads and downloads with encryption off and on, in the same run
(target: under 15% cost)". Two configurations of the same build, the embedded default
(SQLite + local disk, in-process pipeline, no clamd), TUSSERVER_AUTH=none, no rate limits,
TUSSERVER_FSYNC=false:

    off   TUSSERVER_ENCRYPTION=none
    on    TUSSERVER_ENCRYPTION=envelope, one master key from `tusserver keys generate bench`

They run in alternating rounds (off on, on off, off on, ...: ABBA, so a drift of the machine's
load hits both alike), each round with a fresh `tusserver serve` on 127.0.0.1 and a fresh data
directory. A round:

    upload    --uploads concurrent tus uploads of --mib MiB in --chunk-mib MiB PATCHes, created
              with Upload-Defer-Length: 1 so that no file is committed while others still
              upload (the commit work would bill this phase);
              MB/s = bytes acknowledged / (first POST -> last 204)
    commit    one empty PATCH per upload declaring its Upload-Length, all at once: the uploads
              finish and the pipeline checks and commits them (sha256, type sniffing, move into
              the object store); MB/s = bytes / (first of those PATCHes -> the last file
              committed, its committed_at on the server's clock; HEAD on each upload URL is
              polled for X-File-Status: committed), and per file: its PATCH -> its committed_at.
              With --known-length, uploads declare their length at creation and the commit
              phase starts at the last 204 (early files then commit during the upload phase)
    download  GET /file/{id}/content of every file, all at once, bodies read and discarded;
              MB/s = bytes / (first GET -> last body byte)
    ranges    --range-requests random --range-kib KiB Range GETs (206) over those files,
              --uploads at a time: req/s, p50 and p99
    memory    VmHWM (peak RSS) of the server process at the end of the round

Each phase records the server's CPU seconds (/proc, the whole process tree) and reports them
per byte moved (ns/B; per request for Range GETs): steadier than wall time on a busy machine.
Every figure is the median over the rounds; the table shows off, on, on/off and the cost of
encryption (extra time, CPU or memory: on/off - 1 for times, off/on - 1 for rates), and the
load average at the start and the end of the run. Correctness is checked along the way: the
warm-up round-trips a file byte for byte, every upload's sha256 (GET /file/{id}) must equal
the client's, every download must have the full length and every Range body is compared with
the bytes sent.

Results: a table on stdout and benchmarks/results/encryption.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import run_all  # noqa: E402
from load import OCTETS, TUS, BodySource, KiB, MiB, percentile  # noqa: E402
from run_all import Server, settle, stop_all, tree_cpu_s, tree_memory_mib  # noqa: E402

RESULTS = HERE / "results"
MB = 1_000_000
CONFIGS = ("off", "on")
COST_TARGET_PCT = 15.0
POLL_INTERVAL = 0.1  # seconds between HEAD sweeps over the uploads not yet committed


# --- servers --------------------------------------------------------------------------------


def _tusserver_bin() -> str:
    return run_all._tusserver_bin()


def generate_key() -> str:
    """A fresh master key, made the documented way (`tusserver keys generate ID`)."""
    out = subprocess.run(
        [_tusserver_bin(), "keys", "generate", "bench"],
        capture_output=True,
        text=True,
        check=True,
        env=run_all._base_env(),
        cwd=REPO,
        timeout=60,
    ).stdout.strip()
    if not out.startswith("bench:"):
        raise SystemExit(f"`tusserver keys generate bench` printed {out[:40]!r}...")
    return out.splitlines()[-1]


def server_env(config: str, key: str, segment_size: int | None) -> dict[str, str]:
    """TUSSERVER_* settings of a configuration (the developer's own never leak in)."""
    env = {
        "TUSSERVER_FSYNC": "false",
        "TUSSERVER_LOG_LEVEL": "warning",
        "TUSSERVER_AUTH": "none",
        "TUSSERVER_RATE_LIMIT_CREATIONS": "0",
        "TUSSERVER_RATE_LIMIT_API": "0",
        "TUSSERVER_RATE_LIMIT_PATCH_BYTES": "0",
        "TUSSERVER_CLAMD_URL": "",
    }
    if config == "on":
        env["TUSSERVER_ENCRYPTION"] = "envelope"
        env["TUSSERVER_ENCRYPTION_KEYS"] = key
        if segment_size:
            env["TUSSERVER_ENCRYPTION_SEGMENT_SIZE"] = str(segment_size)
    else:
        env["TUSSERVER_ENCRYPTION"] = "none"
    return env


def builder(
    config: str, key: str, segment_size: int | None
) -> Callable[[int, Path], tuple[list[str], dict[str, str]]]:
    def build(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
        argv = [_tusserver_bin(), "--data-dir", str(data), "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        return argv, run_all._base_env() | server_env(config, key, segment_size)

    return build


def base_url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


# --- the bytes sent, for checks -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Which bytes upload ``index`` holds: the same slices of the BodySource buffer that the
    upload sent (PATCH at offset o: ``source.body(index * 131 + o // SLICE, n)``)."""

    source: BodySource
    size: int
    chunk: int

    def pieces(self, index: int, start: int, length: int) -> Iterator[memoryview]:
        slice_ = self.source.SLICE
        pos, end = start, start + length
        while pos < end:
            patch_at = pos - pos % self.chunk
            n = min(self.chunk, self.size - patch_at)
            within = pos - patch_at
            j = within // slice_
            k = min(slice_, n - j * slice_)
            sl = self.source._slice(index * 131 + patch_at // slice_ + j, k)
            lo = within - j * slice_
            piece = sl[lo : lo + min(k - lo, end - pos)]
            yield piece
            pos += len(piece)

    def read(self, index: int, start: int, length: int) -> bytes:
        return b"".join(self.pieces(index, start, length))

    def sha256(self, index: int) -> str:
        h = hashlib.sha256()
        for piece in self.pieces(index, 0, self.size):
            h.update(piece)
        return h.hexdigest()


# --- tus client -----------------------------------------------------------------------------


class BenchError(Exception):
    pass


@dataclass
class Uploaded:
    index: int
    url: URL
    #: perf_counter and wall clock (time.time) right after the upload's last 204
    acked: float
    acked_wall: float


def session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120),
        auto_decompress=False,
    )


async def tus_upload(
    s: aiohttp.ClientSession,
    endpoint: URL,
    index: int,
    layout: Layout,
    patch_lat: list[float],
    defer: bool = False,
) -> Uploaded:
    """POST and PATCH every byte; with ``defer`` the length is not declared yet (see
    declare_length), so the upload stays unfinished and nothing is committed."""
    size, chunk, source = layout.size, layout.chunk, layout.source
    length = {"Upload-Defer-Length": "1"} if defer else {"Upload-Length": str(size)}
    async with s.post(endpoint, headers={**TUS, **length}) as r:
        await r.read()
        if r.status != 201 or "Location" not in r.headers:
            raise BenchError(f"POST -> {r.status}")
        url = endpoint.join(URL(r.headers["Location"]))
    offset = 0
    while offset < size:
        n = min(chunk, size - offset)
        headers = {
            **TUS,
            "Content-Type": OCTETS,
            "Content-Length": str(n),
            "Upload-Offset": str(offset),
        }
        t = time.perf_counter()
        body = source.body(index * 131 + offset // source.SLICE, n)
        async with s.patch(url, data=body, headers=headers) as r:
            text = await r.read()
            if r.status != 204 or r.headers.get("Upload-Offset") != str(offset + n):
                raise BenchError(f"PATCH at {offset} -> {r.status} {text[:200]!r}")
        patch_lat.append(time.perf_counter() - t)
        offset += n
    return Uploaded(index, url, time.perf_counter(), time.time())


async def declare_length(s: aiohttp.ClientSession, up: Uploaded, size: int) -> Uploaded:
    """An empty PATCH declaring the length of an upload that holds all its bytes: it
    finishes, and the pipeline takes it. Returns it with the time of that PATCH's 204."""
    headers = {
        **TUS,
        "Content-Type": OCTETS,
        "Content-Length": "0",
        "Upload-Offset": str(size),
        "Upload-Length": str(size),
    }
    async with s.patch(up.url, data=b"", headers=headers) as r:
        text = await r.read()
        if r.status != 204 or r.headers.get("Upload-Offset") != str(size):
            raise BenchError(f"PATCH declaring the length -> {r.status} {text[:200]!r}")
    return Uploaded(up.index, up.url, time.perf_counter(), time.time())


async def wait_committed(
    s: aiohttp.ClientSession, pending: list[Uploaded], timeout: float
) -> dict[int, str]:
    """Poll HEAD on each upload URL until X-File-Status is final; upload index -> file id."""
    done: dict[int, str] = {}
    deadline = time.perf_counter() + timeout
    while len(done) < len(pending):
        for up in pending:
            if up.index in done:
                continue
            async with s.head(up.url, headers=TUS) as r:
                status, file_id = r.headers.get("X-File-Status"), r.headers.get("X-File-Id")
            if status == "committed" and file_id:
                done[up.index] = file_id
            elif status in ("rejected", "failed"):
                raise BenchError(f"upload {up.index} was {status}")
        if len(done) < len(pending):
            if time.perf_counter() > deadline:
                raise BenchError(f"{len(pending) - len(done)} files not committed in {timeout} s")
            await asyncio.sleep(POLL_INTERVAL)
    return done


async def file_info(s: aiohttp.ClientSession, base: str, file_id: str) -> dict[str, Any]:
    async with s.get(f"{base}/file/{file_id}") as r:
        if r.status != 200:
            raise BenchError(f"GET /file/{file_id} -> {r.status}")
        doc: dict[str, Any] = await r.json()
    return doc


async def download(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    """Read a body to the end and drop it: (bytes, seconds to the first byte)."""
    t0 = time.perf_counter()
    ttfb = 0.0
    n = 0
    async with s.get(url, headers=headers) as r:
        if r.status not in (200, 206):
            raise BenchError(f"GET {url} -> {r.status} {(await r.read())[:200]!r}")
        while chunk := await r.content.readany():
            if not n:
                ttfb = time.perf_counter() - t0
            n += len(chunk)
    return n, ttfb


# --- one round ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    uploads: int
    layout: Layout
    range_requests: int
    range_size: int
    timeout: float
    expected_sha: tuple[str, ...]
    #: Declare the length at creation (the commit of early files overlaps the upload phase).
    known_length: bool = False


async def warm_up(server: Server, plan: Plan) -> None:
    """A small upload, committed, downloaded and compared byte for byte (and a few ranges)."""
    base = base_url(server)
    data = os.urandom(3 * MiB + 12345)  # several segments, the last one partial
    async with session(4) as s:
        endpoint = URL(server.endpoint)
        async with s.post(endpoint, headers={**TUS, "Upload-Length": str(len(data))}) as r:
            await r.read()
            if r.status != 201:
                raise BenchError(f"warm-up POST -> {r.status}")
            url = endpoint.join(URL(r.headers["Location"]))
        offset = 0
        for n in (MiB + 7, len(data) - MiB - 7):  # an append in the middle of a segment
            headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
            async with s.patch(url, data=data[offset : offset + n], headers=headers) as r:
                await r.read()
                if r.status != 204:
                    raise BenchError(f"warm-up PATCH -> {r.status}")
            offset += n
        up = Uploaded(0, url, time.perf_counter(), time.time())
        file_id = (await wait_committed(s, [up], plan.timeout))[0]
        async with s.get(f"{base}/file/{file_id}/content") as r:
            got = await r.read()
        if got != data:
            raise BenchError("warm-up: the downloaded file differs from the upload")
        for start, length in ((0, 100), (MiB - 5, 300 * KiB), (len(data) - 10, 10)):
            rng = {"Range": f"bytes={start}-{start + length - 1}"}
            async with s.get(f"{base}/file/{file_id}/content", headers=rng) as r:
                if r.status != 206 or await r.read() != data[start : start + length]:
                    raise BenchError(f"warm-up: Range {start}+{length} is wrong")


async def measure_round(
    server: Server, plan: Plan, spy: Callable[[str], Any] | None = None
) -> dict[str, Any]:
    """Upload, commit, download and Range phases against a started, warmed-up server."""
    layout = plan.layout
    base = base_url(server)
    pid = server.pid
    out: dict[str, Any] = {}

    def phase(name: str) -> Any:
        return spy(name) if spy is not None else contextlib.nullcontext()

    # -- upload (+ commit, polled as soon as the last upload is acknowledged)
    run_all._sync()
    await settle(pid)
    patch_lat: list[float] = []
    endpoint = URL(server.endpoint)
    async with session(plan.uploads) as s:
        with phase("upload"):
            cpu0 = tree_cpu_s(pid)
            t0 = time.perf_counter()
            done = await asyncio.gather(
                *(
                    tus_upload(s, endpoint, i, layout, patch_lat, defer=not plan.known_length)
                    for i in range(plan.uploads)
                )
            )
            t1 = time.perf_counter()
            cpu1 = tree_cpu_s(pid)
    wall = t1 - t0
    total = plan.uploads * layout.size
    out["upload"] = {
        "wall_s": round(wall, 3),
        "mb_s": round(total / MB / wall, 1),
        "mib_s": round(total / MiB / wall, 1),
        "patch_p50_ms": percentile(patch_lat, 50),
        "patch_p99_ms": percentile(patch_lat, 99),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "cpu_ns_per_byte": round((cpu1 - cpu0) * 1e9 / total, 3),
    }
    async with session(plan.uploads) as s:
        if plan.known_length:
            # The commit phase starts at the last 204 (the first files are committing by
            # then already).
            last = max(done, key=lambda u: u.acked)
            start_perf, start_wall = last.acked, last.acked_wall
            cpu1 = tree_cpu_s(pid)
            with phase("commit"):
                ids = await wait_committed(s, done, plan.timeout)
                t_seen = time.perf_counter()
                cpu2 = tree_cpu_s(pid)
        else:
            # Writeback of the upload phase must not bill the commits.
            run_all._sync()
            await settle(pid)
            with phase("commit"):
                cpu1 = tree_cpu_s(pid)
                start_perf, start_wall = time.perf_counter(), time.time()
                done = await asyncio.gather(*(declare_length(s, u, layout.size) for u in done))
                ids = await wait_committed(s, done, plan.timeout)
                t_seen = time.perf_counter()
                cpu2 = tree_cpu_s(pid)
        infos = {i: await file_info(s, base, fid) for i, fid in ids.items()}
    per_file = []
    for up in done:
        info = infos[up.index]
        if info["sha256"] != plan.expected_sha[up.index]:
            raise BenchError(f"upload {up.index}: server sha256 differs from the bytes sent")
        if info["size"] != layout.size:
            raise BenchError(f"upload {up.index}: size {info['size']} != {layout.size}")
        committed = dt.datetime.fromisoformat(info["committed_at"]).timestamp()
        per_file.append(committed - up.acked_wall)
    latest = max(dt.datetime.fromisoformat(i["committed_at"]).timestamp() for i in infos.values())
    commit_s = max(latest - start_wall, 1e-3)
    out["commit"] = {
        # start of the phase -> the last file committed (server clock, same host)
        "all_s": round(commit_s, 3),
        "mb_s": round(total / MB / commit_s, 1),
        # the same, seen by the client polling HEAD (resolution ~POLL_INTERVAL)
        "all_polled_s": round(t_seen - start_perf, 3),
        "per_file_p50_s": round(statistics.median(per_file), 3),
        "per_file_max_s": round(max(per_file), 3),
        "server_cpu_s": round(cpu2 - cpu1, 2),
        "cpu_ns_per_byte": round((cpu2 - cpu1) * 1e9 / total, 3),
    }
    # Anything still running (the sweeper, writeback of the committed files) must not bill
    # the downloads.
    run_all._sync()
    await settle(pid)

    # -- download: every file at once, full bodies
    urls = [f"{base}/file/{ids[i]}/content" for i in range(plan.uploads)]
    async with session(plan.uploads) as s:
        with phase("download"):
            cpu0 = tree_cpu_s(pid)
            t0 = time.perf_counter()
            got = await asyncio.gather(*(download(s, u) for u in urls))
            wall = time.perf_counter() - t0
            cpu1 = tree_cpu_s(pid)
    for i, (n, _) in enumerate(got):
        if n != layout.size:
            raise BenchError(f"download {i}: {n} bytes, expected {layout.size}")
    out["download"] = {
        "wall_s": round(wall, 3),
        "mb_s": round(total / MB / wall, 1),
        "mib_s": round(total / MiB / wall, 1),
        "ttfb_p50_ms": percentile([t for _, t in got], 50),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "cpu_ns_per_byte": round((cpu1 - cpu0) * 1e9 / total, 3),
    }

    # -- random Range requests (the same ones in every round and configuration)
    rng = random.Random(1010)
    size = plan.layout.size
    span = plan.range_size if plan.range_size < size else size
    todo = iter(
        [
            (rng.randrange(plan.uploads), rng.randrange(size - span + 1))
            for _ in range(plan.range_requests)
        ]
    )
    lat: list[float] = []
    bad: list[str] = []
    await settle(pid)
    async with session(plan.uploads) as s:

        async def worker() -> None:
            for index, start in todo:
                headers = {"Range": f"bytes={start}-{start + span - 1}"}
                t = time.perf_counter()
                async with s.get(urls[index], headers=headers) as r:
                    body = await r.read()
                    status = r.status
                lat.append(time.perf_counter() - t)
                if status != 206 or body != layout.read(index, start, span):
                    bad.append(f"file {index} bytes {start}+{span}: {status}, {len(body)} B")

        with phase("ranges"):
            cpu0 = tree_cpu_s(pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(plan.uploads)))
            wall = time.perf_counter() - t0
            cpu1 = tree_cpu_s(pid)
    if bad:
        raise BenchError(f"{len(bad)} wrong Range responses, first: {bad[0]}")
    out["ranges"] = {
        "requests": len(lat),
        "range_bytes": span,
        "req_s": round(len(lat) / wall, 1),
        "mb_s": round(len(lat) * span / MB / wall, 1),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "cpu_us_per_request": round((cpu1 - cpu0) * 1e6 / max(len(lat), 1), 1),
    }
    out["rss_peak_mib"] = tree_memory_mib(pid, "VmHWM")
    return out


async def run_round(
    config: str,
    label: str,
    build: Callable[[int, Path], tuple[list[str], dict[str, str]]],
    workdir: Path,
    plan: Plan,
    spy_dir: Path | None = None,
) -> dict[str, Any]:
    server = Server(f"{config}-{label}", build, workdir)
    spies: dict[str, Any] = {}
    try:
        server.start()
        await server.wait_ready()
        rss_idle = tree_memory_mib(server.pid, "VmRSS")
        await warm_up(server, plan)

        @contextlib.contextmanager
        def spy(phase: str) -> Iterator[None]:
            assert spy_dir is not None
            out = spy_dir / f"py-spy-encryption-{config}-{phase}.txt"
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
            proc = run_all._start_py_spy(server.pid, out)
            try:
                yield
            finally:
                if proc is not None:
                    spies[phase] = run_all._stop_py_spy(proc, out)

        res = await measure_round(server, plan, spy if spy_dir is not None else None)
        res["rss_idle_mib"] = rss_idle
        if spies:
            res["py_spy"] = spies
        return res
    except Exception as exc:
        tail = server.log_tail()
        raise BenchError(
            f"{config} {label}: {type(exc).__name__}: {exc}"
            + (f"\nserver log:\n{tail}" if tail else "")
        ) from exc
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------

#: (label, phase, key, kind): kind "rate" (higher is better) or "cost" (lower is better)
ROWS: list[tuple[str, str, str, str]] = [
    ("upload MB/s", "upload", "mb_s", "rate"),
    ("upload server CPU ns/B", "upload", "cpu_ns_per_byte", "cost"),
    ("upload PATCH p50 ms", "upload", "patch_p50_ms", "cost"),
    ("commit MB/s", "commit", "mb_s", "rate"),
    ("commit server CPU ns/B", "commit", "cpu_ns_per_byte", "cost"),
    ("commit s, all files", "commit", "all_s", "cost"),
    ("commit s, per file p50", "commit", "per_file_p50_s", "cost"),
    ("download MB/s", "download", "mb_s", "rate"),
    ("download server CPU ns/B", "download", "cpu_ns_per_byte", "cost"),
    ("range req/s", "ranges", "req_s", "rate"),
    ("range server CPU us/req", "ranges", "cpu_us_per_request", "cost"),
    ("range p50 ms", "ranges", "p50_ms", "cost"),
    ("range p99 ms", "ranges", "p99_ms", "cost"),
    ("server peak RSS MiB", "", "rss_peak_mib", "cost"),
]
#: The issue's headline figures (MB/s and the server CPU behind them), marked in the table.
HEADLINE = {
    "upload MB/s",
    "upload server CPU ns/B",
    "commit MB/s",
    "commit server CPU ns/B",
    "download MB/s",
    "download server CPU ns/B",
}


def _get(r: dict[str, Any], phase: str, key: str) -> float | None:
    v = (r.get(phase) or {}).get(key) if phase else r.get(key)
    return float(v) if v is not None else None


def medians(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for _, phase, key, _ in ROWS:
        values = [v for r in rounds if (v := _get(r, phase, key)) is not None]
        out.setdefault(phase or "server", {})[key] = (
            round(statistics.median(values), 3) if values else None
        )
    return out


def compare(med: dict[str, dict[str, dict[str, float | None]]]) -> list[dict[str, Any]]:
    rows = []
    for label, phase, key, kind in ROWS:
        off = med["off"][phase or "server"][key]
        on = med["on"][phase or "server"][key]
        ratio = round(on / off, 3) if off and on else None
        cost = None
        if off and on:
            cost = (off / on - 1) if kind == "rate" else (on / off - 1)
            cost = round(100 * cost, 1)
        rows.append({"metric": label, "off": off, "on": on, "on_off": ratio, "cost_pct": cost})
    return rows


def print_table(report: dict[str, Any]) -> None:
    m = report["meta"]
    print(
        f"\nmedian of {m['rounds']} rounds: {m['uploads']} x {m['mib']} MiB uploads in "
        f"{m['chunk_mib']} MiB PATCHes (length declared "
        f"{'at creation' if m['known_length'] else 'to commit'}), "
        f"{m['range_requests']} x {m['range_kib']} KiB ranges, segment "
        f"{m['segment_size'] // KiB} KiB, {m['cpus']} CPUs, load average "
        f"{m['loadavg_at_start']:.2f} -> {m['loadavg_at_end']:.2f}, MB = 10^6 bytes"
    )
    header = f"{'metric':<40}{'off':>10}{'on':>10}{'on/off':>9}{'cost':>9}"
    print(header)
    print("-" * len(header))

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:g}"

    for row in report["comparison"]:
        cost = row["cost_pct"]
        flag = " *" if cost is not None and cost > COST_TARGET_PCT else ""
        cost_s = "-" if cost is None else f"{cost:+.1f}%"
        label = ("> " if row["metric"] in HEADLINE else "  ") + row["metric"]
        print(
            f"{label:<40}{fmt(row['off']):>10}{fmt(row['on']):>10}"
            f"{fmt(row['on_off']):>9}{cost_s:>9}{flag}"
        )
    print(
        "cost = extra time, CPU or memory with encryption (off/on - 1 for rates, on/off - 1 "
        f"otherwise); * over the {COST_TARGET_PCT:g}% target; > the issue's figures"
    )
    print("per round (off | on):")
    for key, label in (
        (("upload", "mb_s"), "upload MB/s"),
        (("upload", "cpu_ns_per_byte"), "upload ns/B"),
        (("commit", "mb_s"), "commit MB/s"),
        (("commit", "cpu_ns_per_byte"), "commit ns/B"),
        (("download", "mb_s"), "download MB/s"),
        (("download", "cpu_ns_per_byte"), "download ns/B"),
        (("ranges", "req_s"), "range req/s"),
        (("ranges", "cpu_us_per_request"), "range us/req"),
    ):
        offs = [_get(r, *key) for r in report["rounds"]["off"]]
        ons = [_get(r, *key) for r in report["rounds"]["on"]]
        print(f"  {label:<14} {offs} | {ons}")


def print_profile(profile: dict[str, Any]) -> None:
    for config, res in profile.items():
        for phase, spy in (res.get("py_spy") or {}).items():
            if "error" in spy:
                print(f"\npy-spy {config} {phase}: {spy['error']}")
                continue
            print(
                f"\npy-spy {config} {phase} ({spy['samples']} samples with the GIL, {spy['raw']})"
            )
            for row in spy["top_self"][:8]:
                print(f"  {row['pct']:>5}%  {row['frame']}")


def _version(argv: Sequence[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# --- main -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from cryptography import __version__ as cryptography_version

    if args.range_kib * KiB > args.mib * MiB:
        raise SystemExit("--range-kib must not exceed --mib")
    source = BodySource()
    layout = Layout(source, args.mib * MiB, args.chunk_mib * MiB)
    print("hashing the upload bodies (for the sha256 checks)...", flush=True)
    expected = tuple(layout.sha256(i) for i in range(args.uploads))
    plan = Plan(
        uploads=args.uploads,
        layout=layout,
        range_requests=args.range_requests,
        range_size=args.range_kib * KiB,
        timeout=args.timeout,
        expected_sha=expected,
        known_length=args.known_length,
    )
    key = generate_key()
    segment = args.segment_kib * KiB if args.segment_kib else None
    builds = {c: builder(c, key, segment) for c in CONFIGS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tus-encbench-", dir=args.tmp_dir))
    load0 = os.getloadavg()[0]
    if load0 > 1.0:
        print(f"warning: load average {load0:.1f}: other work will skew the figures", flush=True)
    started = time.monotonic()
    rounds: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    profile: dict[str, Any] = {}
    try:
        for i in range(args.rounds):
            order = CONFIGS if i % 2 == 0 else CONFIGS[::-1]
            for config in order:
                r = await run_round(config, f"r{i + 1}", builds[config], workdir, plan)
                r["round"] = i + 1
                rounds[config].append(r)
                print(
                    f"round {i + 1} {config:<3}  "
                    + "  ".join(
                        f"{ph} {r[ph]['mb_s']:>6.0f} MB/s {r[ph]['cpu_ns_per_byte']:>5.2f} ns/B"
                        for ph in ("upload", "commit", "download")
                    )
                    + f"  ranges {r['ranges']['req_s']:>6.0f}/s "
                    f"{r['ranges']['cpu_us_per_request']:>5.0f} us/req  "
                    f"RSS {r['rss_peak_mib']} MiB  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        if args.py_spy:
            print("\nprofiled round (py-spy --gil; its figures are not in the medians)")
            for config in CONFIGS:
                profile[config] = await run_round(
                    config, "profile", builds[config], workdir, plan, spy_dir=RESULTS
                )
                p = profile[config]
                print(
                    f"profile {config:<3} upload {p['upload']['mb_s']} MB/s, commit "
                    f"{p['commit']['all_s']} s, download {p['download']['mb_s']} MB/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {c: medians(rounds[c]) for c in CONFIGS}
    env_on = server_env("on", "<key>", segment)
    return {
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cryptography": cryptography_version,
            "git_commit": _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(_version(["git", "-C", str(REPO), "status", "--porcelain"])),
            "server_source_sha256": run_all._source_digest(),
            "rounds": args.rounds,
            "order": "ABBA: off,on then on,off, ...",
            "uploads": args.uploads,
            "mib": args.mib,
            "chunk_mib": args.chunk_mib,
            "known_length": args.known_length,
            "range_requests": args.range_requests,
            "range_kib": args.range_kib,
            "segment_size": segment or 256 * KiB,
            "server_env_on": env_on,
            "loadavg_at_start": load0,
            "loadavg_at_end": os.getloadavg()[0],
            "duration_s": round(time.monotonic() - started, 1),
            "units": "MB = 10^6 bytes, MiB = 2^20; times in s or ms; CPU in s; RSS in MiB",
        },
        "median": med,
        "comparison": compare(med),
        "rounds": rounds,
        **({"profile": profile} if profile else {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=64, help="size of each upload in MiB (64)")
    p.add_argument("--uploads", type=int, default=8, help="concurrent uploads (8)")
    p.add_argument("--chunk-mib", type=int, default=8, help="PATCH size in MiB (8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each configuration (3)")
    p.add_argument("--range-requests", type=int, default=1000, help="Range GETs per round")
    p.add_argument("--range-kib", type=int, default=64, help="size of each Range GET (64 KiB)")
    p.add_argument(
        "--segment-kib",
        type=int,
        default=0,
        help="encryption_segment_size in KiB (default: the server's, 256)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for commits")
    p.add_argument(
        "--known-length",
        action="store_true",
        help="declare Upload-Length at creation: files commit as soon as they are complete, "
        "during the upload phase of the others (the phases' CPU figures then mix)",
    )
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="after the measured rounds, one profiled round per configuration "
        "(results/py-spy-encryption-{off,on}-{upload,commit,download,ranges}.txt)",
    )
    p.add_argument("--tmp-dir", help="where the servers' data directories go (default: $TMPDIR)")
    p.add_argument("--output", type=Path, default=RESULTS / "encryption.json")
    args = p.parse_args(argv)
    if min(args.mib, args.uploads, args.chunk_mib, args.rounds, args.range_kib) < 1:
        p.error("sizes, counts and rounds must be at least 1")

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        report = asyncio.run(main_async(args))
    except BenchError as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, nothing written", file=sys.stderr)
        return 130
    finally:
        stop_all()  # every server, also on error or Ctrl-C
    print_table(report)
    if report.get("profile"):
        print_profile(report["profile"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} ({report['meta']['duration_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
