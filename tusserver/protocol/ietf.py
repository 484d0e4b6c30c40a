"""Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload, interop version 8).

The draft is spoken beside tus 1.0.0, on the same URLs and on the same upload records: a
request carrying ``Upload-Draft-Interop-Version`` is handed here by
:class:`~tusserver.protocol.handlers.TusHandlers`, everything else stays tus. Uploads are
created, appended to, finished and terminated through :class:`UploadService`, so locks (with
lock breaking), limits, quotas, hooks and the pipeline are exactly those of tus, and an
upload begun with one protocol can be resumed with the other.

Every error answered here is an RFC 9457 problem document (``application/problem+json``),
built from a :class:`Problem` and returned as a response, so the text error middleware of
the tus sub-app never sees it. Comments quote the draft briefly next to the code that
honours it; docs/ietf-draft.md describes what is and is not supported.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import HttpVersion11

from auth import Principal
from auth.gateway import Gate
from storage_backends.base import Finisher, StorageError, UnfinishedReader

from ..config import TusServerConfig
from ..errors import (
    ChecksumMismatch,
    Conflict,
    PayloadTooLarge,
    Progress,
    TusError,
    UploadInterrupted,
    UploadSuspended,
)
from ..events import HookRejection
from ..http_io import caller_of
from ..uploads.body import BodyReader, Interruption
from ..uploads.service import UploadService, UploadStatus
from . import sfv
from .headers import Checksum, is_valid_upload_id

__all__ = [
    "COMPLETED_UPLOAD",
    "INCONSISTENT_LENGTH",
    "INTEROP_HEADER",
    "INTEROP_VERSION",
    "MISMATCHING_OFFSET",
    "PARTIAL_UPLOAD",
    "IetfHandlers",
    "Problem",
]

_log = structlog.get_logger("tusserver.ietf")

INTEROP_VERSION = 8
INTEROP_HEADER = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"

_PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = _PROBLEM_TYPES + "mismatching-upload-offset"
COMPLETED_UPLOAD = _PROBLEM_TYPES + "completed-upload"
INCONSISTENT_LENGTH = _PROBLEM_TYPES + "inconsistent-upload-length"

#: RFC 9530 algorithm names -> (hashlib name, digest size). Others are ignored, as RFC 9530
#: lets a recipient do; the deprecated ones (md5, sha, crc32c, ...) are never trusted.
DIGEST_ALGORITHMS: Mapping[str, tuple[str, int]] = {
    "sha-256": ("sha256", 32),
    "sha-512": ("sha512", 64),
}
#: Where a Repr-Digest sent at creation is kept between requests: the upload's metadata, under
#: the keys the pipeline's checksum validator already reads (``sha256``) and ``sha512``.
_REPR_METADATA = {"sha-256": "sha256", "sha-512": "sha512"}

_HASH_IN_THREAD = 256 * 1024
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
#: Content types that say nothing about the file (curl's default for --data-binary, ...).
_GENERIC_TYPES = frozenset(
    {"application/octet-stream", "application/x-www-form-urlencoded", PARTIAL_UPLOAD}
)
_CREATE_METHODS = ("POST", "PUT", "PATCH")
_BOOL = {True: "?1", False: "?0"}


class Problem(Exception):
    """An error answered as an RFC 9457 problem document.

    ``type_`` defaults to ``about:blank`` (the title is then the status phrase); the
    draft's own types carry their extension members in ``members``.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        members: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or HTTPStatus(status).phrase
        self.headers: dict[str, str] = dict(headers or {})
        self.members: dict[str, Any] = dict(members or {})

    def response(self) -> web.Response:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.members,
        }
        resp = web.Response(
            status=self.status,
            body=json.dumps(doc).encode("utf-8"),
            content_type="application/problem+json",
        )
        resp.headers.update(self.headers)
        return resp


def _mismatching_offset(expected: int, provided: int) -> Problem:
    # "the server MUST reject the request with a 409 (Conflict) status code. The response
    # MUST include the correct offset in the Upload-Offset header field."
    return Problem(
        409,
        f"Upload-Offset {provided} does not match the upload's offset {expected}",
        type_=MISMATCHING_OFFSET,
        title="offset from request does not match offset of resource",
        headers={"Upload-Offset": str(expected)},
        members={"expected-offset": expected, "provided-offset": provided},
    )


def _inconsistent_length(detail: str, headers: Mapping[str, str] | None = None) -> Problem:
    return Problem(
        400,
        detail,
        type_=INCONSISTENT_LENGTH,
        title="inconsistent length values for upload",
        headers=headers,
    )


@dataclass(slots=True)
class _DigestCheck:
    """One digest to verify over the bytes of this request (and, for a representation
    digest, over the upload's earlier bytes fed into ``hasher`` beforehand)."""

    field: str  # "Content-Digest" or "Repr-Digest"
    name: str  # RFC 9530 name, e.g. "sha-256"
    expected: bytes
    hasher: Any


class _DigestMismatch(ChecksumMismatch):
    """Raised from the body stream, at its end, when a digest does not match."""

    def __init__(self, check: _DigestCheck) -> None:
        super().__init__(f"{check.field} {check.name} does not match")
        self.check = check


class _DigestTee:
    """Pass the body through, hashing it; at its end, compare the digests.

    The comparison runs only when the body really ended (no disconnect, no release), and,
    for representation digests, only when this request ends the representation: then a
    mismatch is raised from the stream itself, before the service can finish the upload.
    """

    def __init__(
        self,
        source: BodyReader,
        content: list[_DigestCheck],
        representation: list[_DigestCheck],
        *,
        start: int,
        length: int | None,
    ) -> None:
        self._source = source
        self._content = content
        self._representation = representation
        self._start = start
        self._length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        checks = self._content + self._representation
        total = 0
        async for block in self._source:
            for check in checks:
                if len(block) >= _HASH_IN_THREAD:
                    await asyncio.to_thread(check.hasher.update, block)
                else:
                    check.hasher.update(block)
            total += len(block)
            yield block
        if self._source.interruption is not Interruption.NONE:
            return
        for check in self._content:
            if check.hasher.digest() != check.expected:
                raise _DigestMismatch(check)
        if self._length is not None and self._start + total != self._length:
            return  # not the end of the representation: reported as an inconsistent length
        for check in self._representation:
            if check.hasher.digest() != check.expected:
                raise _DigestMismatch(check)


class IetfHandlers:
    """The draft's requests on the creation URL (``collection``) and upload URLs (``item``)."""

    def __init__(
        self,
        *,
        config: TusServerConfig,
        service: UploadService,
        gate: Gate,
        location: Callable[[web.Request, str], str],
    ) -> None:
        self._config = config
        self._service = service
        self._gate = gate
        self._location = location

    @staticmethod
    def handles(request: web.Request, method: str) -> bool:
        """Whether a request is the draft's: it carries the interop version header.

        GET (download of a finished upload) is not part of the draft and stays with tus.
        """
        return INTEROP_HEADER in request.headers and method != "GET"

    # --- entry points ---------------------------------------------------------------------

    async def collection(self, request: web.Request, method: str) -> web.StreamResponse:
        try:
            _check_interop_version(request)
            if method == "OPTIONS":
                return self._options("OPTIONS, POST, PUT, PATCH")
            if method in _CREATE_METHODS:
                return await self._create(request)
            raise Problem(
                405,
                f"{method} is not allowed on the creation URL",
                headers={"Allow": "OPTIONS, POST, PUT, PATCH"},
            )
        except Exception as exc:
            return self._error_response(exc)

    async def item(self, request: web.Request, method: str, upload_id: str) -> web.StreamResponse:
        try:
            _check_interop_version(request)
            if method == "OPTIONS":
                return self._options("OPTIONS, HEAD, PATCH, DELETE, GET")
            if not is_valid_upload_id(upload_id):
                raise Problem(404, "no such upload")
            if method == "HEAD":
                return await self._head(request, upload_id)
            if method == "PATCH":
                return await self._append_request(request, upload_id)
            if method == "DELETE":
                return await self._cancel(request, upload_id)
            raise Problem(
                405,
                f"{method} is not allowed on an upload",
                headers={"Allow": "OPTIONS, HEAD, PATCH, DELETE, GET"},
            )
        except Exception as exc:
            return self._error_response(exc)

    def _error_response(self, exc: Exception) -> web.Response:
        if isinstance(exc, Problem):
            return exc.response()
        if isinstance(exc, TusError):
            return self._problem_of(exc).response()
        if isinstance(exc, HookRejection):
            return Problem(exc.status, exc.message).response()
        raise exc

    def _problem_of(self, exc: TusError) -> Problem:
        """A service error as a problem document (its headers, e.g. Retry-After, kept)."""
        if isinstance(exc, PayloadTooLarge):
            # "A server responding with a 413 ... as a result of its upload limits MUST
            # include the Upload-Limit header in this response"
            headers = dict(exc.headers)
            headers.update(self._limit_header(self._creation_limits()))
            return Problem(413, exc.message, headers=headers)
        if isinstance(exc, ChecksumMismatch):
            return Problem(400, exc.message, headers=exc.headers)
        status = exc.status if 400 <= exc.status < 600 else 500
        return Problem(status, exc.message, headers=exc.headers)

    # --- OPTIONS ----------------------------------------------------------------------------

    def _options(self, allow: str) -> web.Response:
        # "the server MUST include the Accept-Patch header field in the response ... MUST
        # include the full application/partial-upload media type"; "The Upload-Limit header
        # field SHOULD be included in the response to an OPTIONS request if limits apply."
        headers = {"Accept-Patch": PARTIAL_UPLOAD, "Allow": allow}
        headers.update(self._limit_header(self._creation_limits()))
        return web.Response(status=204, headers=headers)

    # --- limits -----------------------------------------------------------------------------

    def _creation_limits(self) -> dict[str, int]:
        limits: dict[str, int] = {}
        max_size = self._service.max_size
        if max_size is not None:
            limits["max-size"] = max_size
        if self._config.expiration > 0:
            limits["max-age"] = int(self._config.expiration)
        return limits

    def _upload_limits(self, status: UploadStatus) -> dict[str, int]:
        limits: dict[str, int] = {}
        max_size = self._service.max_size
        if max_size is not None:
            limits["max-size"] = max_size
        expires = status.record.expires_at
        if expires is not None and not status.finished:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            remaining = (expires - dt.datetime.now(dt.UTC)).total_seconds()
            limits["max-age"] = max(0, int(remaining))
        return limits

    @staticmethod
    def _limit_header(limits: Mapping[str, int]) -> dict[str, str]:
        # An empty Dictionary is not sent at all (RFC 9651 section 4.1); a structured-field
        # Integer has at most 15 digits, so a larger limit is announced as that maximum.
        if not limits:
            return {}
        bounded = {k: min(v, sfv.MAX_INTEGER) for k, v in limits.items()}
        return {"Upload-Limit": sfv.serialize_dictionary(bounded)}

    # --- creation (POST, PUT or PATCH on the creation URL) ----------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        # "A client can start a resumable upload from any request that can carry content by
        # including the Upload-Complete header field"
        complete = sfv.parse_boolean(_field(request, "Upload-Complete"))
        if complete is None:
            raise Problem(400, "Upload-Complete must be the structured-field Boolean ?0 or ?1")
        declared = sfv.parse_non_negative_integer(_field(request, "Upload-Length"))
        content_length = _content_length(request)
        length = _deduce_length(
            complete=complete,
            offset=0,
            content_length=content_length,
            declared=declared,
            recorded=None,
        )
        content_digests = _digests(request, "Content-Digest")
        repr_digests = _digests(request, "Repr-Digest")
        metadata = _creation_metadata(request, repr_digests)
        principal = await self._gate.principal(request)
        try:
            status = await self._service.create(
                caller_of(self._gate, request, principal), length=length, metadata=metadata
            )
        except PayloadTooLarge as exc:
            raise self._problem_of(exc) from None
        upload_id = status.record.id
        location = self._location(request, upload_id)
        limits = self._limit_header(self._upload_limits(status))
        # "the server SHOULD announce the upload resource by sending an interim response with
        # the 104 (Upload Resumption Supported) status code ... it MUST include Location ...
        # and MUST include the Upload-Limit header field"
        await _send_104(request, {"Location": location, **limits})
        try:
            if not status.finished and (content_length != 0 or complete):
                status = await self._write(
                    request,
                    principal,
                    status,
                    offset=0,
                    complete=complete,
                    length=length,
                    content_length=content_length,
                    content_digests=content_digests,
                    repr_digests=repr_digests,
                )
        except Exception as exc:
            # The upload exists: the client may resume it (unless it was cancelled).
            problem = exc if isinstance(exc, Problem) else None
            if problem is None and isinstance(exc, TusError):
                problem = self._problem_of(exc)
            if problem is None:
                raise
            problem.headers.setdefault("Location", location)
            raise problem from None
        # "If the Upload-Complete header field is set to false ... the server MUST include
        # the Location response header field ... and MUST include the Upload-Limit header"
        headers = {"Location": location, **self._state_headers(status)}
        if not status.finished:
            headers.update(self._limit_header(self._upload_limits(status)))
        return web.Response(status=201, headers=headers)

    # --- offset retrieval (HEAD) ------------------------------------------------------------

    async def _head(self, request: web.Request, upload_id: str) -> web.Response:
        principal = await self._gate.principal(request)
        # Takes the upload's lock: a stale request still appending is made to let go first,
        # so the offset sent here is one the next append will be accepted at.
        status = await self._service.status(principal, upload_id)
        # "MUST include the offset ..., the completeness state ..., the length ... (unless
        # the client has not supplied one), MUST indicate the limits ... SHOULD include
        # Cache-Control: no-store"
        headers = self._state_headers(status)
        headers.update(self._limit_header(self._upload_limits(status)))
        headers["Cache-Control"] = "no-store"
        return web.Response(status=204, headers=headers)

    @staticmethod
    def _state_headers(status: UploadStatus) -> dict[str, str]:
        headers = {
            "Upload-Offset": str(status.offset or 0),
            "Upload-Complete": _BOOL[status.finished],
        }
        if status.record.length is not None:
            headers["Upload-Length"] = str(status.record.length)
        return headers

    # --- append (PATCH on an upload URL) ----------------------------------------------------

    async def _append_request(self, request: web.Request, upload_id: str) -> web.Response:
        ctype = request.headers.get("Content-Type", "")
        if ctype.split(";", 1)[0].strip().lower() != PARTIAL_UPLOAD:
            # RFC 5789: an unsupported patch document is a 415 with Accept-Patch.
            raise Problem(
                415,
                f"appending takes Content-Type: {PARTIAL_UPLOAD}",
                headers={"Accept-Patch": PARTIAL_UPLOAD},
            )
        # "The client MUST indicate the offset ... by including the Upload-Offset header"
        offset = sfv.parse_non_negative_integer(_field(request, "Upload-Offset"))
        if offset is None:
            raise Problem(400, "Upload-Offset must be a non-negative structured-field Integer")
        # "The request MUST include the Upload-Complete header field."
        complete = sfv.parse_boolean(_field(request, "Upload-Complete"))
        if complete is None:
            raise Problem(400, "Upload-Complete must be the structured-field Boolean ?0 or ?1")
        declared = sfv.parse_non_negative_integer(_field(request, "Upload-Length"))
        content_length = _content_length(request)
        content_digests = _digests(request, "Content-Digest")
        repr_digests = _digests(request, "Repr-Digest")
        principal = await self._gate.principal(request)
        status = await self._service.status(principal, upload_id)
        if status.finished:
            # "If the upload is already complete, the server MUST NOT modify the upload
            # resource and MUST reject the request."
            state = self._state_headers(status)
            if content_length != 0:
                raise _inconsistent_length("the upload is already complete", state)
            raise Problem(
                400,
                "the upload is already complete",
                type_=COMPLETED_UPLOAD,
                title="upload is already completed",
                headers=state,
            )
        current = status.offset or 0
        if offset != current:
            raise _mismatching_offset(current, offset)
        length = _deduce_length(
            complete=complete,
            offset=offset,
            content_length=content_length,
            declared=declared,
            recorded=status.record.length,
        )
        status = await self._write(
            request,
            principal,
            status,
            offset=offset,
            complete=complete,
            length=length,
            content_length=content_length,
            content_digests=content_digests,
            repr_digests=repr_digests,
        )
        headers = self._state_headers(status)
        if status.finished:
            # "the response MUST include the Upload-Complete header field with a true value"
            return web.Response(status=200, headers=headers)
        return web.Response(status=204, headers=headers)

    async def _write(
        self,
        request: web.Request,
        principal: Principal,
        status: UploadStatus,
        *,
        offset: int,
        complete: bool,
        length: int | None,
        content_length: int | None,
        content_digests: dict[str, bytes],
        repr_digests: dict[str, bytes],
    ) -> UploadStatus:
        """Append the request's content at ``offset`` through the service."""
        rec = status.record
        upload_id = rec.id
        content_checks = [
            _DigestCheck("Content-Digest", name, expected, _new_hasher(name))
            for name, expected in content_digests.items()
        ]
        # The first content digest is verified by the service on the staged chunk, so a
        # mismatching chunk is never appended ("not append the content to the upload").
        # The others, and the representation digests, are compared by the tee at the end of
        # the content, before the service's own check.
        primary: _DigestCheck | None = None
        checksum = None
        if content_checks:
            primary = content_checks[0]
            checksum = Checksum(DIGEST_ALGORITHMS[primary.name][0], primary.expected)
        repr_checks: list[_DigestCheck] = []
        if complete:
            repr_checks = await self._representation_checks(
                upload_id, offset, {**_stored_repr_digests(rec.metadata), **repr_digests}
            )
        if not repr_checks:
            # Nothing is compared after the content digests: the service checks the first.
            content_checks = content_checks[1:]
        readers: list[BodyReader] = []

        def tee(reader: BodyReader) -> BodyReader | _DigestTee:
            readers.append(reader)
            if content_checks or repr_checks:
                return _DigestTee(reader, content_checks, repr_checks, start=offset, length=length)
            return reader

        try:
            result = await self._service.receive(
                caller_of(self._gate, request, principal),
                upload_id,
                offset=offset,
                body=request.content,
                content_length=content_length,
                new_length=length if rec.length is None else None,
                checksum=checksum,
                # Upload-Complete: ?1 without a known length: the length is the offset at
                # the end of this request.
                complete_at_end=complete and length is None,
                wrap=tee,
            )
        except _DigestMismatch as exc:
            raise await self._digest_failure(principal, upload_id, offset, exc.check) from None
        except ChecksumMismatch:
            assert primary is not None  # the service checks nothing else
            raise await self._digest_failure(principal, upload_id, offset, primary) from None
        except Conflict as exc:
            expected = sfv.parse_non_negative_integer(exc.headers.get("Upload-Offset"))
            raise _mismatching_offset(expected or 0, offset) from None
        except PayloadTooLarge as exc:
            if "Upload-Offset" in exc.headers and (length is not None or rec.length is not None):
                # The content went past the upload's length while it was read (no
                # Content-Length to refuse it upfront): what fitted is stored, no more.
                raise _inconsistent_length(
                    "the content goes past the upload's length", exc.headers
                ) from None
            # A length over the maximum size, or a quota: a limit, answered as one.
            raise self._problem_of(exc) from None
        except (UploadInterrupted, UploadSuspended) as exc:
            # Released to a newer request, or the server is restarting: what arrived is
            # stored, the client resumes from the offset.
            headers = {**exc.headers, **_progress_headers(exc.progress)}
            raise Problem(exc.status, exc.message, headers=headers) from None
        stopped = readers and readers[0].interruption is not Interruption.NONE
        if complete and not result.finished and not stopped:
            # The client said this was the end, but the bytes fall short of the length.
            raise _inconsistent_length(
                "Upload-Complete: ?1, but the upload's length is not reached",
                self._state_headers(result),
            )
        return result

    async def _representation_checks(
        self, upload_id: str, offset: int, digests: Mapping[str, bytes]
    ) -> list[_DigestCheck]:
        """Representation digests to verify in this request, hashers fed with the bytes
        before ``offset``.

        When the store cannot read an unfinished upload back (S3 keeps it as a multipart
        upload until it is finished), only the pipeline's sha-256 check remains.
        """
        if not digests:
            return []
        checks = [
            _DigestCheck("Repr-Digest", name, expected, _new_hasher(name))
            for name, expected in digests.items()
        ]
        if offset == 0:
            return checks
        store = self._service.store
        if isinstance(store, Finisher) and not isinstance(store, UnfinishedReader):
            return []
        try:
            async for block in self._service.read(upload_id, 0, offset):
                for check in checks:
                    if len(block) >= _HASH_IN_THREAD:
                        await asyncio.to_thread(check.hasher.update, block)
                    else:
                        check.hasher.update(block)
        except StorageError:
            _log.warning("cannot read an upload back for Repr-Digest", upload_id=upload_id)
            return []
        return checks

    async def _digest_failure(
        self, principal: Principal, upload_id: str, offset: int, check: _DigestCheck
    ) -> Problem:
        if check.field == "Repr-Digest":
            # "If the digests don't match, the server SHOULD consider the upload failed, not
            # process the representation further, and signal the failure to the client."
            try:
                await self._service.terminate(principal, upload_id)
            except TusError:
                _log.warning("could not cancel an upload after a Repr-Digest mismatch")
            return Problem(
                400,
                f"Repr-Digest {check.name} does not match the uploaded representation; "
                "the upload was cancelled",
                members={"field": check.field, "algorithm": check.name},
            )
        # "If the digests don't match the server SHOULD consider the transfer failed, not
        # append the content to the upload resource, and signal the failure to the client."
        return Problem(
            400,
            f"Content-Digest {check.name} does not match the request content; nothing was appended",
            headers={"Upload-Offset": str(offset), "Upload-Complete": "?0"},
            members={"field": check.field, "algorithm": check.name},
        )

    # --- cancellation (DELETE) --------------------------------------------------------------

    async def _cancel(self, request: web.Request, upload_id: str) -> web.Response:
        principal = await self._gate.principal(request)
        # Takes the lock, so an append still running is made to stop first.
        await self._service.terminate(principal, upload_id)
        return web.Response(status=204)


def _progress_headers(progress: Progress | None) -> dict[str, str]:
    """The state headers of an upload whose append stopped early."""
    if progress is None:
        return {}
    headers = {
        "Upload-Offset": str(progress.offset),
        "Upload-Complete": _BOOL[progress.finished],
    }
    if progress.length is not None:
        headers["Upload-Length"] = str(progress.length)
    return headers


# --- request helpers ----------------------------------------------------------------------


def _field(request: web.Request, name: str) -> str | None:
    """A field's value, its lines joined as RFC 9651 section 4.2 asks (None if absent)."""
    values = request.headers.getall(name, [])
    return ", ".join(values) if values else None


def _check_interop_version(request: web.Request) -> None:
    version = sfv.parse_integer(_field(request, INTEROP_HEADER))
    if version != INTEROP_VERSION:
        # No 104 is ever sent for such a request ("MUST NOT send a 104 ... when the interop
        # version ... is missing or mismatching").
        raise Problem(
            400,
            f"this server implements Upload-Draft-Interop-Version {INTEROP_VERSION} "
            "(draft-ietf-httpbis-resumable-upload) and tus 1.0.0",
            members={"supported-interop-versions": [INTEROP_VERSION]},
        )


def _content_length(request: web.Request) -> int | None:
    """The content's length: Content-Length, 0 without content, None when chunked."""
    if request.content_length is not None:
        return request.content_length
    return None if request.body_exists else 0


def _deduce_length(
    *,
    complete: bool,
    offset: int,
    content_length: int | None,
    declared: int | None,
    recorded: int | None,
) -> int | None:
    """The upload's length from what the request indicates and what is recorded.

    "If indicators (1) and (2) are both present in the same request, their indicated lengths
    MUST match. If multiple requests include indicators, their indicated values MUST match."
    """
    by_content = offset + content_length if complete and content_length is not None else None
    known = {n for n in (by_content, declared, recorded) if n is not None}
    if len(known) > 1:
        raise _inconsistent_length(
            "the length indicated by "
            + ", ".join(
                f"{what} ({n})"
                for what, n in (
                    ("Upload-Complete: ?1 with Content-Length", by_content),
                    ("Upload-Length", declared),
                    ("the upload", recorded),
                )
                if n is not None
            )
            + " do not match"
        )
    length = known.pop() if known else None
    if length is not None:
        if length < offset:
            raise _inconsistent_length(f"the length {length} is below the offset {offset}")
        if content_length is not None and offset + content_length > length:
            # "the server MUST prevent the offset from exceeding the upload length"
            raise _inconsistent_length(
                f"{content_length} bytes at offset {offset} go past the length {length}"
            )
    return length


def _digests(request: web.Request, name: str) -> dict[str, bytes]:
    """The supported members of a digest field (RFC 9530), by algorithm name.

    A field that is not a Dictionary of Byte Sequences makes the request malformed (400):
    an integrity check the client asked for is never silently dropped. Unknown algorithms are
    ignored; a supported one with a digest of the wrong size is malformed too.
    """
    raw = _field(request, name)
    if raw is None:
        return {}
    try:
        members = sfv.parse_byte_sequence_dictionary(raw)
    except sfv.SFVError as exc:
        raise Problem(400, f"{name} is not a valid digest field: {exc}") from None
    found: dict[str, bytes] = {}
    for key, digest in members.items():
        algorithm = DIGEST_ALGORITHMS.get(key)
        if algorithm is None:
            continue
        if len(digest) != algorithm[1]:
            raise Problem(400, f"{name} {key} must be {algorithm[1]} bytes long")
        found[key] = digest
    return found


def _new_hasher(name: str) -> Any:
    return hashlib.new(DIGEST_ALGORITHMS[name][0])


def _stored_repr_digests(metadata: Mapping[str, bytes | None]) -> dict[str, bytes]:
    """Representation digests kept in the metadata (by a draft creation, or a tus client:
    hex or base64, as the pipeline's checksum validator reads them)."""
    found: dict[str, bytes] = {}
    for name, key in _REPR_METADATA.items():
        raw = metadata.get(key)
        if not raw:
            continue
        size = DIGEST_ALGORITHMS[name][1]
        text = raw.decode("ascii", "replace").strip()
        digest: bytes | None = None
        if len(text) == 2 * size and all(c in "0123456789abcdefABCDEF" for c in text):
            digest = bytes.fromhex(text)
        else:
            try:
                digest = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                digest = None
        if digest is not None and len(digest) == size:
            found[name] = digest
    return found


def _creation_metadata(
    request: web.Request, repr_digests: Mapping[str, bytes]
) -> dict[str, bytes | None]:
    """Upload metadata from the creation request's representation metadata.

    "metadata MUST be validated and/or sanitized if the server takes its values into
    consideration": the name is reduced to a plain file name, the type to a media type.
    """
    metadata: dict[str, bytes | None] = {}
    name = _filename(request.headers.get("Content-Disposition"))
    if name:
        metadata["filename"] = name.encode("utf-8")
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(ctype) and ctype not in _GENERIC_TYPES:
        metadata["filetype"] = ctype.encode("ascii")
    for algorithm, digest in repr_digests.items():
        metadata[_REPR_METADATA[algorithm]] = base64.b64encode(digest)
    return metadata


_DISPOSITION_EXT = re.compile(r"(?:^|;)\s*filename\*\s*=\s*([^;]*)", re.IGNORECASE)
_DISPOSITION = re.compile(r'(?:^|;)\s*filename\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.IGNORECASE)
_EXT_VALUE = re.compile(r"(utf-8|iso-8859-1)'[^']*'(.*)", re.IGNORECASE)


def _filename(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition (RFC 6266), ``filename*`` preferred."""
    if not disposition or len(disposition) > 2048:
        return None
    name: str | None = None
    ext = _DISPOSITION_EXT.search(disposition)
    if ext is not None:
        m = _EXT_VALUE.fullmatch(ext.group(1).strip())
        if m is not None:
            try:
                name = urllib.parse.unquote(m.group(2), encoding=m.group(1), errors="strict")
            except (UnicodeDecodeError, LookupError):
                name = None
    if name is None:
        plain = _DISPOSITION.search(disposition)
        if plain is not None:
            value = plain.group(1).strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            name = value
    if name is None:
        return None
    # Never a path: the last segment only, without control characters.
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    if name in ("", ".", ".."):
        return None
    return name[:255]


async def _send_104(request: web.Request, headers: Mapping[str, str]) -> None:
    """Send the interim ``104 (Upload Resumption Supported)`` response.

    aiohttp has no API for informational responses; it writes ``100 Continue`` itself by
    writing the raw status line to ``request.writer`` before the response is prepared, and
    this does the same. Only HTTP/1.1 clients get it (HTTP/1.0 knows no 1xx responses).
    "Server implementations of draft versions ... MUST also send a header field
    Upload-Draft-Interop-Version with the interop version as its value to the 104".
    """
    if request.version != HttpVersion11:
        return
    lines = ["HTTP/1.1 104 Upload Resumption Supported"]
    for key, value in {**headers, INTEROP_HEADER: str(INTEROP_VERSION)}.items():
        if "\r" in value or "\n" in value:
            return
        lines.append(f"{key}: {value}")
    try:
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        return
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    writer = request.writer
    try:
        await writer.write(data)
    except ConnectionError:
        return  # the content read that follows sees the disconnect
    # As aiohttp does after 100 Continue: the final response's byte count starts here.
    writer.output_size = 0
