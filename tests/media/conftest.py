"""Media fixtures, made once per test session by real encoders (ffmpeg's lavfi sources, Pillow).

Small on purpose (a few KB to a few hundred KB each) so the media suite stays fast.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")

#: EXIF tags: Orientation, GPS IFD pointer.
ORIENTATION = 0x0112
GPS_IFD = 0x8825
GPS = {1: "N", 2: (52.0, 31.0, 12.5), 3: "E", 4: (13.0, 24.0, 36.0)}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The media suite runs on SQLite (the search suite adds PostgreSQL)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}"


def _ffmpeg(*args: str) -> None:
    assert FFMPEG is not None
    subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-y", *args],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def gps_exif(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    exif[GPS_IFD] = dict(GPS)
    return exif


def _gradient(width: int, height: int) -> Image.Image:
    im = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), im))


def _huge_png(path: Path, width: int, height: int, *, bit_depth: int = 8) -> None:
    """A valid PNG of the given size, written row by row (never the whole image in memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)
    data = bytearray()
    for _ in range(height):
        data += comp.compress(row)
    data += comp.flush()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr))
        fh.write(chunk(b"IDAT", bytes(data)) + chunk(b"IEND", b""))


def _declared_only_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height, with one tiny (wrong) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def make_media(root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}

    def p(name: str) -> Path:
        out[name] = root / name
        return out[name]

    # Images: stored 1600 x 1200 with orientation 6 (shown 1200 x 1600), GPS tags.
    _gradient(1600, 1200).save(p("photo.jpg"), quality=85, exif=gps_exif(6))
    _gradient(300, 200).save(p("image.png"))
    _gradient(300, 200).save(p("gps.png"), exif=gps_exif())
    _gradient(200, 300).save(p("image.webp"), quality=80)
    _gradient(200, 300).save(p("gps.webp"), quality=80, exif=gps_exif())
    _gradient(120, 120).convert("P").save(p("image.gif"))
    data = out["photo.jpg"].read_bytes()
    p("cut.jpg").write_bytes(data[: len(data) // 2])
    _declared_only_png(p("bomb.png"), 50_000, 50_000)
    # 20000 x 20000 1-bit: 50 KB on disk, 400 MB once decoded (Pillow keeps 8 bits a pixel).
    _huge_png(p("heavy.png"), 20_000, 20_000, bit_depth=1)
    # Bytes libmagic calls application/octet-stream: seeded, since fresh random bytes now
    # and then begin like a format ("MZ": application/x-dosexec failed a run).
    p("random.mp4").write_bytes(random.Random(0).randbytes(64 * 1024))
    if FFMPEG is not None:
        _ffmpeg(
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
            "-i", "sine=frequency=440:sample_rate=44100", "-t", "2", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
            "-metadata", "location=+52.5200+013.4050/", str(p("video.mp4")),
        )  # fmt: skip
        _ffmpeg(
            "-f", "lavfi", "-i", "testsrc=size=240x320:rate=24", "-f", "lavfi",
            "-i", "sine=frequency=330:sample_rate=48000", "-t", "1", "-c:v", "libvpx-vp9",
            "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-c:a", "libopus",
            "-shortest", str(p("video.webm")),
        )  # fmt: skip
        _ffmpeg(
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2",
            "-c:a", "libmp3lame", "-b:a", "64k", str(p("audio.mp3")),
        )  # fmt: skip
        _ffmpeg(
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050", "-t", "1",
            "-ac", "2", "-c:a", "pcm_s16le", str(p("audio.wav")),
        )  # fmt: skip
        video = out["video.mp4"].read_bytes()
        p("cut.mp4").write_bytes(video[: len(video) // 2])
    return out


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> path of each fixture (video and audio only when ffmpeg is installed)."""
    return make_media(tmp_path_factory.mktemp("media"))
