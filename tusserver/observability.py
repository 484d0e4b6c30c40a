"""Structured logs (structlog) with a request id bound to every line of a request."""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "configure_logging",
    "request_context_middleware",
]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_log = structlog.get_logger("tusserver.http")


def configure_logging(*, fmt: str = "console", level: str = "info") -> None:
    """Configure structlog and stdlib logging for the process (called by the CLI only)."""
    lvl = getattr(logging, level.upper())
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, format="%(message)s")


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (the client's X-Request-ID when sane), bind it to the logs."""
    if REQUEST_ID in request:  # an outer app already did it
        return await handler(request)
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    upload_id = request.match_info.get("upload_id")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if upload_id:
        structlog.contextvars.bind_contextvars(upload_id=upload_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        _log.debug(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
