"""Hostile media against the real server: a decoder that exceeds its memory or time limit is
stopped, the file rejected or failed, the server keeps serving and other files keep flowing.
Missing tools turn probing off, said in the log and by `tusserver check`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.app_fixtures import MakeClient
from tests.media.conftest import needs_ffmpeg
from tests.media.helpers import media_client, upload_file, wait_done
from tests.ops.helpers import describe, run
from tusserver.app import RUNTIME


async def test_decoder_over_its_memory_limit_is_rejected_and_the_server_stays_up(
    make_client: MakeClient, media: dict[str, Path], tmp_path: Path
) -> None:
    # 20000 x 20000 pixels (50 KB of PNG) decode to 400 MB: past a 160 MiB address space.
    client = await media_client(
        make_client, max_image_pixels=0, media_memory_limit=160 * 1024 * 1024
    )
    heavy = await upload_file(client, media["heavy.png"], content_type="image/png")
    small = await upload_file(client, media["image.png"], content_type="image/png")
    f = await wait_done(client, heavy)
    assert f["status"] == "rejected"
    assert f["reason"] == "image/png rejected: the decoder exceeded its memory limit"
    ok = await wait_done(client, small)
    assert ok["status"] == "committed" and ok["media"]["width"] == 300
    assert (await client.get("/healthz")).status == 200


async def test_decoder_over_its_time_limit_fails_after_retries(
    make_client: MakeClient, media: dict[str, Path], tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not media: never given to a decoder\n")
    client = await media_client(
        make_client,
        media_timeout=0.001,  # no decoder can even start in a millisecond
        pipeline_max_attempts=2,
        pipeline_retry_base=0.05,
    )
    stuck = await upload_file(client, media["image.png"], content_type="image/png")
    plain = await upload_file(client, text, content_type="text/plain")
    assert (await wait_done(client, plain))["status"] == "committed"
    f = await wait_done(client, stuck)
    assert f["status"] == "failed"
    assert "gave up after 2 attempts" in f["reason"]
    assert "the decoder exceeded its time limit" in f["reason"]
    assert (await client.get("/healthz")).status == 200
    # Nothing of the killed attempts is left in the data directory.
    rt = client.server.app[RUNTIME]
    assert list((rt.config.data_dir / "tmp" / "media").glob("tusserver-media-*")) == []


@needs_ffmpeg
async def test_without_ffmpeg_video_is_stored_unprobed_and_images_still_checked(
    make_client: MakeClient,
    media: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    python_dir = str(Path(os.__file__).parent)
    monkeypatch.setenv("PATH", python_dir)  # nothing of ffmpeg on it
    with capture_logs() as logs:
        client = await media_client(make_client)
    off = [e for e in logs if e["event"] == "media probing is off"]
    assert len(off) == 1 and "ffprobe/ffmpeg not found" in off[0]["detail"]
    assert off[0]["log_level"] == "warning"
    rt = client.server.app[RUNTIME]
    assert rt.pipeline.media is not None and rt.pipeline.media.tools.ffprobe is None
    video = await wait_done(
        client, await upload_file(client, media["video.mp4"], content_type="video/mp4")
    )
    assert video["status"] == "committed" and video["media"] is None
    cut = await wait_done(
        client, await upload_file(client, media["cut.mp4"], content_type="video/mp4")
    )
    assert cut["status"] == "committed"  # nothing can tell it is broken now
    image = await wait_done(
        client, await upload_file(client, media["cut.jpg"], content_type="image/jpeg")
    )
    assert image["status"] == "rejected"


def test_check_says_when_media_probing_is_off(tmp_path: Path) -> None:
    # A process of its own: the CLI configures logging on its standard output.
    res = run(["--data-dir", tmp_path, "check"], {"PATH": str(Path(sys.executable).parent)})
    assert "warn  media: video/audio probing is off: ffprobe/ffmpeg not found" in res.stdout, (
        describe(res)
    )
    assert res.returncode == 0, describe(res)  # a warning, like clamd not configured


def test_check_says_media_probing_is_on(tmp_path: Path) -> None:
    res = run(["--data-dir", tmp_path, "check"])
    assert res.returncode == 0, describe(res)
    assert "ok    media: images (Pillow) and video/audio (ffprobe, ffmpeg) are probed" in res.stdout
