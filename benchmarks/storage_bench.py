"""Storage benchmark: commit time, S3 chunk-store throughput and scaling behind nginx.

    .venv/bin/python benchmarks/storage_bench.py                 # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/storage_bench.py --big-mib 512   # smaller "large file"
    .venv/bin/python benchmarks/storage_bench.py --parts 1 2     # a subset
    .venv/bin/python benchmarks/storage_bench.py --py-spy        # dump the server during a commit

Everything runs on 127.0.0.1 as children of this process: a throwaway SeaweedFS (`weed mini`,
tests/services.py), a throwaway PostgreSQL for part 3, `tusserver serve` instances and nginx
(examples/cluster/run_cluster.py). Everything is stopped at the end, also on error or Ctrl-C.

1. commit time (last PATCH acknowledged -> HEAD says X-File-Status: committed) of one big
   upload, local chunk store -> local / S3 object store; and 1000 x 1 MiB committed
   (end to end: POST + PATCH + commit, uploads 8 at a time). Reference: the same bytes with
   the minio SDK (fput_object of one file; 1000 x fput_object with 4 threads) and a local
   file copy.
2. 8 concurrent 64 MiB uploads in 8 MiB PATCHes: S3 chunk store vs local chunk store vs the
   minio SDK's put_object of 8 x 64 MiB (8 threads).
3. the same load through nginx in front of 1, 2, 3 instances sharing PostgreSQL + SeaweedFS.

Results: a table on stdout and benchmarks/results/storage.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "examples" / "cluster"))

import run_cluster  # noqa: E402
import services  # noqa: E402
from load import TUS, BodySource, MiB  # noqa: E402

OCTETS = "application/offset+octet-stream"
HOST = "127.0.0.1"
BUCKET = "tusserver"
DIRECT_BUCKET = "direct"

# A developer's own settings must not leak into the measurement.
for _k in [k for k in os.environ if k.startswith("TUSSERVER_")]:
    del os.environ[_k]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- servers ----------------------------------------------------------------------------------


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "TUSSERVER_AUTH": "none",
        "TUSSERVER_RATE_LIMIT_CREATIONS": "0",
        "TUSSERVER_LOG_LEVEL": "warning",
        "TUSSERVER_FSYNC": "false",
        "TUSSERVER_PIPELINE_POLL_INTERVAL": "1",
    }
    env.update(extra or {})
    return env


def s3_env(s3: services.SeaweedS3, bucket: str = BUCKET) -> dict[str, str]:
    return {
        "TUSSERVER_S3_ENDPOINT": s3.endpoint,
        "TUSSERVER_S3_ACCESS_KEY": s3.access_key,
        "TUSSERVER_S3_SECRET_KEY": s3.secret_key,
        "TUSSERVER_S3_SECURE": "false",
        "TUSSERVER_S3_BUCKET": bucket,
        "TUSSERVER_S3_REGION": s3.region,
    }


class Stack:
    """Everything started, stopped in reverse order (each item has stop() or close())."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> Any:
        self.items.append(item)
        return item

    def remove(self, item: Any) -> None:
        with contextlib.suppress(ValueError):
            self.items.remove(item)
        stop(item)

    def close(self) -> None:
        while self.items:
            stop(self.items.pop())


def stop(item: Any) -> None:
    with contextlib.suppress(Exception):
        if isinstance(item, run_cluster.Instance):
            item.stop(timeout=15)
        elif hasattr(item, "close"):
            item.close()
        else:
            item.stop()


def start_instance(stack: Stack, workdir: Path, name: str, env: dict[str, str]) -> Any:
    inst = stack.add(run_cluster.Instance(name, workdir / name, env))
    inst.start()
    inst.wait_healthy(90)
    return inst


# --- tus client -------------------------------------------------------------------------------


def session_for(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        auto_decompress=False,
    )


async def tus_upload(
    session: aiohttp.ClientSession,
    endpoint: URL,
    size: int,
    chunk: int,
    source: BodySource,
    key: int,
) -> tuple[URL, float]:
    """POST + PATCHes; returns the upload URL and perf_counter() when the last PATCH ended."""
    async with session.post(endpoint, headers={**TUS, "Upload-Length": str(size)}) as resp:
        await resp.read()
        if resp.status != 201:
            raise RuntimeError(f"POST -> {resp.status}")
        url = endpoint.join(URL(resp.headers["Location"]))
    offset = 0
    while offset < size:
        n = min(chunk, size - offset)
        headers = {
            **TUS,
            "Content-Type": OCTETS,
            "Content-Length": str(n),
            "Upload-Offset": str(offset),
        }
        body = source.body(key * 131 + offset // source.SLICE, n)
        async with session.patch(url, data=body, headers=headers) as resp:
            text = await resp.read()
            if resp.status != 204 or resp.headers.get("Upload-Offset") != str(offset + n):
                raise RuntimeError(f"PATCH at {offset} -> {resp.status} {text[:200]!r}")
        offset += n
    return url, time.perf_counter()


async def file_status(session: aiohttp.ClientSession, url: URL) -> str | None:
    async with session.head(url, headers=TUS) as resp:
        return resp.headers.get("X-File-Status")


async def wait_committed(
    session: aiohttp.ClientSession, url: URL, timeout: float = 600
) -> tuple[float, str]:
    end = time.perf_counter() + timeout
    while True:
        status = await file_status(session, url)
        if status in ("committed", "rejected", "failed"):
            return time.perf_counter(), status
        if time.perf_counter() > end:
            raise TimeoutError(f"{url}: still {status!r} after {timeout} s")
        await asyncio.sleep(0.02)


_METRIC = re.compile(r"^(tusserver_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$")


async def metrics(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def committed(m: dict[str, float]) -> int:
    return int(m.get('tusserver_files_total{outcome="committed"}', 0))


def step_sums(m: dict[str, float]) -> dict[str, float]:
    out = {}
    for k, v in m.items():
        if k.startswith("tusserver_pipeline_step_seconds_sum"):
            out[k.split('"')[1]] = v
    return out


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 3) for k in b}


async def concurrent_uploads(
    endpoint: str, uploads: int, size: int, chunk: int, concurrency: int, source: BodySource
) -> dict[str, Any]:
    ep = URL(endpoint)
    urls: list[URL] = []
    errors: list[str] = []
    async with session_for(concurrency) as session:
        todo = iter(range(uploads))

        async def worker() -> None:
            for i in todo:
                try:
                    url, _ = await tus_upload(session, ep, size, chunk, source, i)
                    urls.append(url)
                except Exception as exc:  # counted and reported
                    errors.append(f"{type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    done = len(urls)
    return {
        "uploads": uploads,
        "completed": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "mb_s": round(done * size / 1e6 / wall, 1),
        "mib_s": round(done * size / MiB / wall, 1),
        "urls": [str(u) for u in urls],
    }


async def wait_all_committed(endpoint: str, urls: list[str], timeout: float = 300) -> float:
    async with session_for(4) as session:
        t0 = time.perf_counter()
        for u in urls:
            await wait_committed(session, URL(u), timeout)
        return time.perf_counter() - t0


# --- py-spy ----------------------------------------------------------------------------------


class SpyDumps:
    """`py-spy dump` of a process every `interval` seconds until stopped."""

    def __init__(self, pid: int, out: Path, interval: float = 0.4) -> None:
        self.pid, self.out, self.interval = pid, out, interval
        self.exe = shutil.which("py-spy", path=str(Path(sys.executable).parent))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.dumps: list[str] = []

    def __enter__(self) -> SpyDumps:
        if self.exe:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        if self.dumps:
            self.out.write_text("\n\n".join(self.dumps))

    def _run(self) -> None:
        while not self._stop.is_set():
            res = subprocess.run(
                [str(self.exe), "dump", "--pid", str(self.pid)],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            self.dumps.append(f"=== t={time.strftime('%H:%M:%S')}\n{res.stdout}{res.stderr}")
            self._stop.wait(self.interval)


# --- part 1: commit time ---------------------------------------------------------------------


def make_file(path: Path, size: int, source: BodySource) -> None:
    buf = bytes(source._buf)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(len(buf), left)
            f.write(buf[:n])
            left -= n


async def big_commit(
    url: str, size: int, chunk: int, source: BodySource, spy: tuple[int, Path] | None
) -> dict[str, Any]:
    async with session_for(2) as session:
        t0 = time.perf_counter()
        m0 = await metrics(session, url)
        up_url, t_last = await tus_upload(session, URL(url + "/uploads/"), size, chunk, source, 7)
        ctx = SpyDumps(*spy) if spy else contextlib.nullcontext()
        with ctx:
            t_done, status = await wait_committed(session, up_url)
        m1 = await metrics(session, url)
    return {
        "size": size,
        "upload_s": round(t_last - t0, 3),
        "commit_s": round(t_done - t_last, 3),
        "status": status,
        "server_steps_s": diff(step_sums(m0), step_sums(m1)),
    }


async def many_commits(
    url: str, n: int, size: int, concurrency: int, source: BodySource
) -> dict[str, Any]:
    async with session_for(2) as msession:
        m0 = await metrics(msession, url)
        base = committed(m0)
        t0 = time.perf_counter()
        up = asyncio.create_task(
            concurrent_uploads(url + "/uploads/", n, size, size, concurrency, source)
        )
        res = await up
        t_up = time.perf_counter()
        while True:
            m1 = await metrics(msession, url)
            if committed(m1) - base >= res["completed"]:
                break
            if time.perf_counter() - t_up > 600:
                raise TimeoutError("1 MiB files not committed after 600 s")
            await asyncio.sleep(0.1)
        t_end = time.perf_counter()
    return {
        "files": n,
        "size": size,
        "upload_errors": res["errors"],
        "first_error": res["first_error"],
        "uploads_wall_s": round(t_up - t0, 3),
        "all_committed_s": round(t_end - t0, 3),
        "commit_tail_s": round(t_end - t_up, 3),
        "files_per_s": round(n / (t_end - t0), 1),
        "server_steps_s": diff(step_sums(m0), step_sums(m1)),
    }


def direct_fput_big(s3: services.SeaweedS3, path: Path, part_size: int) -> float:
    client = s3.client()
    t = time.perf_counter()
    client.fput_object(DIRECT_BUCKET, f"big-{time.time_ns()}", str(path), part_size=part_size)
    return time.perf_counter() - t


def direct_fput_many(s3: services.SeaweedS3, path: Path, n: int, threads: int) -> float:
    client = s3.client()
    stamp = time.time_ns()
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: client.fput_object(DIRECT_BUCKET, f"s-{stamp}-{i}", str(path)),
                      range(n)))  # fmt: skip
    return time.perf_counter() - t


def local_copy_big(src: Path, dst_dir: Path) -> dict[str, float]:
    """Local references: a plain copy, and sha256 + copy (what a verified copy costs)."""
    t = time.perf_counter()
    shutil.copyfile(src, dst_dir / "copy")
    copy_s = time.perf_counter() - t
    (dst_dir / "copy").unlink()
    t = time.perf_counter()
    h = hashlib.sha256()
    with open(src, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    sha_s = time.perf_counter() - t
    return {"copy_s": round(copy_s, 3), "sha256_s": round(sha_s, 3)}


def local_copy_many(src: Path, dst_dir: Path, n: int, threads: int) -> float:
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: shutil.copyfile(src, dst_dir / f"c{i}"), range(n)))
    return time.perf_counter() - t


def part1(args: argparse.Namespace, stack: Stack, s3: Any, work: Path, out: dict) -> None:
    source = BodySource()
    big = args.big_mib * MiB
    res: dict[str, Any] = {"big_size_mib": args.big_mib}
    out["commit"] = res
    big_file = work / "big.bin"
    small_file = work / "small.bin"
    make_file(big_file, big, source)
    make_file(small_file, MiB, source)
    refs = work / "refs"
    refs.mkdir()

    log(f"part 1: direct references ({args.big_mib} MiB file, 1000 x 1 MiB)")
    res["direct_local_big"] = local_copy_big(big_file, refs)
    res["direct_local_many_s"] = round(local_copy_many(small_file, refs, args.small_n, 4), 3)
    shutil.rmtree(refs)
    res["direct_s3_big_s"] = round(direct_fput_big(s3, big_file, 16 * MiB), 3)
    res["direct_s3_many_s"] = round(direct_fput_many(s3, small_file, args.small_n, 4), 3)
    res["direct_s3_many_files_per_s"] = round(args.small_n / res["direct_s3_many_s"], 1)
    log(f"  {res}")

    for target, extra in (
        ("local", {"TUSSERVER_OBJECT_STORE": "local"}),
        ("s3", {"TUSSERVER_OBJECT_STORE": "s3", **s3_env(s3)}),
    ):
        env = base_env({"TUSSERVER_CHUNK_STORE": "local", **extra})
        inst = start_instance(stack, work, f"p1-{target}", env)
        try:
            log(f"part 1: {args.big_mib} MiB upload + commit, local -> {target}")
            spy = (inst.proc.pid, RESULTS / f"py-spy-commit-{target}.txt") if args.py_spy else None
            r = asyncio.run(big_commit(inst.url, big, 64 * MiB, source, spy))
            res[f"tus_{target}_big"] = r
            log(f"  {r}")
            log(f"part 1: {args.small_n} x 1 MiB, local -> {target}")
            r = asyncio.run(many_commits(inst.url, args.small_n, MiB, 8, source))
            res[f"tus_{target}_many"] = r
            log(f"  {r}")
        finally:
            stack.remove(inst)
            shutil.rmtree(work / f"p1-{target}", ignore_errors=True)
    big_file.unlink()

    res["ratio_big_local_vs_copy"] = round(
        res["tus_local_big"]["commit_s"] / res["direct_local_big"]["copy_s"], 2
    )
    res["ratio_big_s3_vs_fput"] = round(res["tus_s3_big"]["commit_s"] / res["direct_s3_big_s"], 2)
    res["ratio_many_s3_vs_fput"] = round(
        res["tus_s3_many"]["all_committed_s"] / res["direct_s3_many_s"], 2
    )
    res["ratio_many_local_vs_copy"] = round(
        res["tus_local_many"]["all_committed_s"] / res["direct_local_many_s"], 2
    )


# --- part 2: upload throughput by chunk store -------------------------------------------------


def direct_put_many(s3: Any, n: int, size: int, threads: int, source: BodySource) -> float:
    client = s3.client()
    data = (bytes(source._buf) * (size // len(source._buf) + 1))[:size]
    stamp = time.time_ns()

    def put(i: int) -> None:
        client.put_object(
            DIRECT_BUCKET, f"p-{stamp}-{i}", io.BytesIO(data), size, part_size=16 * MiB
        )

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(n)))
    return time.perf_counter() - t


def run_best(repeat: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    runs = [fn() for _ in range(repeat)]
    best = max(runs, key=lambda r: r["mb_s"])
    return {**best, "runs_mb_s": [r["mb_s"] for r in runs]}


def part2(args: argparse.Namespace, stack: Stack, s3: Any, work: Path, out: dict) -> None:
    source = BodySource()
    n, size, chunk = 8, 64 * MiB, 8 * MiB
    res: dict[str, Any] = {"load": "8 concurrent x 64 MiB, 8 MiB PATCHes"}
    out["chunk_store"] = res
    log("part 2: direct put_object 8 x 64 MiB, 8 threads")
    runs = [direct_put_many(s3, n, size, 8, source) for _ in range(args.repeat)]
    best = min(runs)
    res["direct_s3"] = {
        "wall_s": round(best, 3),
        "mb_s": round(n * size / 1e6 / best, 1),
        "runs_mb_s": [round(n * size / 1e6 / r, 1) for r in runs],
    }
    log(f"  {res['direct_s3']}")
    for name, chunk_store in (("s3_chunks", "s3"), ("local_chunks", "local")):
        env = base_env(
            {
                "TUSSERVER_CHUNK_STORE": chunk_store,
                "TUSSERVER_OBJECT_STORE": "s3",
                "TUSSERVER_MAX_SIZE": str(1024**3),
                **s3_env(s3),
            }
        )
        inst = start_instance(stack, work, f"p2-{name}", env)
        try:
            log(f"part 2: 8 x 64 MiB through tusserver, chunk store {chunk_store}")

            def one(url: str = inst.url) -> dict[str, Any]:
                r = asyncio.run(concurrent_uploads(url + "/uploads/", n, size, chunk, 8, source))
                # let the commits of this round finish before the next one is measured
                r["commit_after_s"] = round(asyncio.run(wait_all_committed(url, r.pop("urls"))), 3)
                return r

            res[name] = run_best(args.repeat, one)
            log(f"  {res[name]}")
        finally:
            stack.remove(inst)
            shutil.rmtree(work / f"p2-{name}", ignore_errors=True)
    res["ratio_s3_chunks_vs_direct"] = round(res["direct_s3"]["mb_s"] / res["s3_chunks"]["mb_s"], 2)
    res["ratio_local_chunks_vs_direct"] = round(
        res["direct_s3"]["mb_s"] / res["local_chunks"]["mb_s"], 2
    )


# --- part 3: cluster ---------------------------------------------------------------------------


def part3(args: argparse.Namespace, stack: Stack, s3: Any, work: Path, out: dict) -> None:
    source = BodySource()
    n, size, chunk = 8, 64 * MiB, 8 * MiB
    res: dict[str, Any] = {"load": "8 concurrent x 64 MiB, 8 MiB PATCHes, through nginx"}
    out["cluster"] = res
    pg = stack.add(services.PostgresServer(base_dir=work))
    pg.start()
    for count in args.instances:
        db = pg.create_database(f"tus{count}")
        env = base_env(
            {
                "TUSSERVER_DATABASE_URL": db,
                "TUSSERVER_CHUNK_STORE": "s3",
                "TUSSERVER_OBJECT_STORE": "s3",
                "TUSSERVER_LOCKER": "postgres",
                "TUSSERVER_TRUST_PROXY_HEADERS": "true",
                "TUSSERVER_MAX_SIZE": str(1024**3),
                **s3_env(s3, bucket=f"cluster{count}"),
            }
        )
        insts = []
        nginx = None
        try:
            for i in range(count):
                inst = stack.add(run_cluster.Instance(f"c{count}-{i}", work / f"c{count}-{i}", env))
                inst.start()
                insts.append(inst)
            for inst in insts:
                inst.wait_healthy(90)
            nginx = stack.add(
                run_cluster.Nginx(work / f"nginx{count}", [f"{HOST}:{i.port}" for i in insts])
            )
            nginx.start()
            log(f"part 3: {count} instance(s) behind nginx")

            def one(url: str = nginx.url) -> dict[str, Any]:
                r = asyncio.run(concurrent_uploads(url + "/uploads/", n, size, chunk, 8, source))
                r["commit_after_s"] = round(asyncio.run(wait_all_committed(url, r.pop("urls"))), 3)
                return r

            res[f"instances_{count}"] = run_best(args.repeat, one)
            log(f"  {res[f'instances_{count}']}")
        finally:
            if nginx is not None:
                stack.remove(nginx)
            for inst in insts:
                stack.remove(inst)


# --- main ------------------------------------------------------------------------------------


def table(out: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    c = out.get("commit")
    if c and "tus_s3_big" in c:
        mib = c["big_size_mib"]
        rows += [
            (f"commit {mib} MiB local->local", f"{c['tus_local_big']['commit_s']} s",
             f"copyfile {c['direct_local_big']['copy_s']} s, sha256 {c['direct_local_big']['sha256_s']} s"
             f" -> x{c['ratio_big_local_vs_copy']}"),
            (f"commit {mib} MiB local->S3", f"{c['tus_s3_big']['commit_s']} s",
             f"fput_object {c['direct_s3_big_s']} s -> x{c['ratio_big_s3_vs_fput']}"),
            (f"{c['tus_local_many']['files']} x 1 MiB local->local (upload+commit)",
             f"{c['tus_local_many']['all_committed_s']} s ({c['tus_local_many']['files_per_s']}/s)",
             f"copyfile x4 threads {c['direct_local_many_s']} s -> x{c['ratio_many_local_vs_copy']}"),
            (f"{c['tus_s3_many']['files']} x 1 MiB local->S3 (upload+commit)",
             f"{c['tus_s3_many']['all_committed_s']} s ({c['tus_s3_many']['files_per_s']}/s)",
             f"fput_object x4 threads {c['direct_s3_many_s']} s -> x{c['ratio_many_s3_vs_fput']}"),
        ]  # fmt: skip
    p = out.get("chunk_store")
    if p and "local_chunks" in p:
        rows += [
            ("8x64 MiB, S3 chunk store", f"{p['s3_chunks']['mb_s']} MB/s",
             f"direct put_object {p['direct_s3']['mb_s']} MB/s -> direct/tus x{p['ratio_s3_chunks_vs_direct']}"),
            ("8x64 MiB, local chunk store", f"{p['local_chunks']['mb_s']} MB/s",
             f"direct/tus x{p['ratio_local_chunks_vs_direct']}"),
        ]  # fmt: skip
    cl = out.get("cluster", {})
    for k, v in cl.items():
        if k.startswith("instances_"):
            rows.append((f"nginx + {k.split('_')[1]} instance(s), 8x64 MiB", f"{v['mb_s']} MB/s",
                         f"runs {v['runs_mb_s']}, errors {v['errors']}"))  # fmt: skip
    w = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    return "\n".join(f"{a:<{w[0]}}  {b:>{w[1]}}  {c_}" for a, b, c_ in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the big upload (1024)")
    ap.add_argument("--small-n", type=int, default=1000, help="number of 1 MiB files (1000)")
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeat", type=int, default=2, help="runs of parts 2-3 (best kept)")
    ap.add_argument("--py-spy", action="store_true", help="py-spy dumps during the big commits")
    ap.add_argument("--tmp-dir", type=Path, default=None)
    ap.add_argument("--output", type=Path, default=RESULTS / "storage.json")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tus-storage-bench-", dir=args.tmp_dir))
    work.chmod(0o755)  # PostgreSQL runs as `postgres`, nginx workers as `nobody` under root
    out: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    stack = Stack()
    rc = 0
    try:
        s3 = stack.add(services.SeaweedS3(base_dir=work))
        s3.start(60)
        s3.ensure_bucket(DIRECT_BUCKET)
        for part, fn in ((1, part1), (2, part2), (3, part3)):
            if part in args.parts:
                try:
                    fn(args, stack, s3, work, out)
                except Exception as exc:  # report and go on with the next part
                    rc = 1
                    out.setdefault("errors", []).append(f"part {part}: {type(exc).__name__}: {exc}")
                    log(f"part {part} FAILED: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        rc = 130
        log("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        services.close_all()
        shutil.rmtree(work, ignore_errors=True)
        out["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        args.output.write_text(json.dumps(out, indent=2))
        print()
        print(table(out))
        print(f"\nwritten: {args.output}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
