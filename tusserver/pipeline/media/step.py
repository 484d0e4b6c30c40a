"""The pipeline's media step: probe, validate and thumbnail one file in a limited subprocess.

Nothing of a file's content is decoded in the server's process: the step hands the file's
path to :mod:`.worker` started through :func:`.sandbox.run_limited` (one subprocess per file,
CPU, address-space and wall-time limits) and reads back a small JSON answer. A file whose
decoder fails, crashes or exceeds the CPU or memory limit is rejected with a reason; one that
exceeds the wall-time limit is retried (the machine may just be busy) and fails after the
pipeline's attempts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ..validators import Candidate, Verdict
from .probe import MediaFacts, container_of, probe_kind
from .sandbox import Limits, Outcome, run_limited
from .thumbnails import THUMBNAIL_SIZES

__all__ = ["MediaOutcome", "MediaProcessor", "MediaTools"]

_log = structlog.get_logger("tusserver.media")
WORKER = Path(__file__).resolve().parent / "worker.py"
#: Memory-backed file system for the subprocess's files (source copy, thumbnails, stripped copy):
#: nothing decrypted from an encrypted store reaches the disk. Copies of larger sources go to
#: ``work_dir`` on disk instead (deleted as soon as the file is done).
_SHM = Path("/dev/shm")  # noqa: S108 - only ever a parent of mkdtemp's private (0700) dirs
_SHM_MAX = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MediaTools:
    """Which decoders this machine has (found once, at start)."""

    pillow: bool
    ffprobe: str | None
    ffmpeg: str | None
    #: The directory Pillow is imported from: the worker runs without ``site`` (``-S``:
    #: no site-packages, no ``.pth`` files to process at each start) and is given just that.
    pillow_path: str | None = None

    @classmethod
    def detect(cls) -> MediaTools:
        ffprobe, ffmpeg = shutil.which("ffprobe"), shutil.which("ffmpeg")
        both = ffprobe is not None and ffmpeg is not None
        spec = importlib.util.find_spec("PIL")
        locations = list(spec.submodule_search_locations or ()) if spec is not None else []
        return cls(
            pillow=spec is not None,
            ffprobe=ffprobe if both else None,
            ffmpeg=ffmpeg if both else None,
            pillow_path=str(Path(locations[0]).parent) if locations else None,
        )

    @property
    def images(self) -> bool:
        return self.pillow

    @property
    def video(self) -> bool:
        return self.ffprobe is not None and self.pillow

    def problems(self) -> list[str]:
        """What is off and why (empty when everything is on)."""
        out = []
        if not self.pillow:
            out.append(
                "image probing is off: Pillow is not installed (pip install pillow); images "
                "are stored without checks or thumbnails"
            )
        if self.ffprobe is None:
            out.append(
                "video/audio probing is off: ffprobe/ffmpeg not found on PATH (apt-get install "
                "ffmpeg); video and audio are stored without checks or thumbnails"
            )
        return out


@dataclass
class MediaOutcome:
    verdict: Verdict
    facts: MediaFacts | None = None
    #: size -> local WebP file (moved into the object store by the pipeline)
    thumbnails: dict[int, Path] = field(default_factory=dict)
    #: A copy of the file without location metadata, to store instead of the upload.
    stripped: Path | None = None
    workdir: Path | None = None

    async def cleanup(self) -> None:
        if self.workdir is not None:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)
            self.workdir = None


#: Demuxers never used on an upload: they open other files or streams named in the content
#: (playlists, lists of files, session descriptions, master formats) or run scripts; the
#: devices are left out too (see :func:`direct_demuxers`).
_INDIRECT_DEMUXERS = frozenset(
    {"hls", "applehttp", "dash", "concat", "imf", "sdp", "rtp", "rtsp", "srtp", "image2",
     "ffmetadata", "webm_dash_manifest", "avisynth", "vapoursynth", "lavfi"}
)  # fmt: skip


def direct_demuxers(ffprobe: str) -> str:
    """The demuxers ffprobe and ffmpeg may use on an upload (their ``-format_whitelist``):
    every one this build has, but devices and :data:`_INDIRECT_DEMUXERS`."""

    def names(option: str) -> set[str]:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-hide_banner", option],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode("utf-8", "replace")
        found: set[str] = set()
        for line in out.split("--", 1)[-1].splitlines():
            fields = line.split()
            if len(fields) >= 2 and "D" in fields[0]:
                found.update(fields[1].split(","))
        return found

    allowed = names("-demuxers") - names("-devices") - _INDIRECT_DEMUXERS
    return ",".join(sorted(allowed))


class MediaProcessor:
    name = "media"

    def __init__(
        self,
        *,
        tools: MediaTools,
        limits: Limits,
        work_dir: Path,
        max_pixels: int,
        max_duration: float,
        strip_location: bool,
        sizes: tuple[int, ...] = THUMBNAIL_SIZES,
        python: str = sys.executable,
    ) -> None:
        self.tools = tools
        self._limits = limits
        self._work_dir = work_dir
        self._max_pixels = max_pixels
        self._max_duration = max_duration
        self._strip = strip_location
        self._sizes = sizes
        self._python = python
        #: :func:`direct_demuxers`, found when the first video or audio file comes.
        self._demuxers: str | None = None

    def wants(self, detected_type: str) -> bool:
        kind = probe_kind(detected_type)
        if kind == "image":
            return self.tools.images
        if kind == "av":
            return self.tools.video
        return False

    async def process(
        self,
        candidate: Candidate,
        source: Path | None,
        open_source: Callable[[], AsyncIterator[bytes]] | None = None,
    ) -> MediaOutcome:
        """Probe ``source`` (a local file with the bytes), or a copy made from ``open_source``
        (default: ``candidate.open``) when the bytes are not a plain local file."""
        mime = candidate.detected_type
        kind = probe_kind(mime)
        if kind is None or not self.wants(mime):
            return MediaOutcome(Verdict.accept())
        parent = self._work_dir
        # Memory (tmpfs) only for files that are small: a copy of the file, or a copy
        # stripped of its location, is as large as the file.
        if candidate.size <= _SHM_MAX and os.access(_SHM, os.W_OK):
            parent = _SHM
        await asyncio.to_thread(parent.mkdir, parents=True, exist_ok=True)
        workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "tusserver-media-", parent))
        outcome = MediaOutcome(Verdict.accept(), workdir=workdir)
        try:
            if source is None:
                source = workdir / "source"
                await _copy(open_source or candidate.open, source)
            if kind == "av" and self._demuxers is None and self.tools.ffprobe is not None:
                self._demuxers = await asyncio.to_thread(direct_demuxers, self.tools.ffprobe)
            request: dict[str, Any] = {
                "path": str(source),
                "kind": kind,
                "mime": mime,
                "container": container_of(mime),
                "max_pixels": self._max_pixels,
                "thumb_dir": str(workdir),
                "sizes": list(self._sizes),
                "strip_to": str(workdir / "stripped") if self._strip else None,
                "ffprobe": self.tools.ffprobe,
                "ffmpeg": self.tools.ffmpeg,
                "demuxers": self._demuxers,
            }
            argv = [self._python, "-I", "-S", str(WORKER)]
            if self.tools.pillow_path is not None:
                argv.append(self.tools.pillow_path)
            result = await run_limited(
                argv,
                json.dumps(request).encode(),
                self._limits,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
            outcome.verdict = self._verdict(result, mime, outcome)
        except BaseException:
            await outcome.cleanup()
            raise
        if outcome.verdict.kind.value != "accept":
            await outcome.cleanup()
        return outcome

    def _verdict(self, result: Any, mime: str, outcome: MediaOutcome) -> Verdict:
        if result.outcome is Outcome.TIMEOUT:
            return Verdict.retry(f"media probe: {result.describe()}")
        if result.outcome is not Outcome.OK:
            _log.warning("media decoder stopped", outcome=result.outcome.value, type=mime)
            return Verdict.reject(f"{mime} rejected: {result.describe()}")
        try:
            answer = json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = result.stderr.decode("utf-8", "replace").strip().splitlines()
            _log.warning("media worker failed", type=mime, stderr=tail[-3:])
            detail = f": {tail[-1][:200]}" if tail else ""
            return Verdict.reject(f"{mime} rejected: the decoder failed{detail}")
        if not answer.get("ok"):
            reason = str(answer.get("reason") or "cannot be decoded")
            if answer.get("limit"):
                return Verdict.reject(f"{mime} rejected: {reason}")
            return Verdict.reject(f"not a valid {mime} file: {reason}")
        facts = MediaFacts(answer["media"])
        if (
            self._max_duration
            and facts.duration is not None
            and facts.duration > self._max_duration
        ):
            return Verdict.reject(
                f"{facts.kind} lasts {facts.duration:g} s; at most {self._max_duration:g} s "
                "are accepted"
            )
        outcome.facts = facts
        outcome.thumbnails = {int(k): Path(v) for k, v in (answer.get("thumbnails") or {}).items()}
        if answer.get("stripped"):
            outcome.stripped = Path(answer["stripped"])
        return Verdict.accept()


async def _copy(open_source: Callable[[], AsyncIterator[bytes]], dest: Path) -> None:
    """Stream the bytes to a local file (for stores whose bytes are not a plain file)."""
    fh = await asyncio.to_thread(open, dest, "wb")
    try:
        async for block in open_source():
            await asyncio.to_thread(fh.write, block)
    finally:
        await asyncio.to_thread(fh.close)
