"""The one error table: every exception that maps to an HTTP status, with that status and a
code that says what happened.

Service, lifecycle, auth and API code raise these; one middleware
(:func:`tusserver.middleware.error_middleware`) turns them into responses: text for tus
clients, ``{"error": code, "message": ...}`` JSON for the API. The IETF draft's adapter
answers the same errors as RFC 9457 problem documents (``tusserver.protocol.ietf``).
Exceptions of the stores (``storage_backends``), which import nothing of ``tusserver``, are
mapped onto :class:`StorageUnavailable` and :class:`StoredDataUnreadable` by that middleware.

Nothing here imports anything of the service: every layer may raise these.

=========================  ======  ==========================
exception                  status  code
=========================  ======  ==========================
BadRequest                 400     bad_request
RepeatedHeader             400     repeated_header
UploadInterrupted          400     upload_interrupted
Unauthorized               401     unauthorized
Forbidden                  403     forbidden
CsrfRejected               403     csrf
NotFound (FileNotFound)    404     not_found
MethodNotAllowed           405     method_not_allowed
RequestTimeout             408     body_idle_timeout
Conflict (OffsetMismatch)  409     offset_mismatch
StateConflict              409     conflict
UsernameTaken              409     username_taken
Gone                       410     gone
PreconditionFailed         412     unsupported_version
PayloadTooLarge            413     too_large
UnsupportedMediaType       415     unsupported_media_type
UnsupportedEncoding        415     unsupported_content_encoding
RangeNotSatisfiable        416     range_not_satisfiable
LockTimeout                423     locked
TooManyRequests            429     rate_limited
ChecksumMismatch           460     checksum_mismatch
HookRejection              4xx/5x  rejected
StoredDataUnreadable       500     stored_data_unreadable
InsufficientStorage        507     storage_full
ServiceUnavailable         503     unavailable
UploadSuspended            503     unavailable
StorageUnavailable         503     storage_unavailable
CatalogUnavailable         503     catalog_unavailable
=========================  ======  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadRequest",
    "CatalogUnavailable",
    "ChecksumMismatch",
    "Conflict",
    "CsrfRejected",
    "FileNotFound",
    "Forbidden",
    "Gone",
    "HookRejection",
    "InsufficientStorage",
    "LockTimeout",
    "MethodNotAllowed",
    "NotFound",
    "OffsetMismatch",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Progress",
    "RangeNotSatisfiable",
    "RepeatedHeader",
    "RequestTimeout",
    "ServiceUnavailable",
    "StateConflict",
    "StorageUnavailable",
    "StoredDataUnreadable",
    "TooManyRequests",
    "TusError",
    "Unauthorized",
    "UnsupportedEncoding",
    "UnsupportedMediaType",
    "UploadInterrupted",
    "UploadSuspended",
    "UsernameTaken",
]


class TusError(Exception):
    """Base class: an error the client is told about, with a status and a short code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an upload stands after its body stopped early (for the adapters' headers)."""

    offset: int
    length: int | None
    finished: bool


# --- 4xx ---------------------------------------------------------------------------------


class BadRequest(TusError):
    status = 400
    code = "bad_request"


class RepeatedHeader(BadRequest):
    """A header the protocol allows once came more than once: on several lines, or as
    several values in one line (what an intermediary that merges lines makes of them).

    Refused whatever the values, so no layer can read one value and another layer (or a
    proxy in front) another one.
    """

    code = "repeated_header"

    def __init__(self, header: str, *, member: str | None = None) -> None:
        if member is None:
            message = f"{header} must be sent once, with one value; this request has several"
        else:
            message = f"{header} must name {member} once; this request names it several times"
        super().__init__(message)
        self.header = header


class UploadInterrupted(BadRequest):
    """The body ended early: released to a newer request for the same upload."""

    code = "upload_interrupted"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.progress = progress


class Unauthorized(TusError):
    status = 401
    code = "unauthorized"


class Forbidden(TusError):
    status = 403
    code = "forbidden"


class CsrfRejected(Forbidden):
    code = "csrf"


class NotFound(TusError):
    status = 404
    code = "not_found"


FileNotFound = NotFound


class MethodNotAllowed(TusError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(TusError):
    """The request's body sent nothing for ``body_idle_timeout`` seconds."""

    status = 408
    code = "body_idle_timeout"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.progress = progress


class Conflict(TusError):
    """The offset a client sent is not the upload's (tus and the IETF draft)."""

    status = 409
    code = "offset_mismatch"


class UsernameTaken(TusError):
    """Registration with a username that already exists."""

    status = 409
    code = "username_taken"


OffsetMismatch = Conflict


class StateConflict(TusError):
    """The resource is not in a state that allows the request (yet)."""

    status = 409
    code = "conflict"


class Gone(TusError):
    status = 410
    code = "gone"


class PreconditionFailed(TusError):
    status = 412
    code = "unsupported_version"


class PayloadTooLarge(TusError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(TusError):
    status = 415
    code = "unsupported_media_type"


class UnsupportedEncoding(UnsupportedMediaType):
    """A request body with a Content-Encoding other than identity on an upload route."""

    code = "unsupported_content_encoding"


class RangeNotSatisfiable(TusError):
    status = 416
    code = "range_not_satisfiable"


class LockTimeout(TusError):
    """Another request holds the upload and did not let go in time."""

    status = 423
    code = "locked"


class TooManyRequests(TusError):
    status = 429
    code = "rate_limited"


class ChecksumMismatch(TusError):
    status = 460
    code = "checksum_mismatch"


class HookRejection(TusError):
    """Raised by a pre-hook to refuse the request with ``status`` and ``message``."""

    code = "rejected"

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status < 600:
            raise ValueError("a rejection needs a 4xx or 5xx status")
        super().__init__(message)
        self.status = status


# --- 5xx ---------------------------------------------------------------------------------


class StoredDataUnreadable(TusError):
    """Decryption or an integrity check refused stored bytes: never sent."""

    status = 500
    code = "stored_data_unreadable"


class InsufficientStorage(TusError):
    """The disk, the bucket or the catalog is full: what was stored stays, retry later."""

    status = 507
    code = "storage_full"


class ServiceUnavailable(TusError):
    status = 503
    code = "unavailable"


class UploadSuspended(ServiceUnavailable):
    """The server is shutting down: what arrived is stored, the client resumes later."""

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.progress = progress


class StorageUnavailable(ServiceUnavailable):
    """A store failed (``storage_backends.base.StorageError``) where no caller handled it."""

    code = "storage_unavailable"


class CatalogUnavailable(ServiceUnavailable):
    """The database did not answer (restarting, unreachable) where no caller handled it."""

    code = "catalog_unavailable"
