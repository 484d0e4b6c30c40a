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
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from auth import Principal
from auth.gateway import Gate
from storage_backends.base import Finisher, StorageError, UnfinishedReader

from ..errors import (
    ChecksumMismatch,
    Conflict,
    PayloadTooLarge,
    Progress,
    RepeatedHeader,
    RequestTimeout,
    TusError,
    UploadInterrupted,
    UploadSuspended,
)
from ..hashing import update_all
from ..http_io import caller_of, refuse_encoded_body
from ..settings import UploadSettings
from ..types import Checksum
from ..uploads.body import BodyReader, Interruption
from ..uploads.service import UploadService, UploadStatus
from . import sfv
from .headers import is_valid_upload_id
from .ietf_versions import (
    COMPLETED_UPLOAD,
    INCONSISTENT_LENGTH,
    INTEROP_HEADER,
    MISMATCHING_OFFSET,
    PARTIAL_UPLOAD,
    SUPPORTED_VERSIONS,
    Dialect,
    Problem,
    dialect_of,
    field,
    inconsistent_length,
    mismatching_offset,
    representation_metadata,
    send_104,
)

__all__ = [
    "COMPLETED_UPLOAD",
    "INCONSISTENT_LENGTH",
    "INTEROP_HEADER",
    "MISMATCHING_OFFSET",
    "PARTIAL_UPLOAD",
    "IetfHandlers",
    "Problem",
]

_log = structlog.get_logger("tusserver.ietf")

#: RFC 9530 algorithm names -> (hashlib name, digest size). Others are ignored, as RFC 9530
#: lets a recipient do; the deprecated ones (md5, sha, crc32c, ...) are never trusted.
DIGEST_ALGORITHMS: Mapping[str, tuple[str, int]] = {
    "sha-256": ("sha256", 32),
    "sha-512": ("sha512", 64),
}
#: Where a Repr-Digest sent at creation is kept between requests: the upload's metadata, under
#: the keys the pipeline's checksum validator already reads (``sha256``) and ``sha512``.
_REPR_METADATA = {"sha-256": "sha256", "sha-512": "sha512"}

_CREATE_METHODS = ("POST", "PUT", "PATCH")


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
        hashers = [c.hasher for c in self._content + self._representation]
        total = 0
        async for block in self._source:
            await update_all(hashers, block)
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


class _PrefixHashes:
    """Hash states of uploads' stored bytes up to an offset, by (upload id, offset), the
    least recently used dropped past ``limit``.

    A representation digest is verified over the whole upload, so a request that completes
    an upload makes the server read back and hash everything stored before it. The stored
    bytes never change (uploads are append-only), so that is done once per upload and
    offset: a request refused after it (a wrong Content-Digest, a rate limit, the lock) and
    sent again, or sent many times at once, costs no further read; moving the offset costs
    the client the bytes that move it.
    """

    def __init__(self, limit: int = 256) -> None:
        self._limit = limit
        self._states: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._reading: dict[tuple[str, int], asyncio.Future[None]] = {}

    async def hashers(
        self,
        upload_id: str,
        offset: int,
        names: list[str],
        read: Callable[[], AsyncIterator[bytes]],
    ) -> dict[str, Any]:
        """A new hasher per algorithm of ``names``, fed with the bytes ``read`` gives
        (those of the upload before ``offset``); StorageError from ``read``."""
        key = (upload_id, offset)
        while True:
            held = self._states.get(key)
            if held is not None and all(name in held for name in names):
                self._states.move_to_end(key)
                return {name: held[name].copy() for name in names}
            reading = self._reading.get(key)
            if reading is None:
                break
            await asyncio.shield(reading)  # another request reads these bytes: its result
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reading[key] = done
        try:
            fed = {name: _new_hasher(name) for name in names}
            hashers = list(fed.values())
            async for block in read():
                await update_all(hashers, block)
            self._states[key] = {**self._states.get(key, {}), **fed}
            self._states.move_to_end(key)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)
            return {name: h.copy() for name, h in fed.items()}
        finally:
            del self._reading[key]
            done.set_result(None)


class IetfHandlers:
    """The draft's requests on the creation URL (``collection``) and upload URLs (``item``)."""

    def __init__(
        self,
        *,
        config: UploadSettings,
        service: UploadService,
        gate: Gate,
        location: Callable[[web.Request, str], str],
    ) -> None:
        self._config = config
        self._service = service
        self._gate = gate
        self._location = location
        self._prefixes = _PrefixHashes()

    @staticmethod
    def handles(request: web.Request, method: str) -> bool:
        """Whether a request is the draft's: it carries the interop version header.

        GET (download of a finished upload) is not part of the draft and stays with tus.
        """
        return INTEROP_HEADER in request.headers and method != "GET"

    @staticmethod
    def refused(exc: TusError) -> web.Response:
        """A request refused before its interop version was read (a header sent twice,
        the version itself perhaps): a problem document of no version in particular."""
        problem = Problem(exc.status, exc.message, headers=exc.headers)
        if isinstance(exc, RepeatedHeader):
            problem.members["field"] = exc.header
            if exc.header == INTEROP_HEADER:
                # As for any version this server does not speak (see dialect_of).
                problem.members["supported-interop-versions"] = list(SUPPORTED_VERSIONS)
        return problem.response()

    # --- entry points ---------------------------------------------------------------------
    # Each request is answered in the interop version it was sent in: its Dialect reads the
    # request's fields and writes the response; what happens in between is the same for all.

    async def collection(self, request: web.Request, method: str) -> web.StreamResponse:
        try:
            dialect = dialect_of(request)
        except Problem as exc:
            return exc.response()
        try:
            if method == "OPTIONS":
                return self._options(dialect, "OPTIONS, POST, PUT, PATCH")
            if method in _CREATE_METHODS:
                return await self._create(request, dialect)
            raise Problem(
                405,
                f"{method} is not allowed on the creation URL",
                headers={"Allow": "OPTIONS, POST, PUT, PATCH"},
            )
        except Exception as exc:
            return self._error_response(exc, dialect)

    async def item(self, request: web.Request, method: str, upload_id: str) -> web.StreamResponse:
        try:
            dialect = dialect_of(request)
        except Problem as exc:
            return exc.response()
        try:
            if method == "OPTIONS":
                return self._options(dialect, "OPTIONS, HEAD, PATCH, DELETE, GET")
            if method == "HEAD":
                dialect.refuse(request, dialect.refused_on_head)
            elif method == "DELETE":
                dialect.refuse(request, dialect.refused_on_delete)
            if not is_valid_upload_id(upload_id):
                raise Problem(404, "no such upload")
            if method == "HEAD":
                return await self._head(request, dialect, upload_id)
            if method == "PATCH":
                return await self._append_request(request, dialect, upload_id)
            if method == "DELETE":
                return await self._cancel(request, upload_id)
            raise Problem(
                405,
                f"{method} is not allowed on an upload",
                headers={"Allow": "OPTIONS, HEAD, PATCH, DELETE, GET"},
            )
        except Exception as exc:
            return self._error_response(exc, dialect)

    def _error_response(self, exc: Exception, dialect: Dialect) -> web.Response:
        if isinstance(exc, TusError):
            exc = self._problem_of(exc, dialect)
        if isinstance(exc, Problem):
            return dialect.response(exc)
        raise exc

    def _problem_of(self, exc: TusError, dialect: Dialect) -> Problem:
        """A service error as a problem document (its headers, e.g. Retry-After, kept)."""
        if isinstance(exc, PayloadTooLarge):
            # "A server responding with a 413 ... as a result of its upload limits MUST
            # include the Upload-Limit header in this response"
            headers = dict(exc.headers)
            headers.update(dialect.limit_header(self._creation_limits()))
            return Problem(413, exc.message, headers=headers)
        if isinstance(exc, ChecksumMismatch):
            return Problem(400, exc.message, headers=exc.headers)
        status = exc.status if 400 <= exc.status < 600 else 500
        if status == 410:
            status = dialect.inactive_status
        return Problem(status, exc.message, headers=exc.headers)

    # --- OPTIONS ----------------------------------------------------------------------------

    def _options(self, dialect: Dialect, allow: str) -> web.Response:
        # From 6: "MUST include the Upload-Limit header field with the corresponding limits
        # in a response to an OPTIONS request"; from 8: "the server MUST include the
        # Accept-Patch header field ... the full application/partial-upload media type".
        # Before 6 the draft has no OPTIONS, nor the media type, nor limits.
        headers = {"Allow": allow}
        if dialect.partial_upload:
            headers["Accept-Patch"] = PARTIAL_UPLOAD
        headers.update(dialect.limit_header(self._creation_limits()))
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

    # --- creation (POST, PUT or PATCH on the creation URL) ----------------------------------

    async def _create(self, request: web.Request, dialect: Dialect) -> web.Response:
        refuse_encoded_body(request)
        # "A client can start a resumable upload from any request that can carry content by
        # including the Upload-Complete header field" (Upload-Incomplete in version 3)
        complete = dialect.read_complete(request, creating=True)
        declared = dialect.read_length(request)
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
            raise self._problem_of(exc, dialect) from None
        upload_id = status.record.id
        location = self._location(request, upload_id)
        limits = dialect.limit_header(self._upload_limits(status))
        # "the server SHOULD announce the upload resource by sending an interim response with
        # the 104 (Upload Resumption Supported) status code ... it MUST include Location ...
        # and MUST include the Upload-Limit header field" (a MAY in 6 and 7; no limits
        # before 6)
        await send_104(request, dialect, {"Location": location, **limits})
        try:
            if not status.finished and (content_length != 0 or complete):
                status = await self._write(
                    request,
                    dialect,
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
                problem = self._problem_of(exc, dialect)
            if problem is None:
                raise
            problem.headers.setdefault("Location", location)
            if dialect.offset_on_errors:
                problem.headers.setdefault("Upload-Offset", str(status.offset or 0))
            raise problem from None
        # "If the Upload-Complete header field is set to false ... the server MUST include
        # the Location response header field ... and MUST include the Upload-Limit header";
        # up to 6: "201 (Created)" with the offset, complete or not.
        headers = {"Location": location, **self._state_headers(dialect, status)}
        if not status.finished:
            headers.update(dialect.limit_header(self._upload_limits(status)))
        return web.Response(status=201, headers=headers)

    # --- offset retrieval (HEAD) ------------------------------------------------------------

    async def _head(self, request: web.Request, dialect: Dialect, upload_id: str) -> web.Response:
        principal = await self._gate.principal(request)
        # Takes the upload's lock: a stale request still appending is made to let go first,
        # so the offset sent here is one the next append will be accepted at.
        status = await self._service.status(principal, upload_id)
        # "MUST include the offset ..., the completeness state ..., the length ... (unless
        # the client has not supplied one), MUST indicate the limits ... SHOULD include
        # Cache-Control: no-store"
        headers = self._state_headers(dialect, status)
        headers.update(dialect.limit_header(self._upload_limits(status)))
        headers["Cache-Control"] = "no-store"
        return web.Response(status=204, headers=headers)

    @staticmethod
    def _state_headers(dialect: Dialect, status: UploadStatus) -> dict[str, str]:
        rec = status.record
        if rec.is_final and status.offset is None:
            # A tus final still waiting for its partials: complete as far as any client is
            # concerned (it takes no content; its bytes are the partials'), not an upload at
            # offset 0 inviting an append that is then refused.
            return dialect.state_headers(rec.length or 0, True, rec.length)
        return dialect.state_headers(status.offset or 0, status.finished, rec.length)

    @staticmethod
    def _progress_headers(dialect: Dialect, progress: Progress | None) -> dict[str, str]:
        """The state headers of an upload whose append stopped early."""
        if progress is None:
            return {}
        return dialect.state_headers(progress.offset, progress.finished, progress.length)

    # --- append (PATCH on an upload URL) ----------------------------------------------------

    async def _append_request(
        self, request: web.Request, dialect: Dialect, upload_id: str
    ) -> web.Response:
        refuse_encoded_body(request)
        ctype = request.headers.get("Content-Type", "")
        if dialect.partial_upload and ctype.split(";", 1)[0].strip().lower() != PARTIAL_UPLOAD:
            # From 6: "The request MUST use the PATCH method with the application/partial-
            # upload media type"; RFC 5789: an unsupported patch document is a 415.
            raise Problem(
                415,
                f"appending takes Content-Type: {PARTIAL_UPLOAD}",
                headers={"Accept-Patch": PARTIAL_UPLOAD},
            )
        # "The client MUST indicate the offset ... by including the Upload-Offset header"
        offset = sfv.parse_non_negative_integer(field(request, "Upload-Offset"))
        if offset is None:
            raise Problem(400, "Upload-Offset must be a non-negative structured-field Integer")
        # "The request MUST include the Upload-Complete header field." (from 7; before, an
        # absent field has the meaning its version gives it)
        complete = dialect.read_complete(request, creating=False)
        status: UploadStatus | None = None
        try:
            declared = dialect.read_length(request)
            content_length = _content_length(request)
            content_digests = _digests(request, "Content-Digest")
            repr_digests = _digests(request, "Repr-Digest")
            principal = await self._gate.principal(request)
            status = await self._service.status(principal, upload_id)
            status = await self._append(
                request,
                dialect,
                principal,
                status,
                offset=offset,
                complete=complete,
                declared=declared,
                content_length=content_length,
                content_digests=content_digests,
                repr_digests=repr_digests,
            )
        except (Problem, TusError) as exc:
            problem = exc if isinstance(exc, Problem) else self._problem_of(exc, dialect)
            if dialect.offset_on_errors and status is not None:
                # Up to 6: the offset in every answer about an active upload, failures too.
                problem.headers.setdefault("Upload-Offset", str(status.offset or 0))
            if dialect.complete_on_errors and not complete:
                # 7: "Any response, successful or not, MUST then include the Upload-Complete
                # header field with a false value" (a malformed field, a missing upload too).
                problem.headers.update(dialect.completeness(False))
            raise problem from None
        headers = self._state_headers(dialect, status)
        # Up to 6: "201 (Created)" (complete or not); from 7: a 2xx with Upload-Complete, the
        # draft's examples answer 204 while incomplete and 200 once complete.
        return web.Response(status=dialect.append_status[status.finished], headers=headers)

    async def _append(
        self,
        request: web.Request,
        dialect: Dialect,
        principal: Principal,
        status: UploadStatus,
        *,
        offset: int,
        complete: bool,
        declared: int | None,
        content_length: int | None,
        content_digests: dict[str, bytes],
        repr_digests: dict[str, bytes],
    ) -> UploadStatus:
        if status.finished or status.record.is_final:
            # "If the upload is already complete, the server MUST NOT modify the upload
            # resource and MUST reject the request." (A tus final takes no content: it is
            # complete by construction.)
            state = self._state_headers(dialect, status)
            if content_length != 0 and INCONSISTENT_LENGTH in dialect.problem_types:
                # From 7: content for a complete upload is an inconsistent length.
                raise inconsistent_length("the upload is already complete", state)
            raise Problem(
                400,
                "the upload is already complete",
                type_=COMPLETED_UPLOAD,
                title="upload is already completed",
                headers=state,
            )
        current = status.offset or 0
        if offset != current:
            raise mismatching_offset(current, offset)
        length = _deduce_length(
            complete=complete,
            offset=offset,
            content_length=content_length,
            declared=declared,
            recorded=status.record.length,
        )
        return await self._write(
            request,
            dialect,
            principal,
            status,
            offset=offset,
            complete=complete,
            length=length,
            content_length=content_length,
            content_digests=content_digests,
            repr_digests=repr_digests,
        )

    async def _write(
        self,
        request: web.Request,
        dialect: Dialect,
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
        # This request completes the upload if it says so, or if its content is known to
        # reach the length (as clients that complete by length send): the representation is
        # checked then. Not for content of unknown length: every such request would read the
        # whole upload back (a chunked one that completes by length is left to the pipeline's
        # sha-256 check).
        ends = complete or (
            length is not None and content_length is not None and offset + content_length >= length
        )
        # (At another offset than the stored one the request is refused: nothing to read.)
        if ends and offset == status.offset:
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
                # "marking the upload resource invalid and rejecting any further interaction"
                overrun_cancels=True,
                wrap=tee,
            )
        except _DigestMismatch as exc:
            raise await self._digest_failure(
                principal, dialect, upload_id, offset, exc.check
            ) from None
        except ChecksumMismatch:
            assert primary is not None  # the service checks nothing else
            raise await self._digest_failure(
                principal, dialect, upload_id, offset, primary
            ) from None
        except Conflict as exc:
            expected = sfv.parse_non_negative_integer(exc.headers.get("Upload-Offset"))
            raise mismatching_offset(expected or 0, offset) from None
        except PayloadTooLarge as exc:
            if "Upload-Offset" in exc.headers and (length is not None or rec.length is not None):
                # The content went past the upload's length while it was read (no
                # Content-Length to refuse it upfront): the upload was cancelled.
                raise inconsistent_length(
                    "the content goes past the upload's length", exc.headers
                ) from None
            # A length over the maximum size, or a quota: a limit, answered as one.
            raise self._problem_of(exc, dialect) from None
        except (UploadInterrupted, UploadSuspended, RequestTimeout) as exc:
            # Released to a newer request, the server is restarting or the content stalled:
            # what arrived is stored, the client resumes from the offset.
            headers = {**exc.headers, **self._progress_headers(dialect, exc.progress)}
            raise Problem(exc.status, exc.message, headers=headers) from None
        stopped = readers and readers[0].interruption is not Interruption.NONE
        if complete and not result.finished and not stopped:
            # The client said this was the end, but the bytes fall short of the length.
            raise inconsistent_length(
                "Upload-Complete: ?1, but the upload's length is not reached",
                self._state_headers(dialect, result),
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
            hashers = await self._prefixes.hashers(
                upload_id,
                offset,
                [c.name for c in checks],
                lambda: self._service.read(upload_id, 0, offset),
            )
        except StorageError:
            _log.warning("cannot read an upload back for Repr-Digest", upload_id=upload_id)
            return []
        for check in checks:
            check.hasher = hashers[check.name]
        return checks

    async def _digest_failure(
        self,
        principal: Principal,
        dialect: Dialect,
        upload_id: str,
        offset: int,
        check: _DigestCheck,
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
            headers={"Upload-Offset": str(offset), **dialect.completeness(False)},
            members={"field": check.field, "algorithm": check.name},
        )

    # --- cancellation (DELETE) --------------------------------------------------------------

    async def _cancel(self, request: web.Request, upload_id: str) -> web.Response:
        principal = await self._gate.principal(request)
        # Takes the lock, so an append still running is made to stop first.
        await self._service.terminate(principal, upload_id)
        return web.Response(status=204)


# --- request helpers ----------------------------------------------------------------------


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
        raise inconsistent_length(
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
            raise inconsistent_length(f"the length {length} is below the offset {offset}")
        if content_length is not None and offset + content_length > length:
            # "the server MUST prevent the offset from exceeding the upload length"
            raise inconsistent_length(
                f"{content_length} bytes at offset {offset} go past the length {length}"
            )
    return length


def _digests(request: web.Request, name: str) -> dict[str, bytes]:
    """The supported members of a digest field (RFC 9530), by algorithm name.

    A field that is not a Dictionary of Byte Sequences makes the request malformed (400):
    an integrity check the client asked for is never silently dropped. Unknown algorithms are
    ignored; a supported one with a digest of the wrong size is malformed too.
    """
    raw = field(request, name)
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
    metadata: dict[str, bytes | None] = dict(representation_metadata(request))
    for algorithm, digest in repr_digests.items():
        metadata[_REPR_METADATA[algorithm]] = base64.b64encode(digest)
    return metadata
