"""Middlewares shared by the tus sub-app and the rest of the service: errors and CORS.

Errors are mapped to responses here and only here: a :class:`TusError` becomes its status
with a short text (or a problem+json body for API clients), anything else a logged 500.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .events import HookRejection
from .protocol.errors import TusError
from .protocol.headers import TUS_VERSION

__all__ = ["cors_middleware", "error_middleware"]

_log = structlog.get_logger("tusserver.errors")
_CORS_DONE = web.RequestKey("tusserver_cors_done", bool)

_EXPOSE = ", ".join(
    [
        "Location",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Expires",
        "Tus-Version",
        "Tus-Resumable",
        "Tus-Extension",
        "Tus-Max-Size",
        "Tus-Checksum-Algorithm",
        "X-Request-ID",
        "Retry-After",
    ]
)
_ALLOW_HEADERS = ", ".join(
    [
        "Authorization",
        "Content-Type",
        "Origin",
        "X-Requested-With",
        "X-Request-ID",
        "X-HTTP-Method-Override",
        "X-CSRF-Token",
        "Tus-Resumable",
        "Upload-Length",
        "Upload-Offset",
        "Upload-Metadata",
        "Upload-Defer-Length",
        "Upload-Concat",
        "Upload-Checksum",
        "Range",
        "If-None-Match",
    ]
)
_ALLOW_METHODS = "POST, GET, HEAD, PATCH, DELETE, OPTIONS"


def _error_response(status: int, message: str, headers: dict[str, str]) -> web.Response:
    resp = web.Response(status=status, text=message + "\n", headers=headers)
    resp.headers["Tus-Resumable"] = TUS_VERSION
    return resp


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except TusError as exc:
        if exc.status >= 500:
            _log.warning("request failed", status=exc.status, error=exc.message)
        return _error_response(exc.status, exc.message, exc.headers)
    except HookRejection as exc:
        return _error_response(exc.status, exc.message, {})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(exc.status, exc.text or exc.reason, dict(exc.headers))
    except Exception:
        _log.exception("unhandled error", method=request.method, path=request.path)
        return _error_response(500, "internal server error", {})
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)
    return response


def cors_middleware(origins: Iterable[str]) -> Middleware:
    """CORS for tus-js-client and Uppy on other origins, on errors too."""
    allowed = frozenset(origins)
    any_origin = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _CORS_DONE in request:  # an outer app already handles CORS
            return await handler(request)
        request[_CORS_DONE] = True
        origin = request.headers.get("Origin")
        ok = origin is not None and (any_origin or origin in allowed)
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight and ok:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = _ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"
        else:
            response = await handler(request)
        if ok and origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = _EXPOSE
        response.headers.add("Vary", "Origin")
        return response

    return cors
