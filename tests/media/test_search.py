"""The media search filters of GET /files, on SQLite and PostgreSQL (real probed files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.app_fixtures import MakeClient
from tests.media.conftest import needs_ffmpeg
from tests.media.helpers import media_client, upload_file, wait_done


@pytest.fixture
def database_url(fresh_database_url: str) -> str:
    """A catalog of the test's own (SQLite and PostgreSQL): searches see only its files."""
    return fresh_database_url


@needs_ffmpeg
async def test_media_filters(make_client: MakeClient, media: dict[str, Path]) -> None:
    client = await media_client(make_client)
    try:
        await _check_filters(client, media)
    finally:
        # The app (and its last analytics flush) stops before the test's database is dropped.
        await client.close()


async def _check_filters(client: Any, media: dict[str, Path]) -> None:
    names = {
        "photo.jpg": "image/jpeg",  # 1200 x 1600 portrait (after orientation 6)
        "image.png": "image/png",  # 300 x 200 landscape
        "image.gif": "image/gif",  # 120 x 120 square
        "video.mp4": "video/mp4",  # 320 x 240 landscape, 2 s
        "video.webm": "video/webm",  # 240 x 320 portrait, 1 s
        "audio.wav": "audio/wav",  # 1 s
    }
    ids = {n: await upload_file(client, media[n], content_type=t) for n, t in names.items()}
    for file_id in ids.values():
        assert (await wait_done(client, file_id))["status"] == "committed"
    by_id = {v: k for k, v in ids.items()}

    async def search(**params: Any) -> set[str]:
        resp = await client.get("/api/v1/files", params={k: str(v) for k, v in params.items()})
        body = await resp.json()
        assert resp.status == 200, body
        return {by_id[f["id"]] for f in body["items"]}

    assert await search(orientation="portrait") == {"photo.jpg", "video.webm"}
    assert await search(orientation="landscape") == {"image.png", "video.mp4"}
    assert await search(orientation="square") == {"image.gif"}
    assert await search(min_width=300) == {"photo.jpg", "image.png", "video.mp4"}
    assert await search(min_height=300) == {"photo.jpg", "video.webm"}
    assert await search(min_width=240, min_height=240) == {"photo.jpg", "video.mp4", "video.webm"}
    assert await search(min_duration=1.5) == {"video.mp4"}
    assert await search(max_duration=1.5) == {"video.webm", "audio.wav"}
    assert await search(min_duration=0.5, max_duration=3, category="video") == {
        "video.mp4",
        "video.webm",
    }
    assert await search(orientation="landscape", sort="name") == {"image.png", "video.mp4"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"orientation": "diagonal"}, "orientation: landscape, portrait or square"),
        ({"min_width": "-1"}, "min_width: must be a whole number"),
        ({"min_height": "1e3"}, "min_height: must be a whole number"),
        ({"min_duration": "abc"}, "min_duration: seconds"),
        ({"max_duration": "1.5.2"}, "max_duration: seconds"),
    ],
)
async def test_bad_media_filters_are_400(
    make_client: MakeClient, params: dict[str, str], message: str
) -> None:
    client = await media_client(make_client)
    resp = await client.get("/api/v1/files", params=params)
    assert resp.status == 400
    assert message in (await resp.json())["message"]
