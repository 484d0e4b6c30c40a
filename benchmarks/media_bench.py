"""Media benchmark (#17, #18): the media step against the tools' own command lines, and the
upload path's throughput while thumbnails are being made. One run, one command:

    python benchmarks/media_bench.py                 # 200 JPEGs, 50 videos, uploads: ~10 min
    python benchmarks/media_bench.py --quick         # 20 JPEGs, 6 videos, 1 upload round
    python benchmarks/media_bench.py --skip-uploads  # part 1 only

Fixtures are made at the first run by real encoders and cached (``--workdir``, default
``$TMPDIR/media-bench``): ``--images`` different 12-megapixel JPEGs (4000 x 3000 frames of
ffmpeg's moving testsrc2 with film-grain noise, about 3.2 MB each, like a phone photo) and
``--videos`` different 2-second 1080p30 H.264 + AAC videos.

**Part 1, processing** (the same outputs on every side: WebP quality 80, 1024 and 256 px on
the longest side, no metadata; for videos also the ffprobe facts and the poster frame at a
tenth of the duration). Each file goes through every side in turn, in a rotating order (A B C,
B C A, ...), so the machine's load drifts over all sides alike:

- ``pipeline``: :class:`tusserver.pipeline.media.MediaProcessor`, exactly as the pipeline runs
  it: a sandboxed ``python -I -S worker.py`` per file (limits, its own session; not niced
  here, unlike in the server: the CPU time is the same, the wait on a busy machine is not);
- ``vipsthumbnail``: ``vipsthumbnail F -s 1024`` then ``vipsthumbnail F-1024.webp -s 256``
  (the 256 from the 1024, as the worker does: one decode of the JPEG);
- ``pyvips``: the alternative image library, in the same subprocess-per-file model as the
  worker (``python -I -S`` + pyvips: ``thumbnail`` at 1024 with shrink-on-load, 256 from it);
  skipped when pyvips/libvips are not installed;
- ``ffmpeg`` (videos): ``ffprobe`` (JSON facts), then one ``ffmpeg -ss T -i F`` decoding one
  frame and writing both WebPs through a ``split`` filter.

CPU per file is user + system time of every process of the side (this process's
RUSAGE_CHILDREN before and after each file; the pipeline's own share in this process, the
asyncio side of the step, is shown apart). Peak RSS is each file's largest process, from
``/usr/bin/time -f %M`` wrapped around every command of every side (the worker included,
through its interpreter path): measured that way, a child's peak does not include this big
process's pages as RUSAGE_CHILDREN's ru_maxrss would. The wrapper's own cost (about 1 ms)
is in every side alike.

**Part 2, uploads while thumbnails are made**: small uploads (``--uploads`` x 4 KiB, POST +
one PATCH, concurrency 16, as in run_all.py) against ``tusserver serve`` (api and pipeline
in one process) and against ``serve --role api`` with a ``tusserver worker`` beside it (same
data directory, SQLite), each once without media work (``quiet``) and once with a backlog of
``--backlog`` 12-megapixel JPEGs uploaded just before, which the pipeline is thumbnailing
while the small uploads run (``media``). The figure is the small uploads' rate; the run also
says whether the backlog was still being processed when the small uploads ended (if not,
the "media" figure is partly a quiet one: raise ``--backlog``). Rounds alternate the four
configurations. Results: ``--json`` (default benchmarks/results/media.json).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from tusserver.pipeline.media import Limits, MediaProcessor, MediaTools  # noqa: E402
from tusserver.pipeline.validators import Candidate  # noqa: E402

TIME = "/usr/bin/time"
SIZES = (1024, 256)

# The pyvips side: what the worker would be with pyvips instead of Pillow (same model: one
# ``python -I -S`` per file, one decode with shrink-on-load, 256 made from the 1024).
PYVIPS_WORKER = """
import sys
sys.path.append(sys.argv[1])  # run with -I -S, like the worker
import pyvips
path, out = sys.argv[2], sys.argv[3]
big = pyvips.Image.thumbnail(path, 1024, size="down").copy_memory()  # decoded once
big.write_to_file(out + "-1024.webp", Q=80, strip=True)
small = big.thumbnail_image(256, size="down")
small.write_to_file(out + "-256.webp", Q=80, strip=True)
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def make_fixtures(workdir: Path, images: int, videos: int) -> tuple[list[Path], list[Path]]:
    """Real encoders, cached: JPEGs that differ from each other, noisy like photos."""
    img_dir, vid_dir = workdir / "images-v2", workdir / "videos"
    img_dir.mkdir(parents=True, exist_ok=True)
    vid_dir.mkdir(parents=True, exist_ok=True)
    jpegs = sorted(img_dir.glob("img*.jpg"))
    if len(jpegs) < images:
        print(f"making {images} 12-megapixel JPEGs in {img_dir} (cached)", flush=True)
        # One frame per second of a moving test pattern plus temporal noise: every picture
        # differs, and the noise gives the entropy coder a photo's work (~3.2 MB at q 3).
        _run(
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
            "testsrc2=size=4000x3000:rate=1,noise=alls=20:allf=t+u", "-frames:v", str(images),
            "-q:v", "3", str(img_dir / "img%04d.jpg"),
        )  # fmt: skip
        jpegs = sorted(img_dir.glob("img*.jpg"))
    mp4s = sorted(vid_dir.glob("vid*.mp4"))
    if len(mp4s) < videos:
        print(f"making {videos} 1080p videos in {vid_dir} (cached)", flush=True)
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


# --- part 1: CPU per file, peak RSS ------------------------------------------------------------


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class RssLog:
    """A file ``/usr/bin/time -a -f %M`` appends each wrapped process's peak RSS (KiB) to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def take(self) -> float:
        """The largest peak written since the last call, in MiB (and empty the log)."""
        lines = [ln for ln in self.path.read_text().split() if ln.strip().isdigit()]
        self.path.write_text("")
        return max((int(x) for x in lines), default=0) / 1024.0

    def wrap(self, *argv: str) -> list[str]:
        return [TIME, "-a", "-o", str(self.path), "-f", "%M", *argv]


class Side:
    def __init__(self, name: str, kind: str, work: Callable[[Path], None], rss: RssLog) -> None:
        self.name, self.kind, self.work, self.rss = name, kind, work, rss
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.peak: list[float] = []
        self.own_cpu: list[float] = []

    def once(self, path: Path) -> None:
        self.rss.take()
        c0, p0, t0 = _children_cpu(), time.process_time(), time.perf_counter()
        self.work(path)
        self.wall.append(time.perf_counter() - t0)
        self.own_cpu.append(time.process_time() - p0)
        self.cpu.append(_children_cpu() - c0)
        self.peak.append(self.rss.take())

    def summary(self) -> dict[str, Any]:
        n = len(self.cpu)
        return {
            "side": self.name,
            "kind": self.kind,
            "files": n,
            "files_per_s": round(n / sum(self.wall), 2),
            "cpu_ms_per_file": round(sum(self.cpu) / n * 1000, 1),
            "cpu_ms_p50": round(statistics.median(self.cpu) * 1000, 1),
            "parent_cpu_ms_per_file": round(sum(self.own_cpu) / n * 1000, 1),
            "peak_rss_mib": round(max(self.peak), 1),
            "peak_rss_mib_p50": round(statistics.median(self.peak), 1),
        }


def _pipeline_work(kind: str, out: Path, rss: RssLog) -> Callable[[Path], None]:
    # The worker's interpreter, wrapped by /usr/bin/time (the sandbox passes its limits on).
    wrapper = out / "python-timed"
    wrapper.write_text(
        f'#!/bin/sh\nexec {" ".join(rss.wrap(sys.executable))} "$@"\n'
    )  # fmt: skip
    wrapper.chmod(0o755)
    processor = MediaProcessor(
        tools=MediaTools.detect(),
        # Not niced here (the server's default): this part measures the work, and a niced
        # worker on a busy machine would only wait longer for the same CPU time.
        limits=Limits(cpu_seconds=60, memory_bytes=1024**3, wall_seconds=300, nice=0),
        work_dir=out,
        max_pixels=100_000_000,
        max_duration=0,
        strip_location=False,
        python=str(wrapper),
    )
    mime = "image/jpeg" if kind == "images" else "video/mp4"
    loop = asyncio.new_event_loop()

    async def nothing() -> Any:
        if False:  # pragma: no cover - the file is local: never read through here
            yield b""

    async def one(path: Path) -> None:
        candidate = Candidate(
            size=path.stat().st_size, sha256="", head=b"", detected_type=mime,
            declared_type=mime, metadata={}, open=nothing,
        )  # fmt: skip
        outcome = await processor.process(candidate, path)
        assert outcome.verdict.kind.value == "accept", outcome.verdict
        assert sorted(outcome.thumbnails) == [256, 1024], outcome.thumbnails
        await outcome.cleanup()

    return lambda p: loop.run_until_complete(one(p))


def _vips_work(out: Path, rss: RssLog) -> Callable[[Path], None]:
    def work(path: Path) -> None:
        big = out / f"{path.stem}-1024.webp"
        _run(*rss.wrap("vipsthumbnail", str(path), "-s", "1024", "-o", f"{big}[Q=80,strip]"))
        small = f"{out}/{path.stem}-256.webp[Q=80,strip]"
        _run(*rss.wrap("vipsthumbnail", str(big), "-s", "256", "-o", small))

    return work


def _pyvips_work(out: Path, rss: RssLog) -> Callable[[Path], None]:
    script = out / "pyvips_worker.py"
    script.write_text(PYVIPS_WORKER)
    spec = importlib.util.find_spec("pyvips")
    assert spec is not None and spec.submodule_search_locations
    site = str(Path(next(iter(spec.submodule_search_locations))).parent)
    return lambda path: _run(
        *rss.wrap(sys.executable, "-I", "-S", str(script), site, str(path), str(out / path.stem))
    )


def _ffmpeg_work(out: Path, rss: RssLog) -> Callable[[Path], None]:
    def work(path: Path) -> None:
        probe = subprocess.run(
            rss.wrap("ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                     "-show_streams", str(path)),
            check=True, capture_output=True,
        )  # fmt: skip
        duration = float(json.loads(probe.stdout)["format"]["duration"])
        fit = "force_original_aspect_ratio=decrease"
        _run(*rss.wrap(
            "ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "2",
            "-ss", f"{duration / 10:.3f}", "-i", str(path), "-filter_complex",
            f"[0:v]scale=w='min(iw,1024)':h='min(ih,1024)':{fit},split[a][b];"
            f"[b]scale=w='min(iw,256)':h='min(ih,256)':{fit}[c]",
            # -frames:v is an option of each output: without it on the second one, that one
            # would be an animated WebP of every frame from T on.
            "-map", "[a]", "-frames:v", "1", "-c:v", "libwebp", "-quality", "80",
            str(out / f"{path.stem}-1024.webp"),
            "-map", "[c]", "-frames:v", "1", "-c:v", "libwebp", "-quality", "80",
            str(out / f"{path.stem}-256.webp"),
        ))  # fmt: skip

    return work


def _have_pyvips() -> bool:
    if importlib.util.find_spec("pyvips") is None:
        return False
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import pyvips; pyvips.Image.black(1, 1)"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def part1(jpegs: list[Path], mp4s: list[Path], workdir: Path) -> list[dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
    rss = RssLog(out / "rss.log")
    results: list[dict[str, Any]] = []
    try:
        plans: list[tuple[list[Path], list[Side]]] = []
        image_sides = [
            Side("pipeline (Pillow)", "images", _pipeline_work("images", out, rss), rss),
            Side("vipsthumbnail", "images", _vips_work(out, rss), rss),
        ]
        if _have_pyvips():
            image_sides.append(Side("pyvips worker", "images", _pyvips_work(out, rss), rss))
        else:
            print("pyvips or libvips missing: the pyvips side is skipped", flush=True)
        plans.append((jpegs, image_sides))
        video_sides = [
            Side("pipeline (ffprobe+ffmpeg)", "videos", _pipeline_work("videos", out, rss), rss),
            Side("ffprobe + ffmpeg", "videos", _ffmpeg_work(out, rss), rss),
        ]
        plans.append((mp4s, video_sides))
        for files, sides in plans:
            if not files:
                continue
            for side in sides:  # warm-up (page cache, first imports), not counted
                side.work(files[0])
            for i, path in enumerate(files):
                k = i % len(sides)
                for side in sides[k:] + sides[:k]:  # A B C, B C A, C A B, ...
                    side.once(path)
                if (i + 1) % 25 == 0:
                    print(f"  {sides[0].kind}: {i + 1}/{len(files)}", flush=True)
            results += [s.summary() for s in sides]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return results


def print_part1(results: list[dict[str, Any]]) -> dict[str, float]:
    print(
        f"\n{'side':<26} {'files':>5} {'files/s':>8} {'CPU ms/file':>12} {'p50':>7} "
        f"{'parent ms':>9} {'peak RSS MiB':>13} {'p50':>6}"
    )
    for r in results:
        print(
            f"{r['side']:<26} {r['files']:>5} {r['files_per_s']:>8} {r['cpu_ms_per_file']:>12} "
            f"{r['cpu_ms_p50']:>7} {r['parent_cpu_ms_per_file']:>9} {r['peak_rss_mib']:>13} "
            f"{r['peak_rss_mib_p50']:>6}"
        )
    ratios: dict[str, float] = {}
    by = {r["side"]: r for r in results}
    for key, a, b in (
        ("images_vs_vipsthumbnail", "pipeline (Pillow)", "vipsthumbnail"),
        ("images_pyvips_vs_vipsthumbnail", "pyvips worker", "vipsthumbnail"),
        ("videos_vs_ffmpeg", "pipeline (ffprobe+ffmpeg)", "ffprobe + ffmpeg"),
    ):
        if a in by and b in by:
            ratios[key] = round(by[a]["cpu_ms_per_file"] / by[b]["cpu_ms_per_file"], 2)
            print(f"{a}: CPU per file = {ratios[key]:.2f} x {b} (target: at most 1.3)")
    return ratios


# --- part 2: uploads while thumbnails are made --------------------------------------------------


async def _upload_file(session: Any, endpoint: str, path: Path) -> None:
    import base64

    data = await asyncio.to_thread(path.read_bytes)
    meta = "filename " + base64.b64encode(path.name.encode()).decode()
    meta += ",filetype " + base64.b64encode(b"image/jpeg").decode()
    async with session.post(
        endpoint,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(data)),
            "Upload-Metadata": meta,
        },
    ) as r:
        assert r.status == 201, r.status
        location = r.headers["Location"]
    async with session.patch(
        location if location.startswith("http") else endpoint.split("/uploads/")[0] + location,
        data=data,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    ) as r:
        assert r.status == 204, r.status


async def _count_thumbnailed(data_dir: Path) -> int:
    return len(list(data_dir.rglob("*.thumb-256.webp")))


async def part2(
    jpegs: list[Path], workdir: Path, *, uploads: int, backlog: int, rounds: int
) -> dict[str, Any]:
    import aiohttp
    from load import BodySource, KiB, Scenario, run_scenario
    from run_all import Server, _base_env, _tusserver_bin, settle, stop_all

    from tusserver.testing import tree_cpu_seconds

    def env() -> dict[str, str]:
        e = _base_env()
        e.update(
            TUSSERVER_FSYNC="false",
            TUSSERVER_LOG_LEVEL="warning",
            TUSSERVER_AUTH="none",
            TUSSERVER_RATE_LIMIT_CREATIONS="0",
            TUSSERVER_PIPELINE_POLL_INTERVAL="0.5",
        )
        return e

    def serve(role: str) -> Callable[[int, Path], tuple[list[str], dict[str, str]]]:
        def build(port: int, data: Path) -> tuple[list[str], dict[str, str]]:
            argv = [_tusserver_bin(), "--data-dir", str(data), "serve"]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--role", role]
            return argv, env()

        return build

    def worker_of(data: Path) -> Callable[[int, Path], tuple[list[str], dict[str, str]]]:
        def build(port: int, _data: Path) -> tuple[list[str], dict[str, str]]:
            argv = [_tusserver_bin(), "--data-dir", str(data), "worker"]
            return [*argv, "--host", "127.0.0.1", "--port", str(port)], env()

        return build

    source = BodySource()
    small = Scenario("small", uploads, 4 * KiB, 4 * KiB, 16)
    images = jpegs[:backlog]
    runs: dict[str, list[dict[str, Any]]] = {}

    async def one(config: str, media: bool) -> dict[str, Any]:
        api = Server(f"{config}-api", serve("all" if config == "one process" else "api"), workdir)
        pids: list[int] = []
        worker: Server | None = None
        try:
            api.start()
            await api.wait_ready()
            pids.append(api.pid)
            if config != "one process":
                worker = Server(f"{config}-worker", worker_of(api.data_dir), workdir)
                # The worker's /readyz, not /uploads/: ready once it answers at all.
                worker.start()
                await asyncio.sleep(0)
                pids.append(worker.pid)
                await _wait_http(f"http://127.0.0.1:{worker.port}/healthz")
            warm = Scenario("warmup", 50, 4 * KiB, 4 * KiB, 8)
            await run_scenario(api.endpoint, warm, source, timeout=120)
            for pid in pids:
                await settle(pid)
            if media:
                async with aiohttp.ClientSession() as session:
                    sem = asyncio.Semaphore(4)

                    async def up(p: Path) -> None:
                        async with sem:
                            await _upload_file(session, api.endpoint, p)

                    await asyncio.gather(*(up(p) for p in images))
            cpu0 = [tree_cpu_seconds(p) for p in pids]
            res = await run_scenario(api.endpoint, small, source, timeout=600)
            cpu1 = [tree_cpu_seconds(p) for p in pids]
            done = await _count_thumbnailed(api.data_dir) if media else 0
            out = {
                "config": config,
                "media": media,
                "uploads_per_s": res.uploads_per_s,
                "errors": res.errors,
                "post_p99_ms": res.post_p99_ms,
                "patch_p99_ms": res.patch_p99_ms,
                "api_cpu_s": round(cpu1[0] - cpu0[0], 2),
                "worker_cpu_s": round(cpu1[1] - cpu0[1], 2) if len(pids) > 1 else None,
                "backlog": len(images) if media else 0,
                "thumbnailed_when_uploads_ended": done,
                "media_busy_throughout": (done < len(images)) if media else None,
                "load_avg": os.getloadavg()[0],
            }
            for pid in pids:  # the next configuration starts on a quiet machine
                await settle(pid, timeout=120)
            return out
        finally:
            if worker is not None:
                worker.stop()
            api.stop()
            shutil.rmtree(api.data_dir, ignore_errors=True)

    configs = [(c, m) for c in ("one process", "api + worker") for m in (False, True)]
    try:
        for rnd in range(rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]
            for config, media in order:
                r = await one(config, media)
                runs.setdefault(f"{config}, {'media' if media else 'quiet'}", []).append(r)
                print(
                    f"  {config:<13} {'media' if media else 'quiet':<5} "
                    f"{r['uploads_per_s']:7.1f} uploads/s  api CPU {r['api_cpu_s']:5.2f} s  "
                    f"worker CPU {r['worker_cpu_s']}  thumbnailed {r['thumbnailed_when_uploads_ended']}"
                    f"/{r['backlog']}  errors {r['errors']}  load {r['load_avg']:.1f}",
                    flush=True,
                )
                if r["media_busy_throughout"] is False:
                    print(
                        "    the backlog was done before the uploads: part of this run was "
                        "quiet (raise --backlog)",
                        flush=True,
                    )
    finally:
        stop_all()
    summary: dict[str, Any] = {"runs": runs, "median_uploads_per_s": {}}
    for key, rs in runs.items():
        summary["median_uploads_per_s"][key] = round(
            statistics.median(r["uploads_per_s"] for r in rs), 1
        )
    med = summary["median_uploads_per_s"]
    for config in ("one process", "api + worker"):
        quiet, busy = med.get(f"{config}, quiet"), med.get(f"{config}, media")
        if quiet and busy:
            summary[f"{config}: slowdown"] = round(1 - busy / quiet, 3)
    return summary


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    import aiohttp

    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.2)


def print_part2(summary: dict[str, Any]) -> None:
    print(f"\n{'configuration':<28} {'small uploads/s (median)':>25}")
    for key, value in summary["median_uploads_per_s"].items():
        print(f"{key:<28} {value:>25}")
    for config in ("one process", "api + worker"):
        key = f"{config}: slowdown"
        if key in summary:
            print(
                f"{config}: small uploads/s {-summary[key] * 100:+.1f} % while thumbnailing "
                "(target with a separate worker: no worse than -10 %)"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--videos", type=int, default=50)
    ap.add_argument("--uploads", type=int, default=1500, help="small uploads per part-2 run")
    ap.add_argument("--backlog", type=int, default=60, help="JPEGs being thumbnailed meanwhile")
    ap.add_argument("--rounds", type=int, default=2, help="part-2 rounds")
    ap.add_argument("--quick", action="store_true", help="20 images, 6 videos, 1 short round")
    ap.add_argument("--skip-uploads", action="store_true", help="part 1 only")
    ap.add_argument("--skip-processing", action="store_true", help="part 2 only")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "media-bench")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "media.json")
    args = ap.parse_args()
    if args.quick:
        args.images, args.videos, args.uploads, args.backlog, args.rounds = 20, 6, 400, 20, 1
    for tool in ("ffmpeg", "ffprobe", "vipsthumbnail", TIME):
        if shutil.which(tool) is None:
            print(
                f"{tool} is missing (Debian packages ffmpeg, libvips-tools, time)", file=sys.stderr
            )
            return 2
    jpegs, mp4s = make_fixtures(args.workdir, max(args.images, args.backlog), args.videos)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_start": os.getloadavg(),
        "command": " ".join(sys.argv),
    }
    print(f"{report['cpus']} CPUs, load average {report['load_avg_start']}", flush=True)
    if not args.skip_processing:
        report["processing"] = part1(jpegs[: args.images], mp4s, args.workdir)
        report["ratios"] = print_part1(report["processing"])
        report["load_avg_after_processing"] = os.getloadavg()
        print(f"load average {report['load_avg_after_processing']}", flush=True)
    if not args.skip_uploads:
        print("\nuploads while thumbnails are made:", flush=True)
        report["uploads"] = asyncio.run(
            part2(jpegs, args.workdir, uploads=args.uploads, backlog=args.backlog,
                  rounds=args.rounds)
        )  # fmt: skip
        print_part2(report["uploads"])
    report["load_avg_end"] = os.getloadavg()
    print(f"load average {report['load_avg_end']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
