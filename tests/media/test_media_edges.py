"""Media edges: files that reference other files, locations in odd places, posters of odd
videos, large images, damaged metadata, thumbnails left behind."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storage_backends.base import StorageError
from tests.app_fixtures import MakeClient
from tests.media.conftest import FFMPEG, GPS_IFD, gps_exif, needs_ffmpeg
from tests.media.helpers import media_client, upload_file, wait_done
from tusserver.app import RUNTIME
from tusserver.pipeline.media import probe_kind, step, thumbnail_key
from tusserver.pipeline.media.sandbox import Limits
from tusserver.pipeline.media.step import MediaProcessor, MediaTools
from tusserver.pipeline.validators import Candidate


def _ffmpeg(*args: str) -> None:
    assert FFMPEG is not None
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


@needs_ffmpeg
async def test_a_playlist_disguised_as_audio_makes_the_decoder_read_server_files(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """An HLS playlist padded so that libmagic sees a ProTracker module (``M.K.`` at offset
    1080: ``audio/x-mod``) is handed to ffprobe/ffmpeg without a forced demuxer; ffmpeg
    probes it as HLS and opens the absolute path it names: a file of the server (here a
    "secret" video outside the upload) is probed, and its frame becomes the upload's
    thumbnail."""
    secret = tmp_path / "elsewhere" / "secret.mp4"
    secret.parent.mkdir()
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(secret))  # fmt: skip
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n#"
    ).encode()
    payload = playlist.ljust(1080, b"#") + b"M.K." + b"\n" * 100
    upload = tmp_path / "song.mod"
    upload.write_bytes(payload)
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, upload))
    assert f["detected_type"] == "audio/x-mod"
    # Nothing outside the upload may be read: the file is either not probed or rejected.
    assert f["media"] is None, f"decoder read a server file: {f['media']}"


_XMP_GPS = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="52,31.2N" '
    b'exif:GPSLongitude="13,24.6E"/></rdf:RDF></x:xmpmeta>'
)


async def test_strip_location_drops_xmp_gps_of_a_jpeg_without_exif_gps(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """strip_jpeg drops an XMP packet naming GPS, but it only runs when the EXIF has a GPS
    IFD (``has_gps``): a JPEG whose location is in its XMP only is stored with it."""
    path = tmp_path / "xmp.jpg"
    Image.new("RGB", (64, 48), "red").save(path, xmp=_XMP_GPS)
    assert b"GPSLatitude" in path.read_bytes()
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["status"] == "committed", f["reason"]
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert b"GPSLatitude" not in stored, "the XMP location was stored"


async def test_strip_location_of_a_jpeg_with_a_fill_byte_before_its_exif(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """JPEG markers may be preceded by 0xFF fill bytes (ITU T.81 B.1.1.2); Pillow reads
    such a file and finds its GPS, but strip_jpeg takes the fill byte for a marker, reads
    a bogus length and copies the rest untouched: the GPS is stored."""

    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((200, 100)).save(buf, "JPEG", exif=gps_exif())
    data = buf.getvalue()
    at = data.index(b"\xff\xe1")  # the EXIF APP1 marker
    path = tmp_path / "fill.jpg"
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with Image.open(path) as im:
        im.load()
        assert GPS_IFD in im.getexif()
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["status"] == "committed", f["reason"]
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    with Image.open(io.BytesIO(stored)) as im:
        assert GPS_IFD not in im.getexif(), "the GPS IFD was stored"
    assert f["location_stripped"] is True


@needs_ffmpeg
async def test_strip_location_of_an_mp4_with_a_timecode_track_is_not_a_rejection(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The location remux maps every stream (``-map 0 -c copy -f mp4``); the mp4 muxer
    cannot write a tmcd data track (cameras, drones), so ffmpeg fails and a valid video
    is rejected as "not a valid video/mp4 file"."""
    path = tmp_path / "camera.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-timecode", "01:00:00:00",
            "-metadata", "location=+52.5200+013.4050/", str(path))  # fmt: skip
    client = await media_client(make_client)
    plain = await wait_done(client, await upload_file(client, path, content_type="video/mp4"))
    assert plain["status"] == "committed", plain["reason"]  # valid without stripping
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, path, content_type="video/mp4"))
    assert f["status"] == "committed", f["reason"]


@needs_ffmpeg
async def test_video_track_shorter_than_a_tenth_of_the_file_gets_a_real_poster(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The poster is taken at a tenth of the container's duration; when the video track
    ends before that (a short clip or a still frame with a long audio track), ffmpeg
    writes an 8-byte "WebP" with no image. The worker checks only that the file is not
    empty: the garbage is stored and served as the thumbnail."""
    video, audio, both = tmp_path / "v.mp4", tmp_path / "a.m4a", tmp_path / "clip.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "0.5", "-c:v",
            "libx264", "-pix_fmt", "yuv420p", str(video))  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "20",
            "-c:a", "aac", str(audio))  # fmt: skip
    _ffmpeg("-i", str(video), "-i", str(audio), "-map", "0", "-map", "1", "-c", "copy",
            str(both))  # fmt: skip
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, both, content_type="video/mp4"))
    assert f["status"] == "committed", f["reason"]
    assert f["thumbnail_sizes"] == [256, 1024]
    resp = await client.get(f"/api/v1/file/{f['id']}/thumbnail?size=256")
    assert resp.status == 200
    body = await resp.read()
    with Image.open(io.BytesIO(body)) as im:  # UnidentifiedImageError: 8 bytes, no image
        im.load()
        assert im.size == (256, 192)


@needs_ffmpeg
async def test_a_large_stripped_copy_is_not_written_to_memory(
    media: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies larger than ``_SHM_MAX`` go to ``work_dir`` on disk, so /dev/shm (RAM, not
    bounded by RLIMIT_AS) holds no upload-sized file. But with a local source the work dir
    is always /dev/shm, and the location-free remux of an MP4 is as large as the upload:
    a multi-GB video with a location tag is written whole into memory."""

    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    source = media["video.mp4"]  # carries a location tag
    monkeypatch.setattr(step, "_SHM_MAX", 1024)  # "large": anything above 1 KiB
    proc = MediaProcessor(
        tools=MediaTools.detect(),
        limits=Limits(cpu_seconds=30, memory_bytes=1024**3, wall_seconds=60),
        work_dir=tmp_path / "work",
        max_pixels=0,
        max_duration=0,
        strip_location=True,
    )
    candidate = Candidate(
        size=source.stat().st_size, sha256="", head=b"", detected_type="video/mp4",
        declared_type=None, metadata={}, open=None,  # type: ignore[arg-type]
    )  # fmt: skip
    outcome = await proc.process(candidate, source)
    try:
        assert outcome.stripped is not None
        assert outcome.stripped.stat().st_size > 1024
        assert not outcome.stripped.is_relative_to("/dev/shm"), outcome.stripped
    finally:
        await outcome.cleanup()


@needs_ffmpeg
async def test_anamorphic_video_poster_keeps_the_display_aspect(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """HDV/DVD-style video stores 1440 x 1080 pixels with a sample aspect ratio of 4:3 and
    is shown 16:9 (1920 x 1080). ``_fit`` scales storage pixels and ignores the SAR: the
    poster is 4:3, squashed, and the facts say 1440 x 1080."""
    path = tmp_path / "hdv.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=1440x1080:rate=25", "-t", "1",
            "-vf", "setsar=4/3", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))  # fmt: skip
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="video/mp4"))
    assert f["status"] == "committed", f["reason"]
    resp = await client.get(f"/api/v1/file/{f['id']}/thumbnail?size=256")
    with Image.open(io.BytesIO(await resp.read())) as im:
        assert im.size == (256, 144), f"poster {im.size}, shown aspect is 16:9"
    assert (f["media"]["width"], f["media"]["height"]) == (1920, 1080)  # as shown


async def test_an_image_within_max_image_pixels_fits_the_default_memory_limit(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """Defaults: max_image_pixels 100,000,000 and media_memory_limit 1 GiB. A 10000 x 10000
    RGB PNG (exactly the pixel limit, 300 KB on disk) is decoded (400 MB, Pillow keeps RGB
    in 4 bytes), then copied by exif_transpose (a full copy even at orientation 1), then
    again by _thumbnails' ``current.copy()``: 1.2 GB, so an image the configuration
    accepts is rejected as "the decoder exceeded its memory limit"."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    width = height = 10_000
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (width * 3)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path = tmp_path / "scan.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    client = await media_client(make_client)  # default max_image_pixels and memory limit
    f = await wait_done(client, await upload_file(client, path, content_type="image/png"))
    assert f["status"] == "committed", f["reason"]
    assert (f["media"]["width"], f["media"]["height"]) == (10_000, 10_000)


async def test_a_rotated_photo_with_a_damaged_gps_ifd_is_not_rejected(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """The pixels decode; only the EXIF's GPS IFD is damaged (its entry count). Pillow reads
    such EXIF leniently, but ``ImageOps.exif_transpose`` (used for the upright thumbnail of
    an orientation 2-8 photo) re-serializes the EXIF and raises TypeError; nothing in the
    worker catches it, the worker dies with a traceback and the photo is rejected as
    "the decoder failed: TypeError: ..."."""

    buf = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((64, 48)).save(buf, "JPEG", exif=gps_exif(6))
    data = bytearray(buf.getvalue())
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff + 38] = 0x06  # the GPS IFD's entry count, high byte: 4 -> 1540 entries
    path = tmp_path / "phone.jpg"
    path.write_bytes(bytes(data))
    with Image.open(path) as im:
        im.load()  # the image itself is fine
        assert im.getexif()[0x0112] == 6
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path, content_type="image/jpeg"))
    assert f["status"] == "committed", f["reason"]
    assert f["media"]["orientation"] == 6


async def test_a_thumbnail_stored_before_the_next_one_failed_is_deleted_with_the_file(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    """store_thumbnails puts the 256 then the 1024; the row learns of them only after both
    (``_store_media``). When the 1024 is refused until the attempts run out, the failed
    row records no thumbnails, so deleting the file leaves the 256 in the object store
    (uncounted in the usage, never removed)."""

    client = await media_client(make_client, pipeline_max_attempts=1)
    rt = client.server.app[RUNTIME]
    objects = rt.pipeline.objects
    put_file = objects.put_file

    async def refusing(key: str, *args: Any, **kwargs: Any) -> None:
        if key.endswith(".thumb-1024.webp"):
            raise StorageError("the object store refuses")
        await put_file(key, *args, **kwargs)

    objects.put_file = refusing  # type: ignore[method-assign]
    f = await wait_done(
        client, await upload_file(client, media["image.png"], content_type="image/png")
    )
    assert f["status"] == "failed", f
    stored = await rt.files.get(f["id"])
    assert stored is not None and stored.storage_key
    key = thumbnail_key(stored.storage_key, 256)
    assert await objects.stat(key) is not None
    assert (await client.delete(f"/api/v1/file/{f['id']}")).status == 204
    assert await objects.stat(key) is None, "orphaned thumbnail left in the object store"


def _playlist_naming(target: Path, dest: Path) -> Path:
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n#"
    ).encode()
    dest.write_bytes(playlist.ljust(1080, b"#") + b"M.K." + b"\n" * 100)  # audio/x-mod
    return dest


@needs_ffmpeg
async def test_the_rejection_of_a_playlist_does_not_tell_which_server_files_exist(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """A playlist is refused before any file it names is opened: the reason is the same
    whether the path it names holds media or nothing (else it tells files of the server)."""
    secret = tmp_path / "elsewhere" / "secret.mp4"
    secret.parent.mkdir()
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "2", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(secret))  # fmt: skip
    client = await media_client(make_client)
    reasons = []
    for i, target in enumerate([secret, tmp_path / "elsewhere" / "missing.mp4"]):
        up = _playlist_naming(target, tmp_path / f"song{i}.mod")
        f = await wait_done(client, await upload_file(client, up))
        assert f["detected_type"] == "audio/x-mod"
        assert f["media"] is None
        reasons.append(f["reason"])
    assert reasons[0] == reasons[1], reasons


@pytest.mark.parametrize(
    ("mime", "kind"),
    [("audio/x-syx", None), ("audio/x-mp4a-latm", None), ("audio/x-mod", None),
     ("audio/mpeg", "av"), ("video/mp4", "av"), ("audio/x-hx-aac-adts", "av"),
     ("image/png", "image"), ("application/octet-stream", None)],
)  # fmt: skip
def test_only_media_containers_in_use_are_probed(mime: str, kind: str | None) -> None:
    """libmagic calls 1 random or encrypted file in 256 ``audio/x-syx`` (a first byte of
    0xF0): such weak audio types are stored as they are, not refused as media that does
    not decode."""
    assert probe_kind(mime) == kind


async def test_binary_data_typed_as_weak_audio_is_stored(
    make_client: MakeClient, tmp_path: Path
) -> None:
    import magic

    for _ in range(20_000):  # random bytes libmagic takes for audio (about 1 in 256)
        blob = os.urandom(20_000)
        detected = magic.from_buffer(blob, mime=True)
        if detected.startswith("audio/") and probe_kind(detected) is None:
            break
    else:
        pytest.fail("no random block typed as audio")
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, path))
    assert f["detected_type"] == detected
    assert (f["status"], f["media"]) == ("committed", None), f["reason"]
