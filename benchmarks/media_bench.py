"""Media benchmark: the pipeline's media step against the tools' own command lines, one run.

    python benchmarks/media_bench.py [--images 200] [--videos 50] [--workdir DIR] [--json OUT]

Makes ``--images`` different 12-megapixel JPEGs (4000 x 3000, ffmpeg's testsrc2, one frame
each) and ``--videos`` different 2-second 1080p H.264 + AAC videos, then:

- pipeline: each file through :class:`tusserver.pipeline.media.MediaProcessor` exactly as the
  pipeline runs it (a sandboxed subprocess per file: probe, validation, WebP thumbnails at 256
  and 1024 px; for videos ffprobe plus the poster frame at 10 %), one file at a time;
- CLI: the same outputs made directly: ``vipsthumbnail`` once per size for images;
  ``ffprobe`` and ``ffmpeg -ss T -i F -frames:v 1`` (1024 px WebP) plus a 256 px WebP from it
  for videos.

Reported per side: files per second (wall), CPU per file (user + system of every child
process, from RUSAGE_CHILDREN) and the largest child's ru_maxrss. On a shared machine compare
CPU per file, not wall time. Linux counts in a child's ru_maxrss the pages of the parent it
was forked from, so that column is at least this script's own size: measure a worker's own
peak with ``/usr/bin/time -f %M`` (benchmarks/README.md, media benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tusserver.pipeline.media import Limits, MediaProcessor, MediaTools  # noqa: E402
from tusserver.pipeline.validators import Candidate  # noqa: E402


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def make_fixtures(workdir: Path, images: int, videos: int) -> tuple[list[Path], list[Path]]:
    img_dir, vid_dir = workdir / "images", workdir / "videos"
    img_dir.mkdir(parents=True, exist_ok=True)
    vid_dir.mkdir(parents=True, exist_ok=True)
    jpegs = sorted(img_dir.glob("img*.jpg"))
    if len(jpegs) < images:
        # One frame per second of a moving test pattern: every picture differs.
        _run(
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
            "testsrc2=size=4000x3000:rate=1", "-frames:v", str(images), "-q:v", "3",
            str(img_dir / "img%04d.jpg"),
        )  # fmt: skip
        jpegs = sorted(img_dir.glob("img*.jpg"))
    mp4s = sorted(vid_dir.glob("vid*.mp4"))
    for i in range(len(mp4s), videos):
        _run(
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
            f"testsrc2=size=1920x1080:rate=30,hue=h={i * 7}", "-f", "lavfi", "-i",
            f"sine=frequency={220 + 10 * i}", "-t", "2", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
            str(vid_dir / f"vid{i:04d}.mp4"),
        )  # fmt: skip
    mp4s = sorted(vid_dir.glob("vid*.mp4"))
    return jpegs[:images], mp4s[:videos]


def _children() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024.0


def measure(name: str, files: list[Path], work: Callable[[Path], None]) -> dict[str, Any]:
    """Run ``work`` on each file; CPU and peak RSS of the children started meanwhile.

    ru_maxrss of RUSAGE_CHILDREN is the largest over all children so far: each side runs in
    a fresh process (see main) so the other side's children do not count."""
    cpu0, _ = _children()
    t0 = time.perf_counter()
    for f in files:
        work(f)
    wall = time.perf_counter() - t0
    cpu1, rss = _children()
    n = len(files)
    return {
        "side": name,
        "files": n,
        "files_per_s": round(n / wall, 2),
        "cpu_ms_per_file": round((cpu1 - cpu0) / n * 1000, 1),
        "peak_rss_mib": round(rss, 1),
    }


def pipeline_side(kind: str, files: list[Path], out: Path) -> dict[str, Any]:
    processor = MediaProcessor(
        tools=MediaTools.detect(),
        limits=Limits(cpu_seconds=60, memory_bytes=1024**3, wall_seconds=300),
        work_dir=out,
        max_pixels=100_000_000,
        max_duration=0,
        strip_location=False,
    )
    mime = "image/jpeg" if kind == "images" else "video/mp4"

    async def one(path: Path) -> None:
        async def nothing() -> Any:
            if False:  # pragma: no cover - the file is local: never read through here
                yield b""

        candidate = Candidate(
            size=path.stat().st_size, sha256="", head=b"", detected_type=mime,
            declared_type=mime, metadata={}, open=nothing,
        )  # fmt: skip
        outcome = await processor.process(candidate, path)
        assert outcome.verdict.kind.value == "accept", outcome.verdict
        assert sorted(outcome.thumbnails) == [256, 1024], outcome.thumbnails
        await outcome.cleanup()

    loop = asyncio.new_event_loop()
    try:
        return measure(f"pipeline {kind}", files, lambda p: loop.run_until_complete(one(p)))
    finally:
        loop.close()


def cli_side(kind: str, files: list[Path], out: Path) -> dict[str, Any]:
    if kind == "images":

        def work(path: Path) -> None:
            for size in (1024, 256):
                _run(
                    "vipsthumbnail", str(path), "-s", str(size),
                    "-o", f"{out}/%s-{size}.webp[Q=80,strip]",
                )  # fmt: skip

        return measure("vipsthumbnail images", files, work)

    def work_video(path: Path) -> None:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
             "-show_streams", str(path)],
            check=True, capture_output=True,
        )  # fmt: skip
        duration = float(json.loads(probe.stdout)["format"]["duration"])
        big = out / f"{path.stem}-1024.webp"
        _run(
            "ffmpeg", "-v", "error", "-y", "-threads", "2", "-ss", f"{duration / 10:.3f}",
            "-i", str(path), "-frames:v", "1", "-vf",
            "scale=w='min(iw,1024)':h='min(ih,1024)':force_original_aspect_ratio=decrease",
            "-c:v", "libwebp", "-quality", "80", str(big),
        )  # fmt: skip
        _run(
            "ffmpeg", "-v", "error", "-y", "-i", str(big), "-vf",
            "scale=w=256:h=256:force_original_aspect_ratio=decrease", "-c:v", "libwebp",
            "-quality", "80", str(out / f"{path.stem}-256.webp"),
        )  # fmt: skip

    return measure("ffprobe+ffmpeg videos", files, work_video)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--videos", type=int, default=50)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "media-bench")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)  # one side, in a child
    args = ap.parse_args()
    for tool in ("ffmpeg", "ffprobe", "vipsthumbnail"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (Debian packages ffmpeg, libvips-tools)", file=sys.stderr)
            return 2
    jpegs, mp4s = make_fixtures(args.workdir, args.images, args.videos)
    if args.side:
        side, kind = args.side.split(":")
        files = jpegs if kind == "images" else mp4s
        out = Path(tempfile.mkdtemp(prefix="out-", dir=args.workdir))
        try:
            fn = pipeline_side if side == "pipeline" else cli_side
            print(json.dumps(fn(kind, files, out)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return 0
    results = []
    for side in ("pipeline:images", "cli:images", "pipeline:videos", "cli:videos"):
        # A process per side: RUSAGE_CHILDREN's peak RSS is then that side's alone.
        proc = subprocess.run(
            [sys.executable, __file__, "--images", str(len(jpegs)), "--videos", str(len(mp4s)),
             "--workdir", str(args.workdir), "--side", side],
            check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'side':<24} {'files':>5} {'files/s':>8} {'CPU ms/file':>12} {'peak RSS MiB':>13}")
    for r in results:
        print(
            f"{r['side']:<24} {r['files']:>5} {r['files_per_s']:>8} "
            f"{r['cpu_ms_per_file']:>12} {r['peak_rss_mib']:>13}"
        )
    for kind, a, b in (("images", 0, 1), ("videos", 2, 3)):
        ratio = results[a]["cpu_ms_per_file"] / results[b]["cpu_ms_per_file"]
        print(f"{kind}: pipeline CPU per file = {ratio:.2f} x the command-line tool's")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
