"""Media through the real server: probe facts, rejections and reasons, thumbnails, location
stripping, deletion with the file, previews not counted as downloads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from storage_backends.base import StorageError
from tests.app_fixtures import MakeClient
from tests.media.conftest import FFMPEG, GPS_IFD, needs_ffmpeg
from tests.media.helpers import media_client, thumbnail, upload_file, wait_done
from tests.pipeline.test_local_pipeline import meta
from tests.protocol.test_core import create, head, patch
from tusserver.app import RUNTIME
from tusserver.catalog.schema import audit_log, events
from tusserver.pipeline.media import thumbnail_key


async def test_jpeg_facts_after_exif_orientation_and_thumbnails(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    client = await media_client(make_client)
    file_id = await upload_file(client, media["photo.jpg"], content_type="image/jpeg")
    f = await wait_done(client, file_id)
    assert f["status"] == "committed", f["reason"]
    # Stored 1600 x 1200 with orientation 6: shown 1200 wide, 1600 high.
    assert f["media"] == {
        "kind": "image", "format": "jpeg", "width": 1200, "height": 1600, "orientation": 6,
    }  # fmt: skip
    assert f["thumbnail_sizes"] == [256, 1024]
    assert f["thumbnail_url"] == f"/api/v1/file/{file_id}/thumbnail"
    assert f["location_stripped"] is False
    for size, expected in ((256, (192, 256)), (1024, (768, 1024))):
        im = await thumbnail(client, file_id, size)
        assert im.size == expected  # upright (rotated by the orientation), longest side = size
        assert "exif" not in im.info and not im.getexif()
        assert "xmp" not in im.info and "icc_profile" not in im.info
    # The thumbnail is upright: the source's top row (dark at the left) is now its right column.
    resp = await client.get(f"/api/v1/file/{file_id}/thumbnail?size=256")
    assert resp.headers["Cache-Control"].startswith("private, max-age=")
    etag = resp.headers["ETag"]
    again = await client.get(
        f"/api/v1/file/{file_id}/thumbnail?size=256", headers={"If-None-Match": etag}
    )
    assert again.status == 304
    assert (await client.get(f"/file/{file_id}/thumbnail?size=256")).status == 200
    missing = await client.get(f"/api/v1/file/{file_id}/thumbnail?size=512")
    assert missing.status == 404
    bad = await client.get(f"/api/v1/file/{file_id}/thumbnail?size=big")
    assert bad.status == 400
    # Without strip_location the stored bytes are the upload's, GPS included.
    content = await (await client.get(f"/api/v1/file/{file_id}/content")).read()
    assert content == media["photo.jpg"].read_bytes()


@pytest.mark.parametrize(
    ("name", "mime", "fmt", "size", "thumb"),
    [
        ("image.png", "image/png", "png", (300, 200), (256, 171)),
        ("image.webp", "image/webp", "webp", (200, 300), (171, 256)),
        ("image.gif", "image/gif", "gif", (120, 120), (120, 120)),
    ],
)
async def test_other_image_formats(
    make_client: MakeClient,
    media: dict[str, Path],
    name: str,
    mime: str,
    fmt: str,
    size: tuple[int, int],
    thumb: tuple[int, int],
) -> None:
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, media[name], content_type=mime))
    assert f["status"] == "committed", f["reason"]
    assert f["media"] == {
        "kind": "image", "format": fmt, "width": size[0], "height": size[1], "orientation": 1,
    }  # fmt: skip
    assert (await thumbnail(client, f["id"], 256)).size == thumb
    # Smaller than 1024: never enlarged.
    big = await thumbnail(client, f["id"], 1024)
    assert big.size == size and not big.getexif()


@needs_ffmpeg
async def test_video_and_audio_facts(make_client: MakeClient, media: dict[str, Path]) -> None:
    client = await media_client(make_client)
    ids = {
        name: await upload_file(client, media[name], content_type=mime)
        for name, mime in (
            ("video.mp4", "video/mp4"),
            ("video.webm", "video/webm"),
            ("audio.mp3", "audio/mpeg"),
            ("audio.wav", "audio/wav"),
        )
    }
    got = {name: await wait_done(client, file_id) for name, file_id in ids.items()}
    for name, f in got.items():
        assert f["status"] == "committed", (name, f["reason"])
    mp4 = got["video.mp4"]["media"]
    assert mp4["kind"] == "video" and mp4["container"] == "mp4"
    assert (mp4["width"], mp4["height"]) == (320, 240)
    assert (mp4["video_codec"], mp4["audio_codec"]) == ("h264", "aac")
    assert mp4["frame_rate"] == 25.0
    assert isinstance(mp4["duration"], float) and 1.9 <= mp4["duration"] <= 2.2
    assert set(mp4) == {
        "kind", "container", "width", "height", "duration", "video_codec", "audio_codec",
        "frame_rate",
    }  # fmt: skip
    webm = got["video.webm"]["media"]
    assert (webm["container"], webm["video_codec"], webm["audio_codec"]) == ("webm", "vp9", "opus")
    assert (webm["width"], webm["height"]) == (240, 320)
    mp3 = got["audio.mp3"]["media"]
    assert mp3["kind"] == "audio" and mp3["container"] == "mp3"
    assert (mp3["audio_codec"], mp3["sample_rate"], mp3["channels"]) == ("mp3", 44100, 1)
    assert 1.9 <= mp3["duration"] <= 2.2
    assert set(mp3) == {"kind", "container", "duration", "audio_codec", "sample_rate", "channels"}
    wav = got["audio.wav"]["media"]
    assert (wav["container"], wav["audio_codec"], wav["channels"]) == ("wav", "pcm_s16le", 2)
    assert wav["sample_rate"] == 22050 and abs(wav["duration"] - 1.0) < 0.05
    # Posters of the videos; none for audio.
    im = await thumbnail(client, got["video.mp4"]["id"], 256)
    assert im.size == (256, 192)
    # The video carries a location tag: nothing of its metadata reaches the poster.
    assert not im.getexif() and not {"exif", "xmp", "icc_profile"} & set(im.info)
    assert (await thumbnail(client, got["video.webm"]["id"], 1024)).size == (240, 320)
    assert got["audio.mp3"]["thumbnail_sizes"] == [] and got["audio.mp3"]["thumbnail_url"] is None
    resp = await client.get(f"/api/v1/file/{got['audio.mp3']['id']}/thumbnail?size=256")
    assert resp.status == 404


@pytest.mark.parametrize(
    ("name", "mime", "reason"),
    [
        ("cut.jpg", "image/jpeg", "truncated"),
        ("bomb.png", "image/png", "50000 x 50000 = 2,500,000,000 pixels"),
        pytest.param("cut.mp4", "video/mp4", "moov atom not found", marks=needs_ffmpeg),
    ],
)
async def test_broken_media_is_rejected_with_its_reason(
    make_client: MakeClient, media: dict[str, Path], name: str, mime: str, reason: str
) -> None:
    client = await media_client(make_client)
    f = await wait_done(client, await upload_file(client, media[name], content_type=mime))
    assert f["status"] == "rejected"
    assert reason in f["reason"]
    assert f["reason"].startswith(f"not a valid {mime} file")
    assert f["media"] is None and f["thumbnail_sizes"] == []


async def test_random_bytes_named_mp4_keep_the_type_mismatch(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    client = await media_client(make_client)
    f = await wait_done(
        client, await upload_file(client, media["random.mp4"], content_type="video/mp4")
    )
    assert f["status"] == "committed"
    assert f["declared_type"] == "video/mp4" and f["detected_type"] == "application/octet-stream"
    assert f["type_mismatch"] is True and f["media"] is None


@needs_ffmpeg
async def test_max_media_duration(make_client: MakeClient, media: dict[str, Path]) -> None:
    client = await media_client(make_client, max_media_duration=1.5)
    long = await wait_done(
        client, await upload_file(client, media["video.mp4"], content_type="video/mp4")
    )
    assert long["status"] == "rejected"
    assert "lasts 2 s; at most 1.5 s" in long["reason"]
    short = await wait_done(
        client, await upload_file(client, media["audio.wav"], content_type="audio/wav")
    )
    assert short["status"] == "committed"


async def test_max_image_pixels(make_client: MakeClient, media: dict[str, Path]) -> None:
    client = await media_client(make_client, max_image_pixels=300 * 200 - 1)
    f = await wait_done(
        client, await upload_file(client, media["image.png"], content_type="image/png")
    )
    assert f["status"] == "rejected" and "at most 59,999 are accepted" in f["reason"]


def _has_gps(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        return GPS_IFD in im.getexif()


@pytest.mark.parametrize(
    ("name", "mime"),
    [("photo.jpg", "image/jpeg"), ("gps.png", "image/png"), ("gps.webp", "image/webp")],
)
async def test_strip_location_images(
    make_client: MakeClient, media: dict[str, Path], name: str, mime: str
) -> None:
    original = media[name].read_bytes()
    assert _has_gps(original)
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(client, await upload_file(client, media[name], content_type=mime))
    assert f["status"] == "committed", f["reason"]
    assert f["location_stripped"] is True
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert not _has_gps(stored)
    assert b"GPS" not in stored
    assert f["sha256"] == hashlib.sha256(stored).hexdigest() and f["size"] == len(stored)
    with Image.open(io.BytesIO(stored)) as im, Image.open(io.BytesIO(original)) as before:
        im.load()
        assert im.size == before.size
        # The rest of the metadata stays (the orientation of the photo).
        assert im.getexif().get(0x0112) == before.getexif().get(0x0112)
    if name == "photo.jpg":
        assert f["media"]["orientation"] == 6


async def test_the_upload_url_serves_the_stripped_copy_as_stored(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    """GET on the tus URL of an upload whose file was stored without its location serves the
    stored bytes, with their length: the upload's own length would promise bytes that never
    come (the client waits for them)."""
    client = await media_client(make_client, strip_location=True)
    original = media["gps.png"].read_bytes()
    path = await create(client, len(original), **{"Upload-Metadata": meta(filename="gps.png")})
    assert (await patch(client, path, 0, original)).status == 204
    file_id = (await head(client, path)).headers["X-File-Id"]
    f = await wait_done(client, file_id)
    assert f["status"] == "committed" and f["location_stripped"] is True, f
    assert f["size"] < len(original)
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(f["size"])
    stored = await asyncio.wait_for(resp.read(), 10)
    assert hashlib.sha256(stored).hexdigest() == f["sha256"] and not _has_gps(stored)
    # A range ends where the stored bytes do.
    resp = await client.get(path, headers={"Range": "bytes=-100"})
    assert resp.status == 206, await resp.text()
    assert resp.headers["Content-Range"] == f"bytes {f['size'] - 100}-{f['size'] - 1}/{f['size']}"
    assert await asyncio.wait_for(resp.read(), 10) == stored[-100:]


async def test_a_retry_after_the_stripped_copy_was_recorded_inspects_the_whole_upload(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    """The stripped copy's size and sha256 are recorded before its object is written; when
    that write fails once, the retry inspects the upload as received, whole (not cut at the
    copy's size): its declared sha256 matches, and it is stripped and committed again."""
    client = await media_client(
        make_client, strip_location=True, pipeline_retry_base=0.05, pipeline_retry_max=0.1
    )
    objects = client.server.app[RUNTIME].pipeline.objects
    put_file = objects.put_file
    refused: list[str] = []

    async def once_refusing(key: str, *args: Any, **kwargs: Any) -> None:
        if ".thumb-" not in key and not refused:
            refused.append(key)
            raise StorageError("the object store is briefly unavailable")
        await put_file(key, *args, **kwargs)

    objects.put_file = once_refusing  # type: ignore[method-assign]
    original = media["gps.png"].read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    path = await create(
        client,
        len(original),
        **{"Upload-Metadata": meta(filename="gps.png", filetype="image/png", sha256=digest)},
    )
    assert (await patch(client, path, 0, original)).status == 204
    f = await wait_done(client, (await head(client, path)).headers["X-File-Id"])
    assert refused, "the object store never refused"
    assert f["status"] == "committed", f["reason"]
    assert f["location_stripped"] is True and f["size"] < len(original)
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert not _has_gps(stored) and f["sha256"] == hashlib.sha256(stored).hexdigest()


async def test_strip_location_leaves_files_without_gps_alone(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(
        client, await upload_file(client, media["image.png"], content_type="image/png")
    )
    assert f["status"] == "committed" and f["location_stripped"] is False
    stored = await (await client.get(f"/api/v1/file/{f['id']}/content")).read()
    assert stored == media["image.png"].read_bytes()


@needs_ffmpeg
async def test_strip_location_mp4(
    make_client: MakeClient, media: dict[str, Path], tmp_path: Path
) -> None:
    assert FFMPEG is not None
    ffprobe = str(Path(FFMPEG).with_name("ffprobe"))

    def location_tags(path: Path) -> dict[str, str]:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-print_format", "json", "-show_format", str(path)],
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        tags = json.loads(out.stdout)["format"].get("tags", {})
        return {k: v for k, v in tags.items() if "location" in k.lower() or k.endswith("xyz")}

    assert location_tags(media["video.mp4"])
    client = await media_client(make_client, strip_location=True)
    f = await wait_done(
        client, await upload_file(client, media["video.mp4"], content_type="video/mp4")
    )
    assert f["status"] == "committed", f["reason"]
    assert f["location_stripped"] is True
    stored = tmp_path / "stored.mp4"
    stored.write_bytes(await (await client.get(f"/api/v1/file/{f['id']}/content")).read())
    assert location_tags(stored) == {}
    assert f["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert f["media"]["video_codec"] == "h264"


async def test_thumbnails_are_deleted_with_the_file(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    client = await media_client(make_client)
    f = await wait_done(
        client, await upload_file(client, media["image.png"], content_type="image/png")
    )
    rt = client.server.app[RUNTIME]
    stored = await rt.files.get(f["id"])
    assert stored is not None and stored.storage_key
    keys = [thumbnail_key(stored.storage_key, s) for s in (256, 1024)]
    for key in keys:
        info = await rt.objects.stat(key)
        assert info is not None and info.size > 0
    assert (await client.delete(f"/api/v1/file/{f['id']}")).status == 204
    for key in keys:
        assert await rt.objects.stat(key) is None
    assert (await client.get(f"/api/v1/file/{f['id']}/thumbnail?size=256")).status == 404


async def test_thumbnails_of_a_file_that_failed_after_them_are_deleted_with_it(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    """Thumbnails are stored before the file's own object: when the object store refuses
    the object until the attempts run out, the failed file has thumbnails, and deleting the
    file deletes them (its row gone, nothing else would)."""
    client = await media_client(make_client, pipeline_max_attempts=1)
    rt = client.server.app[RUNTIME]
    objects = rt.pipeline.objects
    put_file = objects.put_file

    async def refusing(key: str, *args: Any, **kwargs: Any) -> None:
        if ".thumb-" not in key:
            raise StorageError("the object store refuses the file")
        await put_file(key, *args, **kwargs)

    objects.put_file = refusing  # type: ignore[method-assign]
    f = await wait_done(
        client, await upload_file(client, media["image.png"], content_type="image/png")
    )
    assert f["status"] == "failed", f
    stored = await rt.files.get(f["id"])
    assert stored is not None and stored.storage_key and stored.thumbnails
    keys = [thumbnail_key(stored.storage_key, int(s)) for s in stored.thumbnails]
    for key in keys:
        assert await objects.stat(key) is not None
    assert (await client.delete(f"/api/v1/file/{f['id']}")).status == 204
    for key in keys:
        assert await objects.stat(key) is None, key


async def _rows(client: Any, table: Any, *conds: Any) -> list[Any]:
    rt = client.server.app[RUNTIME]
    await rt.events.flush()
    await rt.gateway.audit_log.flush()
    async with rt.db.engine.connect() as conn:
        return list((await conn.execute(select(table).where(*conds))).mappings())


async def test_previews_and_thumbnails_are_not_downloads(
    make_client: MakeClient, media: dict[str, Path]
) -> None:
    client = await media_client(make_client)
    f = await wait_done(
        client, await upload_file(client, media["photo.jpg"], content_type="image/jpeg")
    )
    preview = await client.get(f"/api/v1/file/{f['id']}/content?preview=1")
    assert preview.status == 200
    assert preview.headers["Content-Type"] == "image/jpeg"
    assert preview.headers["Content-Disposition"].startswith("inline")
    assert await preview.read() == media["photo.jpg"].read_bytes()
    ranged = await client.get(
        f"/api/v1/file/{f['id']}/content?preview=1", headers={"Range": "bytes=100-199"}
    )
    assert ranged.status == 206 and len(await ranged.read()) == 100
    await thumbnail(client, f["id"], 256)
    assert await _rows(client, events, events.c.kind == "file.downloaded") == []
    assert await _rows(client, audit_log, audit_log.c.action == "file.download") == []
    previews = await _rows(client, audit_log, audit_log.c.action == "file.preview")
    assert len(previews) == 1  # the player's later range requests are not audited again
    # A real download still counts.
    resp = await client.get(f"/api/v1/file/{f['id']}/content")
    await resp.read()
    # Recorded once the response is sent, which may be just after the client has it all.
    for _ in range(100):
        if await _rows(client, events, events.c.kind == "file.downloaded"):
            break
        await asyncio.sleep(0.05)
    assert len(await _rows(client, events, events.c.kind == "file.downloaded")) == 1
    assert len(await _rows(client, audit_log, audit_log.c.action == "file.download")) == 1
