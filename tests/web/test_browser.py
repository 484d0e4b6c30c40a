"""The web UI in a real browser: Debian's Chromium driven by Playwright, against a real server.

One flow, like a person would use it: sign up, sign out, sign in; upload three files through
the Uppy Dashboard (one in 1 MiB tus chunks), reload the page in the middle and resume; the
session expires and a sign-in dialog keeps the upload; list, search, open, preview, download
(same sha256), delete; an EICAR file is rejected with its reason; a file named like HTML stays
text; the analytics page shows the counts. Screenshots of every page go to test-artifacts/.

Needs /usr/bin/chromium (scripts/setup-test-env.sh installs it) and the shared clamd.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import math
import os
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = Path(os.environ.get("TUSSERVER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
MiB = 1024 * 1024
CHUNK = MiB
BIG_SIZE = 5 * MiB + 12345
USERNAME = "alice.web"
PASSWORD = "correct horse battery"
XSS_NAME = "<img src=x onerror=alert(1)>.txt"


# --- files to upload -------------------------------------------------------------------------


def wav_bytes(size: int) -> bytes:
    """A valid 16-bit mono PCM WAV of exactly ``size`` bytes (a quiet 440 Hz tone)."""
    data_len = size - 44
    samples = data_len // 2
    rate = 22050
    tone = bytes(
        b
        for i in range(rate // 440 * 10)
        for b in struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
    )
    pcm = (tone * (samples * 2 // len(tone) + 1))[: samples * 2] + b"\0" * (data_len % 2)
    header = b"RIFF" + struct.pack("<I", size - 8) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_len)
    return header + pcm


def png_bytes(width: int = 96, height: int = 64) -> bytes:
    """A real RGB PNG (a gradient), so the browser can show it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(
        b"\0" + b"".join(bytes((x * 255 // width, y * 255 // height, 180)) for x in range(width))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def eicar() -> bytes:
    """The 68-byte EICAR test string, assembled here so no file of the repo carries it."""
    head = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    tail = "EICAR-STANDARD-ANTIVIRUS-" + "TEST-FILE!$H+H*"
    data = (head + tail).encode()
    assert len(data) == 68
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def web_server(tmp_path: Path, clamd_server: Any) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path / "data",
        {
            "TUSSERVER_AUTH": "jwt",
            "TUSSERVER_CLAMD_URL": clamd_server.tcp_url,
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
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/setup-test-env.sh (it installs Debian's chromium)",
            pytrace=False,
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[dev]'", pytrace=False)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1280, "height": 900},
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            await context.close()


# --- helpers ---------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll ``check`` (plain or async) until it returns something true."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class TusLog:
    """The tus requests the page makes, to tell a resumed upload from a restarted one."""

    def __init__(self) -> None:
        self.creations: list[tuple[int, str | None]] = []  # (Upload-Length, Location)
        self.patches: list[tuple[str, int]] = []  # (upload URL, Upload-Offset sent)
        self.offsets: dict[str, int] = {}  # upload URL -> last offset acknowledged

    async def on_response(self, response: Any) -> None:
        req = response.request
        if "/uploads/" not in req.url:
            return
        if req.method == "POST" and response.status == 201:
            length = int((await req.all_headers()).get("upload-length", "-1"))
            location = (await response.all_headers()).get("location")
            self.creations.append((length, location))
        elif req.method == "PATCH":
            headers = await req.all_headers()
            self.patches.append((req.url, int(headers.get("upload-offset", "-1"))))
            if response.status == 204:
                acked = (await response.all_headers()).get("upload-offset")
                if acked is not None:
                    self.offsets[req.url] = int(acked)

    def url_of(self, length: int) -> str | None:
        for size, location in self.creations:
            if size == length:
                return location
        return None


async def shot(page: Any, name: str, *, full: bool = True, toasts: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(
        path=str(ARTIFACTS / f"{name}.png"),
        full_page=full,
        animations="disabled",
        style=None if toasts else "#toasts { display: none !important; }",
    )


async def kpi(page: Any, key: str) -> int:
    text = await page.locator(f'[data-kpi="{key}"] .kpi-value').inner_text()
    return int(re.sub(r"\D", "", text) or "0")


async def result_state(page: Any, name: str) -> str | None:
    item = page.locator("#upload-results li.result").filter(
        has=page.locator(".result-name", has_text=name)
    )
    if await item.count() == 0:
        return None
    state: str | None = await item.first.get_attribute("data-state")
    return state


# --- the flow --------------------------------------------------------------------------------


async def test_web_ui_flow(web_server: ServerProcess, browser: Any, tmp_path: Path) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    try:
        await _flow(web_server, browser, page, tmp_path)
    except BaseException:
        await shot(page, "failure", full=False)
        raise


async def _flow(web_server: ServerProcess, browser: Any, page: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    base = web_server.url
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    big, photo, notes = files_dir / "big.wav", files_dir / "photo.png", files_dir / "notes.txt"
    big.write_bytes(wav_bytes(BIG_SIZE))
    photo.write_bytes(png_bytes())
    notes.write_bytes(b"Meeting notes\n- the quokka project ships on Friday\n" * 20)
    virus = files_dir / "eicar.txt"
    virus.write_bytes(eicar())
    xss = files_dir / XSS_NAME
    xss.write_bytes(b"just text, not markup\n")

    dialogs: list[str] = []
    page_errors: list[str] = []
    console_errors: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "beforeunload":
            await dialog.accept()
        else:
            await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    scripts: list[str] = []  # our modules, as the browser asked for them
    page.on(
        "request",
        lambda r: scripts.append(r.url) if "/static/" in r.url and ".js" in r.url else None,
    )
    tus = TusLog()
    page.on("response", tus.on_response)

    # --- sign up, sign out, sign in ---
    await page.goto(f"{base}/?chunk_size={CHUNK}")
    await page.wait_for_url(re.compile(r"/app/\?chunk_size=\d+#/signin"))
    await page.get_by_role("heading", name="Sign in").wait_for()
    await shot(page, "01-signin")
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Username").fill(USERNAME)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_label("Repeat password").fill(PASSWORD + "x")
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_text("The two passwords are not the same.").wait_for()
    await page.get_by_label("Repeat password").fill(PASSWORD)
    await shot(page, "02-signup")
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_role("heading", name="Upload files").wait_for()
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_text("You are signed out.").wait_for()
    await page.get_by_label("Username").fill(USERNAME)
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("wrong username or password").wait_for()
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Upload files").wait_for()
    assert "chunk_size" in page.url

    # --- three files; the big one goes slowly so the reload hits it mid-way ---
    async def slow_patch(route: Any) -> None:
        if route.request.method == "PATCH":
            await asyncio.sleep(0.35)
        with contextlib.suppress(Exception):  # the reload may have cancelled the request
            await route.continue_()

    await page.route("**/uploads/**", slow_patch)
    await page.locator("#uppy-dashboard .uppy-Dashboard-input").first.set_input_files(
        [str(big), str(photo), str(notes)]
    )
    await page.locator(".uppy-StatusBar-actionBtn--upload").click()
    await wait_until(lambda: tus.url_of(BIG_SIZE) is not None, "the big upload's creation")
    big_url = tus.url_of(BIG_SIZE)
    assert big_url is not None
    await wait_until(lambda: tus.offsets.get(big_url, 0) >= 2 * CHUNK, "two chunks of big.wav")
    for name in ("photo.png", "notes.txt"):
        await wait_until(lambda n=name: result_state(page, n), f"{name} in the results")
    await shot(page, "03-upload-in-progress")
    offset_before_reload = tus.offsets[big_url]
    assert offset_before_reload < BIG_SIZE

    # --- reload in the middle: the upload resumes, it does not start again ---
    await page.reload()
    await page.unroute("**/uploads/**")
    banner = page.locator("#resumables")
    await banner.get_by_text("big.wav").wait_for()
    await shot(page, "04-upload-resumable")
    creations_before = len(tus.creations)
    patches_before = len(tus.patches)

    # The access cookie goes away (as if it expired); the refresh token died with the reload.
    await browser.clear_cookies(name="tus_session")
    await page.locator("#uppy-dashboard .uppy-Dashboard-input").first.set_input_files([str(big)])
    await page.locator(".uppy-StatusBar-actionBtn--upload").click()
    dialog = page.locator("#reauth-dialog")
    await dialog.get_by_role("heading", name="Your session has expired").wait_for()
    await shot(page, "05-session-expired", full=False)
    await dialog.get_by_label("Password").fill(PASSWORD)
    await dialog.get_by_role("button", name="Sign in").click()
    await wait_until(lambda: result_state(page, "big.wav"), "big.wav finished", timeout=30)
    print("TUSDEBUG", big_url, tus.creations, tus.patches, patches_before, creations_before)
    resumed = [(url, off) for url, off in tus.patches[patches_before:] if url == big_url]
    assert resumed, (big_url, tus.creations, tus.patches[patches_before:])
    assert resumed[0][1] >= offset_before_reload > 0, resumed
    assert all(size != BIG_SIZE for size, _ in tus.creations[creations_before:]), (
        "big.wav was uploaded again from the start"
    )
    for name in ("big.wav", "photo.png", "notes.txt"):
        await wait_until(
            lambda n=name: _state_is(page, n, "committed"),
            f"{name} accepted",
            timeout=30,
        )
    await shot(page, "06-upload-done")

    # --- the file list, search, detail, download ---
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    await page.get_by_role("heading", name="Files").wait_for()
    rows = page.locator(".files-table tbody tr")
    await wait_until(lambda: _count_is(rows, 3), "three files listed")
    for name in ("big.wav", "photo.png", "notes.txt"):
        assert await rows.filter(has_text=name).count() == 1
    await shot(page, "07-files")

    await page.get_by_role("searchbox", name="Search files by name").fill("notes")
    await page.get_by_role("button", name="Search", exact=True).click()
    await wait_until(lambda: _count_is(rows, 1), "one search result")
    assert "notes.txt" in await rows.first.inner_text()
    await shot(page, "08-files-search")

    await page.get_by_role("link", name="notes.txt", exact=True).click()
    await page.get_by_role("heading", name="notes.txt").wait_for()
    await page.locator(".preview-text").get_by_text("quokka project").first.wait_for()
    assert sha256(notes.read_bytes()) in await page.locator("dl.meta").first.inner_text()
    await shot(page, "09-file-detail-text")
    async with page.expect_download() as download_info:
        await page.locator("#download-link").click()
    download = await download_info.value
    assert download.suggested_filename == "notes.txt"
    saved = tmp_path / "downloaded-notes.txt"
    await download.save_as(str(saved))
    assert sha256(saved.read_bytes()) == sha256(notes.read_bytes())

    # the image preview really renders; then the image is deleted
    await page.get_by_role("link", name="Back to files").click()
    await page.get_by_role("navigation", name="Folder").get_by_role("link", name="Home").click()
    await wait_until(lambda: _count_is(rows, 3), "three files listed again")
    await page.get_by_role("link", name="photo.png", exact=True).click()
    img = page.locator("img.preview-media")
    await img.wait_for()
    await page.wait_for_function(
        "() => { const i = document.querySelector('img.preview-media'); "
        "return i && i.complete && i.naturalWidth === 96; }"
    )
    await shot(page, "10-file-detail-image")
    await page.get_by_role("button", name="Delete").click()
    confirm = page.get_by_role("dialog")
    await confirm.get_by_role("heading", name="Delete this file?").wait_for()
    await shot(page, "11-delete-confirm", full=False)
    await confirm.get_by_role("button", name="Delete").click()
    await page.get_by_role("heading", name="Files").wait_for()
    await wait_until(lambda: _count_is(rows, 2), "two files after the delete")
    assert await rows.filter(has_text="photo.png").count() == 0

    # the audio preview streams with Range requests
    await page.get_by_role("link", name="big.wav", exact=True).click()
    await page.locator("audio.preview-media").wait_for()
    await page.wait_for_function(
        "() => { const a = document.querySelector('audio.preview-media'); "
        "return a && a.readyState >= 1 && a.duration > 100; }"
    )
    await shot(page, "12-file-detail-audio")

    # --- a virus, and a name that looks like HTML ---
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload").click()
    await page.get_by_role("heading", name="Upload files").wait_for()
    await page.locator(".uppy-StatusBar-actionBtn--done").click()  # the last batch's "Done"
    await page.locator("#uppy-dashboard .uppy-Dashboard-input").first.set_input_files(
        [str(virus), str(xss)]
    )
    await page.locator(".uppy-StatusBar-actionBtn--upload").click()
    await wait_until(lambda: _state_is(page, "eicar.txt", "rejected"), "EICAR rejected", 30)
    await wait_until(lambda: _state_is(page, XSS_NAME, "committed"), "the HTML-named file", 30)
    reason = page.locator("#upload-results li.result[data-state=rejected] .result-reason")
    assert re.search(r"virus found: .*Eicar", await reason.inner_text(), re.IGNORECASE)
    await shot(page, "13-upload-rejected", toasts=True)

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    await wait_until(lambda: _count_is(rows, 4), "four files listed")
    assert await page.get_by_text(XSS_NAME, exact=True).count() >= 1
    assert await page.locator("img[src='x']").count() == 0
    rejected_row = rows.filter(has_text="eicar.txt")
    assert await rejected_row.locator(".badge").inner_text() == "Rejected"
    await shot(page, "14-files-after")
    await rejected_row.get_by_role("link", name="eicar.txt", exact=True).click()
    await page.locator(".callout-error").get_by_text("virus found").wait_for()
    await shot(page, "15-file-detail-rejected")
    await page.get_by_role("link", name="Back to files").click()
    await page.get_by_role("link", name=XSS_NAME, exact=True).click()
    await page.get_by_role("heading", name=XSS_NAME).wait_for()
    await page.locator(".preview-text").get_by_text("just text").wait_for()
    assert await page.locator("img[src='x']").count() == 0

    # --- analytics ---
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Analytics").click()
    await page.get_by_role("heading", name="Analytics").wait_for()
    await page.locator('[data-kpi="upload.finished"]').wait_for()
    assert await kpi(page, "upload.started") == 5
    assert await kpi(page, "upload.finished") == 5
    assert await kpi(page, "file.committed") == 4
    assert await kpi(page, "file.rejected") == 1
    assert await kpi(page, "file.deleted") == 1
    assert await kpi(page, "file.downloaded") >= 1
    for chart in ("chart-uploads", "chart-bytes", "chart-types", "chart-reasons"):
        await page.locator(f"canvas#{chart}").wait_for()
    await page.wait_for_timeout(400)  # the charts' short animation
    await shot(page, "16-analytics")

    # --- organise: tags, move into a new folder, rename; browse the folders; filter by tag ---
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    await wait_until(lambda: _count_is(rows, 4), "four files listed")
    await page.get_by_role("link", name="notes.txt", exact=True).click()
    await page.get_by_role("heading", name="notes.txt").wait_for()
    await page.get_by_role("button", name="Edit tags").click()
    await page.get_by_role("dialog").get_by_label("Tags").fill("meeting, q3")
    await page.get_by_role("dialog").get_by_role("button", name="Save").click()
    await page.locator("dl.meta a.tag", has_text="q3").wait_for()
    await page.get_by_role("button", name="Move").click()
    await page.get_by_role("dialog").get_by_label("Or a new folder path").fill("/docs/2026/")
    await shot(page, "17-move-dialog", full=False)
    await page.get_by_role("dialog").get_by_role("button", name="Move").click()
    await page.locator("dl.meta").get_by_role("link", name="/docs/2026/").wait_for()
    await page.get_by_role("button", name="Rename").click()
    await page.get_by_role("dialog").get_by_label("New name").fill("meeting-notes.txt")
    await page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    await page.get_by_role("heading", name="meeting-notes.txt").wait_for()
    await page.get_by_role("link", name="Back to files").click()
    await wait_until(lambda: _count_is(rows, 3), "three files left in Home")
    await page.get_by_role("link", name="docs", exact=True).click()
    await page.get_by_role("link", name="2026", exact=True).click()
    await wait_until(lambda: _count_is(rows, 1), "the moved file in /docs/2026/")
    assert "meeting-notes.txt" in await rows.first.inner_text()
    await shot(page, "18-files-folder")
    await page.get_by_role("navigation", name="Folder").get_by_role("link", name="Home").click()
    await page.get_by_role("button", name="Filters").click()
    await page.get_by_label("Tag").fill("q3")
    await page.get_by_label("Category").select_option("document")
    await shot(page, "19-files-filters")
    await page.get_by_role("button", name="Apply filters").click()
    await wait_until(lambda: _count_is(rows, 1), "one file tagged q3")
    assert "meeting-notes.txt" in await rows.first.inner_text()
    await page.get_by_role("button", name="Clear filters").click()
    await wait_until(lambda: _count_is(rows, 3), "Home without filters")

    # --- narrow screens ---
    await page.set_viewport_size({"width": 375, "height": 812})
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Analytics").click()
    await page.locator('[data-kpi="upload.finished"]').wait_for()
    await page.wait_for_timeout(300)
    await shot(page, "20-mobile-analytics")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    await wait_until(lambda: _count_is(rows, 3), "files on a phone")
    await shot(page, "21-mobile-files")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload").click()
    await page.get_by_role("heading", name="Upload files").wait_for()
    await shot(page, "22-mobile-upload")
    overflow = await page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 375, f"the upload page is {overflow}px wide on a 375px screen"

    # --- nothing went wrong behind the scenes ---
    assert not [d for d in dialogs if not d.startswith("beforeunload")], dialogs
    assert not page_errors, page_errors
    csp = [m for m in console_errors if "Content Security Policy" in m]
    assert not csp, csp
    # Every module was loaded under its hashed URL (the import map, allowed by the CSP, works).
    assert scripts and all(re.search(r"\.js\?v=[0-9a-f]{16}$", u) for u in scripts), scripts
    assert {u.split("/static/")[1].split("?")[0] for u in scripts} >= {
        "app.js",
        "app-dom.js",
        "media.js",
    }
    assert time.monotonic() - started < 120


async def _count_is(locator: Any, n: int) -> bool:
    return bool(await locator.count() == n)


async def _state_is(page: Any, name: str, state: str) -> bool:
    return await result_state(page, name) == state
