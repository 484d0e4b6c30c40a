"""The sandboxed runner: CPU, memory and wall-time limits, crashes; grandchildren killed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tusserver.pipeline.media import Limits, Outcome, run_limited
from tusserver.pipeline.media.worker import av_facts, strip_jpeg

GENEROUS = Limits(cpu_seconds=30, memory_bytes=1024**3, wall_seconds=60)


async def _python(code: str, limits: Limits, stdin: bytes = b"") -> object:
    return await run_limited([sys.executable, "-I", "-c", code], stdin, limits)


async def test_answer_and_exit_status() -> None:
    res = await _python(
        "import sys; d = sys.stdin.read(); sys.stdout.write(d.upper()); sys.exit(3)",
        GENEROUS,
        b"hello",
    )
    assert res.outcome is Outcome.OK and res.returncode == 3 and res.stdout == b"HELLO"


async def test_cpu_limit_kills_a_busy_loop() -> None:
    started = time.monotonic()
    res = await _python(
        "import sys; sys.stdin.read()\nwhile True: pass",
        Limits(cpu_seconds=1, memory_bytes=1024**3, wall_seconds=60),
    )
    assert res.outcome is Outcome.CPU, res
    assert "CPU time limit" in res.describe()
    assert time.monotonic() - started < 30


async def test_memory_limit() -> None:
    res = await _python(
        "import sys; sys.stdin.read(); x = bytearray(512 * 1024 * 1024)",
        Limits(cpu_seconds=10, memory_bytes=256 * 1024**2, wall_seconds=60),
    )
    assert res.outcome is Outcome.MEMORY, res
    assert res.describe() == "the decoder exceeded its memory limit"


async def test_limits_are_in_place_before_the_child_reads_its_input() -> None:
    res = await _python(
        "import resource as r, sys; sys.stdin.read(); "
        "print(r.getrlimit(r.RLIMIT_CPU)[0], r.getrlimit(r.RLIMIT_AS)[0])",
        Limits(cpu_seconds=7, memory_bytes=300 * 1024**2, wall_seconds=60),
    )
    assert res.stdout.split() == [b"7", str(300 * 1024**2).encode()]


async def test_the_child_and_its_tools_run_niced() -> None:
    """Decoding yields the cores to the upload path: the child, and what it starts, are
    niced by ``Limits.nice`` relative to the server (19 at most)."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    code = (
        "import os, subprocess, sys; sys.stdin.read(); "
        "print(os.getpriority(os.PRIO_PROCESS, 0)); sys.stdout.flush(); "
        "subprocess.run(['sh', '-c', 'cut -d\\  -f19 /proc/self/stat'])"
    )
    res = await _python(code, GENEROUS)
    assert res.outcome is Outcome.OK, res
    want = str(min(19, own + GENEROUS.nice)).encode()
    assert GENEROUS.nice == 10 and res.stdout.split() == [want, want], res
    res = await _python(
        "import os, sys; sys.stdin.read(); print(os.getpriority(os.PRIO_PROCESS, 0))",
        Limits(cpu_seconds=30, memory_bytes=1024**3, wall_seconds=60, nice=0),
    )
    assert res.stdout.split() == [str(own).encode()], res


async def test_wall_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    code = (
        "import subprocess, sys; sys.stdin.read(); "
        f"p = subprocess.Popen(['sleep', '60']); open({str(pidfile)!r}, 'w').write(str(p.pid)); "
        "p.wait()"
    )
    started = time.monotonic()
    res = await _python(code, Limits(cpu_seconds=10, memory_bytes=1024**3, wall_seconds=1.5))
    assert res.outcome is Outcome.TIMEOUT
    assert time.monotonic() - started < 15
    pid = int(pidfile.read_text())
    for _ in range(100):  # reaped by init shortly after the kill
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split()[2] == "Z":
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the grandchild survived the timeout")


async def test_a_crash_is_reported_with_its_signal() -> None:
    res = await _python(
        "import os, signal, sys; sys.stdin.read(); os.kill(os.getpid(), signal.SIGSEGV)",
        GENEROUS,
    )
    assert res.outcome is Outcome.CRASHED and res.describe() == "the decoder crashed (SIGSEGV)"


def test_av_facts_from_ffprobe_json() -> None:
    info = {
        "format": {"duration": "12.5"},
        "streams": [
            {"codec_type": "video", "codec_name": "mjpeg", "width": 600, "height": 600,
             "disposition": {"attached_pic": 1}},
            {"codec_type": "video", "codec_name": "hevc", "width": 1920, "height": 1080,
             "avg_frame_rate": "30000/1001", "side_data_list": [{"rotation": -90}]},
            {"codec_type": "audio", "codec_name": "aac", "sample_rate": "48000", "channels": 2},
        ],
    }  # fmt: skip
    assert av_facts(info, "mov") == {
        "kind": "video", "container": "mov", "width": 1080, "height": 1920, "duration": 12.5,
        "video_codec": "hevc", "audio_codec": "aac", "frame_rate": 29.97,
    }  # fmt: skip
    cover_only = {"format": {}, "streams": [info["streams"][0], info["streams"][2]]}
    assert av_facts(cover_only, "mp3") == {
        "kind": "audio", "container": "mp3", "duration": None, "audio_codec": "aac",
        "sample_rate": 48000, "channels": 2,
    }  # fmt: skip


def test_strip_jpeg_leaves_other_jpegs_alone() -> None:
    assert strip_jpeg(b"not a jpeg") == b"not a jpeg"
