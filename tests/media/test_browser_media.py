"""Media in the real browser (Debian's Chromium through Playwright, a real server process):
thumbnails show in the files list and in the grid view, a video plays on its details page
(HTML5, Range requests) with its media facts, and watching it is not a download."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.server import ServerProcess
from tests.media.conftest import needs_ffmpeg
from tests.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240), needs_ffmpeg]

USERNAME = "media.viewer"
PASSWORD = "correct horse battery"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path / "data",
        {
            "TUSSERVER_AUTH": "jwt",
            "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2",
            "TUSSERVER_LOG_LEVEL": "warning",
        },
        start=False,
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-test-env.sh", pytrace=False)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"],
            viewport={"width": 1280, "height": 900},
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            await context.close()


async def _upload_as_user(base: str, files: list[tuple[Path, str]]) -> dict[str, str]:
    """Register, log in and upload through the API; wait for the commits. name -> file id."""
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{base}/api/v1/auth/register", json={"username": USERNAME, "password": PASSWORD}
        )
        assert r.status in (200, 201), await r.text()
        r = await http.post(
            f"{base}/api/v1/auth/login", json={"username": USERNAME, "password": PASSWORD}
        )
        auth = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        ids: dict[str, str] = {}
        for path, mime in files:
            form = aiohttp.FormData()
            form.add_field("file", path.read_bytes(), filename=path.name, content_type=mime)
            r = await http.post(f"{base}/api/v1/upload", data=form, headers=auth)
            assert r.status == 201, await r.text()
            ids[path.name] = (await r.json())["files"][0]["file_id"]
        end = time.monotonic() + 60
        for name, file_id in ids.items():
            while True:
                r = await http.get(f"{base}/api/v1/file/{file_id}", headers=auth)
                info = await r.json()
                if info["status"] == "committed":
                    break
                assert info["status"] not in ("rejected", "failed"), (name, info["reason"])
                assert time.monotonic() < end, f"{name} still {info['status']}"
                await asyncio.sleep(0.1)
        return ids


async def _downloads(page: Any) -> int:
    data = await page.evaluate(
        "async () => (await (await fetch('/api/v1/analytics?granularity=day')).json())"
    )
    totals = data.get("totals") or {}
    entry = totals.get("file.downloaded") or {}
    return int(entry.get("count", 0)) if isinstance(entry, dict) else int(entry or 0)


async def test_thumbnails_grid_and_video_playback(
    server: ServerProcess, browser: Any, media: dict[str, Path]
) -> None:
    base = server.url
    await _upload_as_user(
        base,
        [
            (media["photo.jpg"], "image/jpeg"),
            (media["video.webm"], "video/webm"),
            (media["audio.wav"], "audio/wav"),
        ],
    )
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        await page.goto(f"{base}/app/#/signin")
        await page.get_by_label("Username").fill(USERNAME)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", name="Upload files").wait_for()
        await page.goto(f"{base}/app/#/files")
        await page.get_by_role("heading", name="Files").wait_for()

        # Thumbnails (lazy, WebP) instead of icons for the photo and the video; the audio
        # file keeps its icon.
        for name in ("photo.jpg", "video.webm"):
            row = page.locator("tr", has_text=name)
            thumb = row.locator("img.file-thumb")
            await thumb.wait_for()
            assert await thumb.get_attribute("loading") == "lazy"
            await page.wait_for_function(
                "(img) => img.complete && img.naturalWidth > 0", arg=await thumb.element_handle()
            )
        assert await page.locator("tr", has_text="audio.wav").locator("img.file-thumb").count() == 0
        await page.screenshot(path=str(ARTIFACTS / "media-01-list.png"), full_page=True)

        # The grid view: cards with large thumbnails; remembered across pages.
        await page.get_by_role("button", name="Grid").click()
        assert "files-grid" in (await page.locator(".table-wrap").get_attribute("class") or "")
        box = (
            await page.locator("tr", has_text="photo.jpg").locator("img.file-thumb").bounding_box()
        )
        assert box is not None and box["width"] > 100 and box["height"] > 100
        await page.screenshot(path=str(ARTIFACTS / "media-02-grid.png"), full_page=True)

        # The video plays, with its facts beside it.
        await page.get_by_role("link", name="video.webm", exact=True).click()
        video = page.locator("video.preview-media")
        await video.wait_for()
        assert "preview=1" in (await video.get_attribute("src") or "")
        assert "/thumbnail?size=1024" in (await video.get_attribute("poster") or "")
        details = page.locator("dl.meta")
        await details.get_by_text("240 \u00d7 320 px").wait_for()
        await details.get_by_text("vp9").wait_for()
        await details.get_by_text("0:01").wait_for()
        handle = await video.element_handle()
        await page.evaluate("(v) => { v.muted = true; return v.play(); }", handle)
        await page.wait_for_function("(v) => v.currentTime > 0.2 && !v.error", arg=handle)
        await page.screenshot(path=str(ARTIFACTS / "media-03-video.png"), full_page=True)
        await page.evaluate("(v) => v.pause()", handle)

        # Opening the image's details shows it, without counting a download.
        await page.goto(f"{base}/app/#/files")
        await page.get_by_role("link", name="photo.jpg", exact=True).click()
        img = page.locator("img.preview-media")
        await img.wait_for()
        await page.wait_for_function(
            "(i) => i.complete && i.naturalWidth > 0", arg=await img.element_handle()
        )
        await asyncio.sleep(2.5)  # events are written in batches every second
        assert await _downloads(page) == 0
        assert errors == []
    except BaseException:
        await page.screenshot(path=str(ARTIFACTS / "media-failure.png"))
        raise
