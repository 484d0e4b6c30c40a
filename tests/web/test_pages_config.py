"""What the pages say depends on the server's configuration, and the first load is clean: in
Debian's Chromium (Playwright) against a real ``tusserver serve``.

- "virus-checked" / "checked for viruses" only when a scanner (clamd) is configured;
- no failed request and no console error when a visitor who is not signed in loads the page;
- the welcome toast leaves the rows of the upload list visible;
- the files table shows the whole type while the name column has room.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import ServerProcess

from .test_browser import ARTIFACTS, browser, png_bytes  # noqa: F401 - the browser fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PASSWORD = "correct horse battery"


def _server(tmp_path: Path, settings: dict[str, str]) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path / "data",
        {
            "TUSSERVER_AUTH": "jwt",
            "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2",
            "TUSSERVER_LOG_LEVEL": "warning",
            **settings,
        },
        start=False,
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """No scanner: what `make run` starts."""
    yield from _server(tmp_path, {})


@pytest.fixture
def scanning_server(tmp_path: Path, clamd_server: Any) -> Iterator[ServerProcess]:
    yield from _server(tmp_path, {"TUSSERVER_CLAMD_URL": clamd_server.tcp_url})


class Watch:
    """Console errors, page errors and failed responses of a page."""

    def __init__(self, page: Any) -> None:
        self.console: list[str] = []
        self.failed: list[str] = []
        page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.console.append(str(exc)))
        page.on(
            "response",
            lambda r: self.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )

    def clean(self) -> bool:
        return not self.console and not self.failed

    def __str__(self) -> str:
        return f"console errors: {self.console}; failed responses: {self.failed}"


async def _sign_up(page: Any, username: str) -> None:
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(PASSWORD)
    await page.get_by_label("Repeat password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.get_by_role("heading", name="Upload files").wait_for()


async def _text(page: Any) -> str:
    text: str = await page.locator("body").inner_text()
    return text


async def test_without_a_scanner_no_virus_promise_and_a_clean_first_load(
    plain_server: ServerProcess,
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    watch = Watch(page)
    for _ in range(2):  # every load, not just the first
        await page.goto(f"{plain_server.url}/app/")
        await page.get_by_role("heading", name="Sign in").wait_for()
        await page.wait_for_load_state("networkidle")
        assert "virus" not in (await _text(page)).lower()
        assert watch.clean(), watch

    await _sign_up(page, "nova")
    assert "virus" not in (await _text(page)).lower()

    # The welcome toast is up; an upload's row appears while it still is.
    toast = page.locator("#toasts .toast").filter(has_text="Welcome")
    await toast.wait_for()
    files = tmp_path / "files"
    files.mkdir()
    photo = files / "photo.png"
    photo.write_bytes(png_bytes())
    blob = files / "long-type-name.bin"  # detected as application/octet-stream: a long type
    blob.write_bytes(random.Random(3).randbytes(40_000))
    await page.locator("#uppy-dashboard .uppy-Dashboard-input").first.set_input_files(
        [str(photo), str(blob)]
    )
    await page.locator(".uppy-StatusBar-actionBtn--upload").click()
    await page.locator("#upload-results li.result").nth(1).wait_for()
    assert await toast.is_visible(), "the toast went before the row came: nothing was checked"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "toast-and-results.png"))
    toast_box = await toast.bounding_box()
    assert toast_box
    rows = page.locator("#upload-results li.result")
    for i in range(await rows.count()):
        # (The list is drawn again at each change, a new result or a file's status: a row
        # caught between two drawings has no box, so the box is asked for until it has.)
        row_box = None
        for _ in range(50):
            row_box = await rows.nth(i).bounding_box()
            if row_box:
                break
            await page.wait_for_timeout(20)
        assert row_box
        overlap_x = min(row_box["x"] + row_box["width"], toast_box["x"] + toast_box["width"]) - max(
            row_box["x"], toast_box["x"]
        )
        overlap_y = min(
            row_box["y"] + row_box["height"], toast_box["y"] + toast_box["height"]
        ) - max(row_box["y"], toast_box["y"])
        assert overlap_x <= 0 or overlap_y <= 0, ("the toast covers an upload row", i)

    # The files table: the type is shown whole, on one line, while the name column has room.
    await toast.wait_for(state="detached", timeout=15_000)
    await (
        page.locator("#upload-results li.result[data-state=committed]")
        .nth(1)
        .wait_for(timeout=30_000)
    )
    await page.get_by_role("link", name="Files").click()
    cell = page.locator("tr", has_text="long-type-name.bin").locator(".cell-type")
    await cell.wait_for()
    assert (await cell.inner_text()).strip() == "application/octet-stream"
    fits = await cell.evaluate(
        "(el) => { const r = document.createRange(); r.selectNodeContents(el);"
        " return el.scrollWidth <= el.clientWidth && r.getClientRects().length === 1; }"
    )
    name_room = (
        await page.locator("tr", has_text="long-type-name.bin")
        .locator(".cell-name")
        .evaluate(
            "(el) => { const n = el.querySelector('.file-name');"
            " return el.clientWidth - (n ? n.scrollWidth : 0); }"
        )
    )
    await page.screenshot(path=str(ARTIFACTS / "files-table-types.png"))
    assert name_room > 0
    assert fits, "the type column is cut off"
    assert watch.console == [], watch


async def test_with_a_scanner_the_pages_say_files_are_checked_for_viruses(
    scanning_server: ServerProcess,
    browser: Any,  # noqa: F811
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    watch = Watch(page)
    await page.goto(f"{scanning_server.url}/app/")
    await page.get_by_role("heading", name="Sign in").wait_for()
    assert "virus-checked" in await _text(page)
    await _sign_up(page, "vera")
    assert re.search(r"checked for viruses", await _text(page))
    assert watch.clean(), watch
