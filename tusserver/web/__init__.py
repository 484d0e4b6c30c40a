"""The web UI: a single-page app served by the same aiohttp application (no CDN, no bundler).

``web_routes(config, assets_dir)`` gives the routes to add to the standalone app:

- ``/`` redirects to ``/app/``; ``/app/...`` serves the page (hash routes do the rest)
- ``/static/<name>``: our own JS/CSS from ``tusserver/web/static``
- ``/vendor/uppy.min.js``, ``/vendor/uppy.min.css``, ``/vendor/chart.js``: third-party
  bundles read from ``assets_dir`` (see :func:`default_assets_dir`: the copies an installed
  package carries, else the checkout's ``node_modules``); 503 with a clear text when they
  are missing
- ``/api/v1/limits``: what the upload page needs to know before sending anything

Asset URLs in the page carry ``?v=<content hash>``; a request with the current hash is cached
for a year (``immutable``), anything else is revalidated (``no-cache`` + ETag). The UI's code
is native ES modules (``app.js`` imports ``app-*.js`` and ``media.js``; no build step): the
page's import map gives each imported module its hashed URL too (see :mod:`.modules`). Files
are re-read when they change on disk, so a deploy or an ``npm ci`` needs no restart.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .. import __version__
from ..config import TusServerConfig
from ..pipeline.validators import _DOCUMENT_TYPES, CATEGORIES
from .modules import import_map_html, imports_of, module_graph

__all__ = [
    "CSP",
    "ENTRY_MODULE",
    "STATIC_DIR",
    "VENDOR_DIR",
    "WebUI",
    "default_assets_dir",
    "limits_json",
    "page_csp",
    "web_routes",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The bundles a built package carries (setup.py copies them from node_modules; same layout).
VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
#: A source checkout's node_modules (development, editable installs).
CHECKOUT_NODE_MODULES = Path(__file__).resolve().parent.parent.parent / "node_modules"


def default_assets_dir(configured: str = "") -> Path:
    """Where the vendor bundles are read: ``web_assets_dir`` when set, else the package's own
    copies (an installed wheel), else the source checkout's ``node_modules``."""
    if configured:
        return Path(configured)
    if (VENDOR_DIR / "versions.json").is_file():
        return VENDOR_DIR
    return CHECKOUT_NODE_MODULES


#: Vendor URL name -> candidate paths below ``assets_dir`` (the first that exists wins).
VENDOR_FILES: dict[str, tuple[str, ...]] = {
    "uppy.min.js": ("uppy/dist/uppy.min.js",),
    "uppy.min.css": ("uppy/dist/uppy.min.css",),
    "chart.js": ("chart.js/dist/chart.umd.min.js", "chart.js/dist/chart.umd.js"),
}
_NPM_PACKAGE = {"uppy.min.js": "uppy", "uppy.min.css": "uppy", "chart.js": "chart.js"}

_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_COMPRESSIBLE = (".js", ".css", ".html", ".svg", ".json")
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.:-]+)\s*\}\}")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"

#: The module the page starts (``<script type="module">``); the import map covers what it imports.
ENTRY_MODULE = "app.js"

#: The page's Content-Security-Policy: everything from this origin, nothing inline but styles
#: (Uppy sets style attributes) and the page's import map (allowed by its hash, see
#: :func:`page_csp`), blob: for Uppy's thumbnails.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def page_csp(script_sources: str = "") -> str:
    """:data:`CSP` with ``script_sources`` (e.g. the import map's ``'sha256-...'``) allowed."""
    if not script_sources:
        return CSP
    return CSP.replace("script-src 'self'", f"script-src 'self' {script_sources}", 1)


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when read
    body: bytes
    gzipped: bytes | None
    digest: str  # first 16 hex digits of the sha256 of body


class _FileCache:
    """Files read into memory with their hash, re-read when mtime or size changes."""

    def __init__(self) -> None:
        self._entries: dict[Path, _Loaded] = {}

    def get(self, path: Path) -> _Loaded | None:
        """The file's current content, or None when it is missing (blocking: use a thread)."""
        try:
            st = path.stat()
        except OSError:
            self._entries.pop(path, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._entries.get(path)
        if hit is not None and hit.stamp == stamp:
            return hit
        try:
            body = path.read_bytes()
        except OSError:
            return None
        gz = gzip.compress(body, 6, mtime=0) if path.suffix in _COMPRESSIBLE else None
        if gz is not None and len(gz) >= len(body):
            gz = None
        loaded = _Loaded(stamp, body, gz, hashlib.sha256(body).hexdigest()[:16])
        self._entries[path] = loaded
        return loaded


def limits_json(config: TusServerConfig) -> dict[str, object]:
    """What an uploader may send: sizes (None: no limit), categories and how types map to them.

    ``document_types`` lists the MIME types counted as documents (video/audio/image go by the
    major type; everything else is ``other``), so a client can warn before uploading.
    """
    allowed = [c for c in CATEGORIES if c in config.allowed_categories]
    return {
        "max_size": config.max_size or None,
        "allowed_categories": allowed,
        "max_size_per_category": {c: config.category_max_size(c) or None for c in allowed},
        "document_types": sorted(_DOCUMENT_TYPES),
        "tus_endpoint": config.base_path,
        "auth": config.auth,
        "registration_enabled": config.registration_enabled,
        # Whether files are scanned for viruses (clamd configured): the pages say so only then.
        "virus_scan": bool(config.clamd_url),
        "version": __version__,
    }


class WebUI:
    """Handlers of the page, our static files, the vendor bundles and the limits endpoint."""

    def __init__(
        self, config: TusServerConfig, assets_dir: Path, *, static_dir: Path = STATIC_DIR
    ) -> None:
        self._config = config
        self._assets_dir = Path(assets_dir)
        self._static_dir = Path(static_dir)
        self._cache = _FileCache()
        self._imports: dict[str, tuple[str, ...]] = {}  # module digest -> what it imports

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.root, allow_head=True),
            web.get("/app", self.root, allow_head=True),
            web.get("/app/{tail:.*}", self.page, allow_head=True),
            web.get("/static/{name}", self.static, allow_head=True),
            web.get("/vendor/{name}", self.vendor, allow_head=True),
            web.get("/api/v1/limits", self.limits, allow_head=True),
        ]

    # --- files ------------------------------------------------------------------------------

    def _vendor_path(self, name: str) -> Path | None:
        for rel in VENDOR_FILES.get(name, ()):
            path = self._assets_dir / rel
            if path.is_file():
                return path
        return None

    def _static_path(self, name: str) -> Path | None:
        if not _STATIC_NAME.fullmatch(name) or ".." in name:
            return None
        path = self._static_dir / name
        return path if path.is_file() else None

    async def _load(self, path: Path) -> _Loaded | None:
        return await asyncio.to_thread(self._cache.get, path)

    async def _asset_url(self, kind: str, name: str) -> str:
        """``/static/app.js?v=<hash>`` (no ``v`` when the file is missing)."""
        path = self._vendor_path(name) if kind == "vendor" else self._static_path(name)
        loaded = await self._load(path) if path is not None else None
        url = f"/{kind}/{name}"
        return f"{url}?v={loaded.digest}" if loaded is not None else url

    @staticmethod
    def _respond(
        request: web.Request,
        loaded: _Loaded,
        content_type: str,
        *,
        immutable: bool,
        extra: dict[str, str] | None = None,
    ) -> web.Response:
        etag = f'"{loaded.digest}"'
        headers = {
            "ETag": etag,
            "Cache-Control": _IMMUTABLE if immutable else _REVALIDATE,
            "Vary": "Accept-Encoding",
            **(extra or {}),
        }
        inm = request.headers.get("If-None-Match", "")
        if etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
            return web.Response(status=304, headers=headers)
        body = loaded.body
        accepts = request.headers.get("Accept-Encoding", "")
        if loaded.gzipped is not None and "gzip" in accepts.lower():
            body = loaded.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers={**headers, "Content-Type": content_type})

    # --- handlers ---------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        # The query string is kept: the page reads options from it (e.g. ``chunk_size``).
        qs = request.query_string
        raise web.HTTPFound("/app/" + (f"?{qs}" if qs else ""))

    async def page(self, request: web.Request) -> web.StreamResponse:
        path = self._static_path("index.html")
        template = await self._load(path) if path is not None else None
        if template is None:
            return web.Response(
                status=503,
                text="The web UI is not installed (tusserver/web/static/index.html is missing).\n",
            )
        text = template.body.decode("utf-8")
        urls: dict[str, str] = {}
        script_sources = ""
        for key in set(_PLACEHOLDER.findall(text)):
            kind, _, name = key.partition(":")
            if kind in ("static", "vendor") and name:
                urls[key] = await self._asset_url(kind, name)
            elif key == "version":
                urls[key] = __version__
            elif key == "importmap":
                urls[key], script_sources = import_map_html(await self._module_urls())
        html = _PLACEHOLDER.sub(lambda m: urls.get(m.group(1), ""), text).encode("utf-8")
        rendered = _Loaded(
            template.stamp,
            html,
            gzip.compress(html, 6, mtime=0),
            hashlib.sha256(html).hexdigest()[:16],
        )
        return self._respond(
            request,
            rendered,
            _CONTENT_TYPES[".html"],
            immutable=False,
            extra={"Content-Security-Policy": page_csp(script_sources)},
        )

    async def _module_urls(self) -> dict[str, str]:
        """``/static/<module>`` -> ``/static/<module>?v=<hash>`` for every module the entry
        module imports, directly or not (a missing one is left out: the browser's request for
        it gets the 404)."""
        return await asyncio.to_thread(self._module_urls_blocking)

    def _module_urls_blocking(self) -> dict[str, str]:
        digests: dict[str, str] = {}

        def imports(name: str) -> tuple[str, ...] | None:
            path = self._static_path(name)
            loaded = self._cache.get(path) if path is not None else None
            if loaded is None:
                return None
            digests[name] = loaded.digest
            found = self._imports.get(loaded.digest)
            if found is None:
                if len(self._imports) >= 256:  # old versions of files edited in place
                    self._imports.clear()
                found = tuple(imports_of(loaded.body.decode("utf-8", "replace")))
                self._imports[loaded.digest] = found
            return found

        found, _missing = module_graph(ENTRY_MODULE, imports)
        return {f"/static/{name}": f"/static/{name}?v={digests[name]}" for name in found}

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self._static_path(name)
        loaded = await self._load(path) if path is not None and name != "index.html" else None
        if path is None or loaded is None:
            raise web.HTTPNotFound(text="no such file")
        ctype = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        immutable = request.query.get("v") == loaded.digest
        return self._respond(request, loaded, ctype, immutable=immutable)

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in VENDOR_FILES:
            raise web.HTTPNotFound(text="no such file")
        path = self._vendor_path(name)
        loaded = await self._load(path) if path is not None else None
        if loaded is None:
            package = _NPM_PACKAGE[name]
            return web.Response(
                status=503,
                text=(
                    f"The web UI's third-party file {name} (npm package {package!r}) is missing: "
                    f"{self._assets_dir} has no {VENDOR_FILES[name][0]}. Run `npm ci` in the "
                    "project directory (or point the server at a node_modules that has it).\n"
                ),
                headers={"Cache-Control": "no-store", "Retry-After": "60"},
            )
        ctype = _CONTENT_TYPES[".css"] if name.endswith(".css") else _CONTENT_TYPES[".js"]
        immutable = request.query.get("v") == loaded.digest
        return self._respond(request, loaded, ctype, immutable=immutable)

    async def limits(self, request: web.Request) -> web.Response:
        return web.json_response(limits_json(self._config), headers={"Cache-Control": "no-cache"})


def web_routes(config: TusServerConfig, assets_dir: Path) -> list[web.RouteDef]:
    """The web UI's routes, for ``app.add_routes`` (``assets_dir``: the ``node_modules``)."""
    return WebUI(config, assets_dir).routes()
