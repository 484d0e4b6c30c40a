"""Media as odd cameras, scanners and hostile users send it: multi-picture JPEGs, TIFF
orientation, 16-bit greyscale, damaged metadata, reasons that must not name server paths."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from tests.app_fixtures import MakeClient
from tests.media.conftest import FFMPEG, GPS_IFD, gps_exif, needs_ffmpeg
from tests.media.helpers import media_client, thumbnail, upload_file, wait_done


def _mpo(path: Path, exif: Image.Exif | None = None) -> None:
    """A multi-picture JPEG (CIPA DC-007: 3D cameras, and the large preview many cameras
    append through an MPF segment), 640 x 480, left half red, right half blue."""
    first = Image.new("RGB", (640, 480), "red")
    first.paste(Image.new("RGB", (320, 480), "blue"), (320, 0))
    second = Image.new("RGB", (640, 480), "green")
    extra = {"exif": exif} if exif is not None else {}
    first.save(path, "MPO", save_all=True, append_images=[second], **extra)
    with Image.open(path) as im:
        assert (im.format, getattr(im, "n_frames", 1)) == ("MPO", 2)


async def test_a_multi_picture_jpeg_is_a_jpeg(make_client: MakeClient, tmp_path: Path) -> None:
    """libmagic calls it image/jpeg, every viewer shows its first picture; Pillow opens it
    as format "MPO", which the worker did not list: the photo was rejected with "not a valid
    image/jpeg file: image format MPO is not supported"."""
    path = tmp_path / "camera.jpg"
    _mpo(path)
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["detected_type"] == "image/jpeg"
    assert f["status"] == "committed", f["reason"]
    assert f["media"] == {
        "kind": "image", "format": "jpeg", "width": 640, "height": 480, "orientation": 1,
    }  # fmt: skip
    im = await thumbnail(client, f["id"], 256)
    assert im.size == (256, 192)


async def test_strip_location_of_a_multi_picture_jpeg(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """Every picture of the file carries the camera's EXIF, GPS included: none may keep
    it, and the pictures stay where the MP index says they are."""
    path = tmp_path / "camera.jpg"
    _mpo(path, gps_exif(6))
    with Image.open(path) as im:
        for frame in range(getattr(im, "n_frames", 1)):
            im.seek(frame)
            assert GPS_IFD in im.getexif(), frame
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["status"] == "committed", f["reason"]
    assert f["location_stripped"] is True
    assert f["media"]["orientation"] == 6
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert (f["size"], f["sha256"]) == (len(stored), hashlib.sha256(stored).hexdigest())
    with Image.open(io.BytesIO(stored)) as im:
        assert (im.format, getattr(im, "n_frames", 1)) == ("MPO", 2)
        for frame, colour in ((0, (255, 0, 0)), (1, (0, 128, 0))):
            im.seek(frame)
            im.load()
            assert GPS_IFD not in im.getexif(), frame
            assert im.getexif()[0x0112] == 6
            pixel = im.convert("RGB").getpixel((10, 10))
            assert all(abs(a - b) < 8 for a, b in zip(pixel, colour, strict=True)), pixel  # type: ignore[arg-type]


def _tiff(path: Path, orientation: int) -> None:
    """300 x 100 as stored, the left third red, the rest blue."""
    im = Image.new("RGB", (300, 100), "blue")
    im.paste(Image.new("RGB", (100, 100), "red"), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, "TIFF", exif=exif)


async def test_a_tiff_with_an_orientation_is_shown_upright(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """Pillow's TIFF plugin applies the orientation itself (its size at open is the shown
    one, ``load`` turns the pixels); the worker applied it again: a scan stored 300 x 100
    with orientation 6 was reported 300 wide and 100 high, and its thumbnail lay on its
    side (orientation 3: upside down, as stored)."""
    client = await media_client(make_client)
    for orientation, shown, red_at in (
        (6, (100, 300), (50, 10)),  # turned 90 clockwise: the left third is now at the top
        (3, (300, 100), (290, 50)),  # turned 180: the left third is now at the right
        (8, (100, 300), (50, 290)),  # turned 90 anticlockwise: at the bottom
    ):
        path = tmp_path / f"scan-{orientation}.tif"
        _tiff(path, orientation)
        f = await wait_done(client, await upload_file(client, path, content_type="image/tiff"))
        assert f["status"] == "committed", f["reason"]
        media = f["media"]
        assert (media["width"], media["height"], media["orientation"]) == (*shown, orientation)
        im = (await thumbnail(client, f["id"], 1024)).convert("RGB")
        assert im.size == shown
        r, _, b = im.getpixel(red_at)  # type: ignore[misc]
        assert r > 200 and b < 60, (orientation, im.getpixel(red_at))


async def test_a_16_bit_greyscale_png_has_a_grey_thumbnail(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A 16-bit greyscale PNG (scans, depth maps, scientific images) opens in mode I;16;
    converted to RGB, Pillow clips each value above 255: the thumbnail was plain white."""
    path = tmp_path / "scan.png"
    im = Image.new("I;16", (300, 200), 0)
    im.paste(Image.new("I;16", (150, 200), 30_000), (150, 0))  # right: mid grey (/ 65535)
    im.save(path)
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="image/png"))
    assert f["status"] == "committed", f["reason"]
    thumb = (await thumbnail(client, f["id"], 256)).convert("L")
    assert thumb.size == (256, 171)
    left = ImageStat.Stat(thumb.crop((0, 0, 100, 171))).mean[0]
    right = ImageStat.Stat(thumb.crop((156, 0, 256, 171))).mean[0]
    assert left < 10, left
    assert 100 < right < 135, right  # 30000 / 257 = 117


def _exif_with_text_orientation() -> bytes:
    """TIFF-structured EXIF: an Orientation of type ASCII ("x"), and a GPS IFD."""

    def ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
        out = struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            out += struct.pack("<HHI", tag, kind, count) + value
        return out + struct.pack("<I", 0)

    gps_at = 8 + 2 + 2 * 12 + 4
    ifd0 = ifd([(0x0112, 2, 2, b"x\x00\x00\x00"), (GPS_IFD, 4, 1, struct.pack("<I", gps_at))])
    gps = ifd([(1, 2, 2, b"N\x00\x00\x00"), (3, 2, 2, b"E\x00\x00\x00")])
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd0 + gps


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"),
                                           ("WEBP", "image/webp")])  # fmt: skip
async def test_a_damaged_orientation_does_not_hide_the_location(
    make_client: MakeClient, tmp_path: Path, fmt: str, mime: str
) -> None:
    """The orientation and the GPS pointer were read in one ``try``: an orientation that
    is not a number (here text) made the worker take the photo for one without GPS, and
    with strip_location the location was stored. (Pillow cannot write such an EXIF back:
    it goes whole, the location with it.)"""
    path = tmp_path / "photo.img"
    Image.new("RGB", (64, 48), "red").save(path, fmt, exif=_exif_with_text_orientation())
    with Image.open(path) as im:
        assert GPS_IFD in im.getexif()
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, path, content_type=mime))
    assert f["status"] == "committed", f["reason"]
    assert f["location_stripped"] is True
    assert f["media"]["orientation"] == 1
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert (f["size"], f["sha256"]) == (len(stored), hashlib.sha256(stored).hexdigest())
    with Image.open(io.BytesIO(stored)) as im:
        im.load()
        assert im.size == (64, 48)
        assert GPS_IFD not in im.getexif()


async def test_the_reason_of_an_undecodable_image_names_no_server_path(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """Pillow's "cannot identify image file '/path/...'" went into the reason as it was:
    the user saw where the server keeps its uploads (the chunk store's directory, or the
    media work directory)."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)  # a JPEG's first bytes, nothing more
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["detected_type"] == "image/jpeg"
    assert f["status"] == "rejected"
    assert "cannot be decoded" in f["reason"]
    assert "/" not in f["reason"].replace("image/jpeg", ""), f["reason"]


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG or "ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True,
                   timeout=60)  # fmt: skip


def _live_webm(path: Path, seconds: int, *, live: bool = True) -> None:
    """A WebM as a browser's MediaRecorder writes it (Uppy's webcam): streamed, so no
    duration in its header (``live=False``: an ordinary one)."""
    subprocess.run(
        [FFMPEG or "ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         "testsrc=size=160x120:rate=10", "-t", str(seconds), "-c:v", "libvpx", "-b:v", "50k",
         "-deadline", "realtime", "-cpu-used", "8", "-live", str(int(live)), "-f", "webm",
         str(path)],
        check=True, timeout=60,
    )  # fmt: skip


@needs_ffmpeg
async def test_a_video_without_a_declared_duration_is_measured(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """ffprobe gives no duration for a streamed WebM: the file's duration was null, and
    ``max_media_duration`` let a recording of any length through."""
    path = tmp_path / "webcam.webm"
    _live_webm(path, 30)
    client = await media_client(make_client, max_media_duration=10)
    f = await wait_done(client, await upload_file(client, path, content_type="video/webm"))
    assert f["status"] == "rejected", f["media"]
    assert re.fullmatch(r"video lasts (29\.9|30)[0-9.]* s; at most 10 s are accepted", f["reason"])
    short = tmp_path / "short.webm"
    _live_webm(short, 3)
    f = await wait_done(client, await upload_file(client, short, content_type="video/webm"))
    assert f["status"] == "committed", f["reason"]
    assert 2.9 <= f["media"]["duration"] <= 3.1, f["media"]
    assert f["thumbnail_sizes"] == [256, 1024]


@needs_ffmpeg
async def test_a_video_whose_header_understates_its_duration_is_measured(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A WebM of 30 s whose Segment Duration says 1 s: max_media_duration trusted the
    header and let it through."""
    path = tmp_path / "long.webm"
    _live_webm(path, 30, live=False)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88") + 3  # Duration, an 8-byte float (in milliseconds)
    assert struct.unpack(">d", data[at : at + 8]) == (30_000.0,)
    data[at : at + 8] = struct.pack(">d", 1000.0)
    path.write_bytes(bytes(data))
    client = await media_client(make_client, max_media_duration=10)
    f = await wait_done(client, await upload_file(client, path, content_type="video/webm"))
    assert f["status"] == "rejected", f["media"]
    assert re.fullmatch(r"video lasts (29\.9|30)[0-9.]* s; at most 10 s are accepted", f["reason"])


@needs_ffmpeg
async def test_a_video_cut_short_is_rejected(make_client: MakeClient, tmp_path: Path) -> None:
    """Half an MP4 whose index comes first (``+faststart``, as made for the web) and half a
    WebM: their headers parse and the poster frame decodes, so they were committed as
    whole videos of 5 s, that stop halfway when played."""
    mp4 = tmp_path / "web.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "5", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
            str(mp4))  # fmt: skip
    webm = tmp_path / "clip.webm"
    _live_webm(webm, 5, live=False)
    client = await media_client(make_client)
    for path, mime in ((mp4, "video/mp4"), (webm, "video/webm")):
        whole = path.read_bytes()
        f = await wait_done(client, await upload_file(client, path, content_type=mime))
        assert f["status"] == "committed", f["reason"]
        cut = tmp_path / f"cut-{path.name}"
        cut.write_bytes(whole[: len(whole) // 2])
        f = await wait_done(client, await upload_file(client, cut, content_type=mime))
        assert f["detected_type"] == mime
        assert f["status"] == "rejected", f["media"]
        assert f["reason"].startswith(f"not a valid {mime} file: truncated"), f["reason"]
        assert f["thumbnail_sizes"] == []


@needs_ffmpeg
async def test_a_very_wide_video_gets_its_thumbnails(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The poster of a 4000 x 2 video scaled to 256 wide is 0 px high: ffmpeg's scale
    filter fails ("Cannot allocate memory"), and the video was rejected with "the decoder
    exceeded its memory limit" (an image of that shape gets its thumbnails)."""
    path = tmp_path / "banner.mp4"
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:size=4000x2:rate=5", "-t", "1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(path))  # fmt: skip
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="video/mp4"))
    assert f["status"] == "committed", f["reason"]
    assert (f["media"]["width"], f["media"]["height"]) == (4000, 2)
    assert (await thumbnail(client, f["id"], 1024)).size == (1024, 1)
    assert (await thumbnail(client, f["id"], 256)).size == (256, 1)


@needs_ffmpeg
async def test_a_video_whose_header_overstates_its_duration_is_measured(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A WebM of 2 s whose Segment Duration says 10 hours was reported as lasting 36000 s
    and refused by max_media_duration."""
    path = tmp_path / "short.webm"
    _live_webm(path, 2, live=False)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88") + 3  # Duration, an 8-byte float (in milliseconds)
    data[at : at + 8] = struct.pack(">d", 36_000_000.0)
    path.write_bytes(bytes(data))
    client = await media_client(make_client, max_media_duration=60)
    f = await wait_done(client, await upload_file(client, path, content_type="video/webm"))
    assert f["status"] == "committed", f["reason"]
    assert 1.9 <= f["media"]["duration"] <= 2.1, f["media"]


@needs_ffmpeg
async def test_an_mpeg_transport_stream_made_by_ffmpeg_is_probed(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """libmagic knows an MPEG-TS only when its first packet is the PAT; ffmpeg (and so HLS
    segments, and recorders built on it) writes the SDT first: the file was typed
    application/octet-stream and stored unprobed, without thumbnails, though MPEG-TS is
    one of the containers docs/media.md lists."""
    path = tmp_path / "recording.ts"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi", "-i", "sine",
            "-t", "2", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-f", "mpegts", str(path))  # fmt: skip
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="video/mp2t"))
    assert f["detected_type"] == "video/mp2t"
    assert f["status"] == "committed", f["reason"]
    assert f["media"]["kind"] == "video" and f["media"]["container"] == "mpegts", f["media"]
    assert f["thumbnail_sizes"] == [256, 1024]


def test_a_read_through_stopped_by_the_cpu_limit_is_a_limit(tmp_path: Path) -> None:
    """ffmpeg catches SIGXCPU (the soft RLIMIT_CPU) and exits by itself with status 255, so
    its death was no limit to the worker: a read-through stopped that way was taken for a
    pass that failed, its measured duration dropped, and the header's duration (none for a
    streamed WebM, or an understated one) was checked against max_media_duration."""
    import textwrap

    tool = tmp_path / "ffmpeg"
    tool.write_text(
        f"#!{sys.executable}\n"
        "import signal, sys\n"
        "signal.signal(signal.SIGXCPU, lambda *_: sys.exit(255))  # as ffmpeg does\n"
        "while True:\n"
        "    pass\n"
    )
    tool.chmod(0o755)
    worker = Path(__file__).resolve().parents[2] / "tusserver" / "pipeline" / "media"
    code = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(worker)!r})
        import worker
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))
        try:
            print(worker._read_through({str(tool)!r}, ["-i", "x"]))
        except worker.MediaRejected as exc:
            print(exc.limit, exc.reason)
    """)
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "cpu the decoder exceeded its CPU time limit", out
