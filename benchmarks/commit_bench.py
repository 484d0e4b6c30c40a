"""Interleaved A/B of the local object store alone: CPU per commit of a small file, and per
stat (what a download reads first), for several source trees.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/commit_bench.py --var main=/tmp/main-src --var new=.

Each ``--var label=SRC`` is a directory holding ``storage_backends`` (``git archive main
storage_backends | tar -x -C /tmp/main-src``), put first on ``PYTHONPATH`` of a fresh
process per run; the variants alternate (A B, then B A). A run commits ``--files`` files of
4 KiB with ``put_file(consume=True)`` (the pipeline's commit of a local upload) under keys of
the default template (all in one directory: one owner, one day), fsync off, then stats each
object; it reports the process's user + system CPU per operation (getrusage), which on a
shared machine moves far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_RUN = r"""
import asyncio, json, resource, sys, tempfile
from pathlib import Path
from storage_backends.local import LocalObjectStore

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def main(n):
    with tempfile.TemporaryDirectory(dir=sys.argv[2] or None) as d:
        d = Path(d)
        (d / "uploads").mkdir()
        store = LocalObjectStore(d / "objects", fsync=False)
        await store.open()
        srcs = []
        for i in range(n):
            p = d / "uploads" / f"u{i}"
            p.write_bytes(b"x" * 4096)
            srcs.append(p)
        meta = {"file-id": "f" * 32, "owner": "alice", "original-name": "photo.png",
                "sha256": "ab" * 32}
        keys = [f"alice/2026/12/06/{i:032x}-photo.png" for i in range(n)]
        t0 = cpu()
        for key, p in zip(keys, srcs):
            await store.put_file(key, p, content_type="image/png", metadata=meta, consume=True)
        t1 = cpu()
        for key in keys:
            assert (await store.stat(key)).metadata == meta
        t2 = cpu()
        import storage_backends
        print(json.dumps({"commit_us": (t1 - t0) / n * 1e6, "stat_us": (t2 - t1) / n * 1e6,
                          "src": storage_backends.__file__}))

asyncio.run(main(int(sys.argv[1])))
"""


def one(src: str, files: int, tmp: str) -> dict[str, float]:
    """One run of ``src``: CPU us per commit and per stat."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(src).resolve()), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(files), tmp],
        env=env,
        cwd=tmp or tempfile.gettempdir(),  # not ours: `-c` puts the cwd first on sys.path
        capture_output=True,
        check=True,
        text=True,
    )
    res = json.loads(out.stdout)
    loaded = Path(res.pop("src")).resolve()
    assert loaded.is_relative_to(Path(src).resolve()), f"{src}: loaded {loaded}"
    return {k: float(v) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--var", action="append", required=True, help="label=SRC")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--tmp", default="", help="directory for the stores (default: $TMPDIR)")
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.var]
    print(f"load average at start: {os.getloadavg()}")
    print(f"{'variant':<10} {'commit us':>10} {'stat us':>8}")
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for label, src in order:
            res = one(src, args.files, args.tmp)
            results[label].append(res)
            print(f"{label:<10} {res['commit_us']:>10.0f} {res['stat_us']:>8.1f}", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    for label, runs in results.items():
        commit = sum(x["commit_us"] for x in runs) / len(runs)
        st = sum(x["stat_us"] for x in runs) / len(runs)
        print(f"mean {label:<5} commit {commit:.0f} us, stat {st:.1f} us")


if __name__ == "__main__":
    main()
