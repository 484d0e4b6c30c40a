"""Structured logs (structlog) with a request id bound to every line of a request."""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
import traceback
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "PlainRenderer",
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
    elif sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = PlainRenderer()
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


#: A string value with one of these is quoted (``repr``), as the console renderer does.
_QUOTED = frozenset(" \t=\r\n\"'")
_UNSET = object()


def _show(value: object) -> str:
    if isinstance(value, str):
        return value if _QUOTED.isdisjoint(value) else repr(value)
    return repr(value)


class PlainRenderer:
    """The console format without colours, built in one pass.

    The same line as structlog's ``ConsoleRenderer(colors=False)``: timestamp, the level in
    brackets padded to 9, the event padded to 30, the other keys sorted as ``key=value``
    (strings bare unless they hold a space, a quote or ``=``), then the stack and the
    traceback on lines of their own. The console renderer builds each column through
    formatter objects and string buffers, about 20 us a line; a small upload logs three
    lines at the default level, so this is where most of its logging cost went.
    """

    def __call__(self, _logger: Any, _name: str, event_dict: Any) -> str:
        stack = event_dict.pop("stack", None)
        exc = event_dict.pop("exception", None)
        exc_info = event_dict.pop("exc_info", None)
        parts = []
        timestamp = event_dict.pop("timestamp", _UNSET)
        if timestamp is not _UNSET:
            parts.append(str(timestamp))
        level = event_dict.pop("level", _UNSET)
        if level is not _UNSET:
            parts.append(f"[{level!s:<9}]")
        event = event_dict.pop("event", _UNSET)
        if event is not _UNSET:
            parts.append(f"{event!s:<30}")
        for key in ("logger", "logger_name"):
            name = event_dict.pop(key, _UNSET)
            if name is not _UNSET:
                parts.append(f"[{name}]")
        parts.extend(f"{key}={_show(event_dict[key])}" for key in sorted(event_dict))
        line = " ".join(p for p in parts if p).rstrip(" ")
        if exc is None and exc_info:  # (format_exc_info normally turned it into text)
            if not isinstance(exc_info, tuple):
                exc_info = sys.exc_info() if exc_info is True else exc_info
            if isinstance(exc_info, BaseException):
                exc = "".join(traceback.format_exception(exc_info)).rstrip("\n")
            elif isinstance(exc_info, tuple) and exc_info[0] is not None:
                exc = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        if stack is not None:
            line += "\n" + stack
            if exc is not None:
                line += "\n\n" + "=" * 79 + "\n"
        if exc is not None:
            line += "\n" + exc
        return line


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
