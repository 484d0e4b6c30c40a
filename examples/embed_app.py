"""An aiohttp application with the tus endpoint mounted under /media/uploads.

Run it from the repository (tusserver installed in .venv)::

    .venv/bin/python examples/embed_app.py --port 8080 --data-dir ./data/embed-example

The tus creation URL is then http://127.0.0.1:8080/media/uploads/. Next to it the
application serves its own routes: ``/`` (a JSON description) and ``/ping``.

The application decides who is calling (``current_user``; this demo has no login, so every
caller is the trusted operator), and two hooks show what it can do with uploads:

- ``require_filename`` (pre_create) refuses uploads without a ``filename`` metadata key,
  keeps only the last path component of the name, and records who received the upload;
- ``log_finished`` (post_finish) logs every finished upload.

tus settings come from the usual ``TUSSERVER_*`` variables (and ``TUSSERVER_CONFIG``);
``--data-dir`` overrides ``data_dir``. ``--host`` and ``--port`` are the application's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath

import structlog
from aiohttp import web

from auth import Principal
from auth.principal import UNAUTHENTICATED_OPERATOR
from tusserver import (
    HANDLER_ARGS,
    CreateContext,
    HookRejection,
    Hooks,
    create_tus_subapp,
    load_config,
)
from tusserver.catalog.uploads import UploadRecord
from tusserver.observability import configure_logging

log = structlog.get_logger("embed_app")

UPLOADS_PREFIX = "/media/uploads"


async def current_user(_request: web.Request) -> Principal:
    """Who is calling. A real application looks up its session or token here and raises
    ``web.HTTPUnauthorized`` for anonymous callers; uploads are then private to their owner."""
    return UNAUTHENTICATED_OPERATOR


async def require_filename(ctx: CreateContext) -> None:
    """pre_create: a ``filename`` is required; directories a client sent are dropped."""
    raw = ctx.metadata.get("filename")
    if not raw:
        raise HookRejection(400, "Upload-Metadata must include a non-empty 'filename'")
    name = raw.decode("utf-8", "replace")
    # Clients on Windows may send "C:\\Users\\me\\photo.jpg"; keep "photo.jpg".
    base = PureWindowsPath(PurePosixPath(name).name).name
    if base in ("", ".", ".."):
        raise HookRejection(400, "'filename' is not a usable file name")
    ctx.metadata["filename"] = base.encode("utf-8")
    ctx.metadata["received_by"] = b"embed_app"


async def log_finished(record: UploadRecord) -> None:
    """post_finish: runs in the background once an upload has all its bytes."""
    if record.is_partial:
        return  # a piece of a concatenated upload; the final upload is logged on its own
    filename = (record.metadata.get("filename") or b"").decode("utf-8", "replace")
    log.info("upload complete", upload_id=record.id, filename=filename, size=record.length)


async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "app": "embed_app example",
            "tus_endpoint": str(request.url.with_path(UPLOADS_PREFIX + "/")),
        }
    )


async def ping(_request: web.Request) -> web.Response:
    return web.Response(text="pong\n")


def make_app(*, data_dir: str | None = None) -> web.Application:
    config = load_config(overrides={"data_dir": data_dir})
    hooks = Hooks(pre_create=[require_filename], post_finish=[log_finished])

    app = web.Application(handler_args=HANDLER_ARGS)
    app.router.add_get("/", index)
    app.router.add_get("/ping", ping)
    app.add_subapp(UPLOADS_PREFIX, create_tus_subapp(config, hooks=hooks, principal=current_user))
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", default="./data/embed-example")
    args = parser.parse_args(argv)

    configure_logging(fmt="console", level="info")
    web.run_app(make_app(data_dir=args.data_dir), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
