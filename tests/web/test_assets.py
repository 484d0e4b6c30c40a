"""The web UI's routes without a browser: page, static files, vendor bundles, limits, caching."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from tusserver import TusServerConfig
from tusserver.web import CSP, web_routes


def make_app(tmp_path: Path, *, vendor: bool = True, **config: Any) -> web.Application:
    assets = tmp_path / "node_modules"
    if vendor:
        (assets / "uppy/dist").mkdir(parents=True)
        (assets / "uppy/dist/uppy.min.js").write_text("window.Uppy = {};\n" * 50)
        (assets / "uppy/dist/uppy.min.css").write_text(".uppy{}\n")
        (assets / "chart.js/dist").mkdir(parents=True)
        (assets / "chart.js/dist/chart.umd.min.js").write_text("window.Chart = function(){};\n")
    app = web.Application()
    app.add_routes(web_routes(TusServerConfig(data_dir=tmp_path / "data", **config), assets))
    return app


async def test_root_redirects_keeping_the_query(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path))
    resp = await client.get("/?chunk_size=1048576", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/app/?chunk_size=1048576"
    resp = await client.get("/", allow_redirects=False)
    assert resp.headers["Location"] == "/app/"


async def test_page_links_hashed_assets_with_csp(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path))
    resp = await client.get("/app/")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    # The policy, plus the hash of the page's inline import map (tests/web/test_modules.py).
    csp = resp.headers["Content-Security-Policy"]
    assert csp.startswith(CSP.split("script-src 'self'")[0] + "script-src 'self' 'sha256-")
    assert csp.split("; ", 2)[2] == CSP.split("; ", 2)[2]
    assert resp.headers["Cache-Control"] == "no-cache"
    html = await resp.text()
    assert "{{" not in html
    urls = re.findall(r'(?:src|href)="(/(?:static|vendor)/[^"]+)"', html)
    assert {u.split("?")[0] for u in urls} >= {
        "/static/app.js",
        "/static/app.css",
        "/vendor/uppy.min.js",
        "/vendor/uppy.min.css",
        "/vendor/chart.js",
    }
    for url in urls:
        assert re.search(r"\?v=[0-9a-f]{16}$", url), url
        asset = await client.get(url)
        assert asset.status == 200, url
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # deep links serve the same page
    assert (await client.get("/app/files/anything")).status == 200


async def test_unversioned_assets_revalidate_with_etag_and_gzip(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await aiohttp_client(make_app(tmp_path))
    resp = await client.get("/static/app.js", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["Content-Type"].startswith("text/javascript")
    etag = resp.headers["ETag"]
    body = await resp.read()
    again = await client.get("/static/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    raw = await client.get(
        "/static/app.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await raw.read()) == body
    stale = await client.get("/static/app.js?v=0000000000000000")
    assert stale.headers["Cache-Control"] == "no-cache"


async def test_no_path_tricks_in_static(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path))
    for path in (
        "/static/..%2F__init__.py",
        "/static/.hidden",
        "/static/index.html",
        "/static/nope.js",
        "/vendor/other.js",
    ):
        resp = await client.get(path)
        assert resp.status == 404, path


async def test_missing_node_modules_is_a_clear_503(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(make_app(tmp_path, vendor=False))
    resp = await client.get("/vendor/uppy.min.js")
    assert resp.status == 503
    text = await resp.text()
    assert "npm ci" in text and "uppy" in text
    # the page itself still loads (and says so in the UI)
    page = await client.get("/app/")
    assert page.status == 200
    assert 'src="/vendor/uppy.min.js"' in await page.text()


async def test_limits(aiohttp_client: Any, tmp_path: Path) -> None:
    client = await aiohttp_client(
        make_app(
            tmp_path,
            max_size=10_000_000,
            allowed_categories=("image", "document"),
            max_size_image=5_000_000,
        )
    )
    resp = await client.get("/api/v1/limits")
    assert resp.status == 200
    data = await resp.json()
    assert data["max_size"] == 10_000_000
    assert data["allowed_categories"] == ["image", "document"]
    assert data["max_size_per_category"] == {"image": 5_000_000, "document": None}
    assert "application/pdf" in data["document_types"]
    assert data["tus_endpoint"] == "/uploads/"
