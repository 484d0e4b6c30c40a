"""The web UI's ES modules, through HTTP: every module app.js imports (directly or not) is
served, as JavaScript, under the hashed URL the page's import map gives it (cached for a
year), the map is allowed by the page's CSP, and every module in the package is used.
The real browser loading them is tests/web/test_browser.py."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.web.modgraph import Graph, specifiers, walk
from tusserver import TusServerConfig
from tusserver.web import STATIC_DIR, WebUI, page_csp
from tusserver.web.modules import import_map_html, imports_of

IMMUTABLE = "public, max-age=31536000, immutable"


def make_app(tmp_path: Path, static_dir: Path = STATIC_DIR) -> web.Application:
    app = web.Application()
    ui = WebUI(
        TusServerConfig(data_dir=tmp_path / "data"), tmp_path / "none", static_dir=static_dir
    )
    app.add_routes(ui.routes())
    return app


async def _walk(client: Any) -> tuple[Graph, str]:
    page = await client.get("/app/")
    assert page.status == 200

    async def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
        resp = await client.get(url)
        return resp.status, await resp.read(), {k.lower(): v for k, v in resp.headers.items()}

    return await walk(await page.text(), fetch), page.headers["Content-Security-Policy"]


async def test_every_imported_module_is_served_hashed_and_immutable(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(make_app(tmp_path))
    graph, csp = await _walk(client)
    assert graph.failures == []
    assert graph.entry.startswith("/static/app.js?v=")
    # Every .js file of the package is reached from app.js (none left over, none missing).
    assert set(graph.modules) == {f"/static/{p.name}" for p in STATIC_DIR.glob("*.js")}
    assert {"/static/media.js", "/static/app-router.js"} <= set(graph.modules)
    # Each import is mapped to its hashed URL, which is what the browser fetched, for a year.
    imported = {path for targets in graph.imports.values() for path in targets}
    assert set(graph.import_map) == imported
    for plain, hashed in graph.import_map.items():
        body = (STATIC_DIR / plain.removeprefix("/static/")).read_bytes()
        assert hashed == f"{plain}?v={_digest(body)}"
        assert graph.fetched[hashed]["cache-control"] == IMMUTABLE, hashed
    assert sorted(graph.preloads) == sorted(graph.import_map.values())
    # The inline map is the only inline script the CSP allows, by its hash.
    assert csp == page_csp(graph.csp_source())
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]


async def test_a_missing_module_is_found(aiohttp_client: Any, tmp_path: Path) -> None:
    """The walk fails when a module that is imported is not there (e.g. not packaged)."""
    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static)
    (static / "app-dom.js").unlink()
    client = await aiohttp_client(make_app(tmp_path, static))
    graph, _ = await _walk(client)
    assert graph.failures == ["/static/app-dom.js: 404 text/plain; charset=utf-8"]
    assert "/static/app-dom.js" not in graph.import_map


async def test_the_server_reads_every_import_the_browser_would() -> None:
    """The server's import parser (for the import map) agrees with an independent one on
    every shipped module, and on the forms of import statement it claims to handle."""
    for path in STATIC_DIR.glob("*.js"):
        source = path.read_text()
        expected = [s.removeprefix("./") for s in specifiers(source)]
        assert imports_of(source) == list(dict.fromkeys(expected)), path.name
    source = (
        "import { a,\n  b } from './one.js';\n"
        "import './two.js';\n"
        'export { c } from "./three.js";\n'
        "import * as d from './one.js';\n"
        "const s = 'import x from ./four.js';\n"
    )
    assert imports_of(source) == ["one.js", "two.js", "three.js"]


def test_import_map_html_is_allowed_by_its_hash() -> None:
    html, source = import_map_html({"/static/a.js": "/static/a.js?v=0123456789abcdef"})
    text = html.split('<script type="importmap">', 1)[1].split("</script>", 1)[0]
    graph = Graph("/static/app.js", {}, text, [])
    assert source == graph.csp_source()
    assert '<link rel="modulepreload" href="/static/a.js?v=0123456789abcdef">' in html
    assert import_map_html({}) == ("", "")


def test_modules_are_small_and_say_what_they_hold() -> None:
    for path in STATIC_DIR.glob("*.js"):
        text = path.read_text()
        assert text.startswith("/* tusserver web UI"), path.name
        assert text.count("\n") <= 500, path.name
        assert "window.tusMedia" not in text, path.name


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]
