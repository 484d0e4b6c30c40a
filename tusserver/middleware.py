"""Middlewares shared by the tus sub-app and the rest of the service: errors and CORS.

Errors are mapped to responses here and only here: a :class:`TusError` becomes its status
with a short text (or a problem+json body for API clients), anything else a logged 500.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from sqlalchemy.exc import DBAPIError

from storage_backends.base import StorageError, StorageFull
from storage_backends.encryption import EncryptionKeyError, IntegrityError

from .catalog.db import is_disk_full, is_unreachable
from .errors import (
    CatalogUnavailable,
    InsufficientStorage,
    StorageUnavailable,
    StoredDataUnreadable,
    TusError,
)
from .observability import REQUEST_ID, REQUEST_ID_HEADER
from .protocol.headers import TUS_VERSION

__all__ = ["RESPONSE_HEADERS", "add_response_headers", "cors_middleware", "error_middleware"]

_log = structlog.get_logger("tusserver.errors")
_CORS_DONE = web.RequestKey("tusserver_cors_done", bool)
RESPONSE_HEADERS = web.RequestKey("tusserver_response_headers", dict[str, str])

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
        # Resumable Uploads for HTTP (IETF draft; Upload-Incomplete in interop version 3)
        "Upload-Complete",
        "Upload-Incomplete",
        "Upload-Draft-Interop-Version",
        "Upload-Limit",
        "Content-Digest",
        "Repr-Digest",
        "Accept-Patch",
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
        # Resumable Uploads for HTTP (IETF draft; Upload-Incomplete in interop version 3)
        "Upload-Complete",
        "Upload-Incomplete",
        "Upload-Draft-Interop-Version",
        "Upload-Limit",
        "Content-Digest",
        "Repr-Digest",
        "Content-Disposition",
    ]
)
_ALLOW_METHODS = "POST, PUT, GET, HEAD, PATCH, DELETE, OPTIONS"


_FULL_MESSAGE = (
    "storage is full: the server has no space left for this request; what was stored "
    "before stays (HEAD gives an upload's offset), retry once space is freed"
)


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
        return resp

    def answer(exc: TusError) -> web.Response:
        if exc.status >= 500 and not isinstance(exc, StoredDataUnreadable | InsufficientStorage):
            _log.warning("request failed", status=exc.status, error=exc.message)
        return respond(exc.status, exc.code, exc.message, exc.headers)

    def catalog_unavailable(request: web.Request, exc: BaseException) -> web.Response:
        _log.warning("catalog unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
        return answer(
            CatalogUnavailable("the catalog database is unavailable", headers={"Retry-After": "5"})
        )

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except TusError as exc:
            return answer(exc)
        except (IntegrityError, EncryptionKeyError) as exc:
            # Decryption refused the bytes: say so, never send what could not be verified.
            _log.error("stored data unreadable", path=request.path, error=str(exc))
            return answer(
                StoredDataUnreadable("the stored data failed its integrity check and was not sent")
            )
        except StorageFull as exc:
            _log.error("storage full", path=request.path, error=str(exc))
            return answer(InsufficientStorage(_FULL_MESSAGE, headers={"Retry-After": "60"}))
        except DBAPIError as exc:
            if is_unreachable(exc):
                return catalog_unavailable(request, exc)
            if not is_disk_full(exc):
                _log.exception("unhandled error", method=request.method, path=request.path)
                return respond(500, "internal_error", "internal server error", {})
            _log.error("catalog full", path=request.path, error=str(exc.orig))
            return answer(InsufficientStorage(_FULL_MESSAGE, headers={"Retry-After": "60"}))
        except StorageError as exc:
            _log.warning("storage unavailable", path=request.path, error=str(exc))
            return answer(
                StorageUnavailable("storage is unavailable", headers={"Retry-After": "5"})
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
            code = exc.reason.lower().replace(" ", "_")
            return respond(exc.status, code, exc.text or exc.reason, headers)
        except ConnectionResetError:
            # The client went away (a download it stopped reading): nobody to answer, and
            # nothing wrong here; aiohttp ends the connection.
            _log.debug("client went away", method=request.method, path=request.path)
            raise
        except Exception as exc:
            if is_unreachable(exc):
                return catalog_unavailable(request, exc)
            _log.exception("unhandled error", method=request.method, path=request.path)
            return respond(500, "internal_error", "internal server error", {})
        return response

    return errors


def cors_middleware(origins: Iterable[str]) -> Middleware:
    """CORS for tus-js-client and Uppy on other origins, on every response (errors too).

    The headers are decided here and added when the response is prepared (see
    :func:`add_response_headers`), so streamed downloads carry them as well. Credentials
    (cookies) are allowed only for origins listed explicitly, never through ``*``.
    """
    allowed = frozenset(origins)
    any_origin = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _CORS_DONE in request:  # an outer app already handles CORS
            return await handler(request)
        request[_CORS_DONE] = True
        origin = request.headers.get("Origin")
        extra = {"Vary": "Origin"}
        if origin is not None and (any_origin or origin in allowed):
            extra["Access-Control-Allow-Origin"] = origin
            extra["Access-Control-Expose-Headers"] = _EXPOSE
            if origin in allowed:
                extra["Access-Control-Allow-Credentials"] = "true"
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                extra["Access-Control-Allow-Methods"] = _ALLOW_METHODS
                extra["Access-Control-Allow-Headers"] = _ALLOW_HEADERS
                extra["Access-Control-Max-Age"] = "86400"
                request[RESPONSE_HEADERS] = extra
                return web.Response(status=204)
        request[RESPONSE_HEADERS] = extra
        return await handler(request)

    return cors


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every response gets, streamed ones included."""
    for key, value in request.get(RESPONSE_HEADERS, {}).items():
        response.headers.setdefault(key, value)
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)
    for key, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)


_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
