"""The typed errors of the service, each with its HTTP status.

Storage and service code raise these; one middleware (``tusserver.middleware``) turns them into
responses. Nothing below the protocol layer builds HTTP responses itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadRequest",
    "ChecksumMismatch",
    "Conflict",
    "FileNotFound",
    "Forbidden",
    "Gone",
    "LockTimeout",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "Progress",
    "ServiceUnavailable",
    "StateConflict",
    "TusError",
    "Unauthorized",
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


class BadRequest(TusError):
    status = 400
    code = "bad_request"


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an upload stands after a body stopped early (for the adapters' headers)."""

    offset: int
    length: int | None
    finished: bool


class UploadInterrupted(BadRequest):
    """The body ended early (connection lost or released to a newer request)."""

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


class NotFound(TusError):
    status = 404
    code = "not_found"


FileNotFound = NotFound


class MethodNotAllowed(TusError):
    status = 405
    code = "method_not_allowed"


class Conflict(TusError):
    status = 409
    code = "offset_mismatch"


class UsernameTaken(TusError):
    """Registration with a username that already exists."""

    status = 409
    code = "username_taken"


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


class LockTimeout(TusError):
    """Another request holds the upload and did not let go in time."""

    status = 423
    code = "locked"


class ChecksumMismatch(TusError):
    status = 460
    code = "checksum_mismatch"


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
