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
        "X-File-Id",
        "X-File-Status",
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


def error_middleware(*, json_body: bool) -> Middleware:
    """Map errors to responses: text for tus clients, ``{"error", "message"}`` JSON for the API.

    Client errors are answered with their own status; anything unexpected is logged with its
    traceback and answered 500 without details.
    """

    def respond(status: int, code: str, message: str, headers: dict[str, str]) -> web.Response:
        if json_body:
            resp = web.json_response({"error": code, "message": message}, status=status)
            resp.headers.update(headers)
        else:
            resp = web.Response(status=status, text=message + "\n", headers=headers)
        resp.headers["Tus-Resumable"] = TUS_VERSION
        return resp

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except TusError as exc:
            if exc.status >= 500:
                _log.warning("request failed", status=exc.status, error=exc.message)
            return respond(exc.status, exc.code, exc.message, exc.headers)
        except HookRejection as exc:
            return respond(exc.status, "rejected", exc.message, {})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
            code = exc.reason.lower().replace(" ", "_")
            return respond(exc.status, code, exc.text or exc.reason, headers)
        except Exception:
            _log.exception("unhandled error", method=request.method, path=request.path)
            return respond(500, "internal_error", "internal server error", {})
        response.headers.setdefault("Tus-Resumable", TUS_VERSION)
        return response

    return errors


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
