"""The tus 1.0.0 handlers: thin translations between HTTP and the UploadService.

Comments quote the spec (tus-resumable-upload-protocol, protocol.md) next to the code that
honours it.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from auth import Principal
from auth.gateway import Gate, OpenGate

from ..catalog.files import FileRecord, FileRepository, FileStatus
from ..catalog.uploads import UploadRecord
from ..errors import (
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    RepeatedHeader,
    TusError,
    UnsupportedMediaType,
)
from ..http_io import ByteReader, caller_of, refuse_encoded_body, stream_bytes
from ..metrics import Metrics
from ..pipeline.pipeline import Pipeline
from ..settings import HttpSettings
from ..types import Checksum
from ..uploads.service import UploadService, UploadStatus
from .headers import (
    IETF_IGNORED_WHEN_REPEATED,
    SUPPORTED_CHECKSUMS,
    TUS_VERSION,
    ConcatFinal,
    format_http_date,
    format_metadata,
    is_valid_upload_id,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_non_negative_int,
    refuse_repeated,
)
from .ietf import IetfHandlers

__all__ = ["TusHandlers", "stream_bytes"]

_log = structlog.get_logger("tusserver.http")

OFFSET_OCTET_STREAM = "application/offset+octet-stream"


class TusHandlers:
    def __init__(
        self,
        *,
        config: HttpSettings,
        base_path: str,
        service: UploadService,
        files: FileRepository,
        pipeline: Pipeline,
        gate: Gate | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._config = config
        self._default_base_path = base_path
        self._service = service
        self._files = files
        self._pipeline = pipeline
        self._gate = gate or OpenGate()
        # Resumable Uploads for HTTP (the IETF draft), on the same URLs and upload records.
        self._ietf = IetfHandlers(
            config=service.config,
            service=service,
            gate=self._gate,
            location=self._location,
        )

    def routes(self, base_path: str) -> list[web.RouteDef]:
        """Routes for a (sub)app: the creation URL and each upload's URL, all methods."""
        return [
            web.route("*", base_path, self.collection),
            web.route("*", base_path.rstrip("/"), self.collection),
            web.route("*", base_path + "{upload_id}", self.item),
        ]

    # --- dispatch (X-HTTP-Method-Override is honoured, so routing is by effective method) ---

    @staticmethod
    def effective_method(request: web.Request) -> str:
        """``X-HTTP-Method-Override``, when present, is the method (for limited clients).

        The tus spec says so for any request; CSRF protection looks at this same effective
        method (auth.gateway), so a GET carrying an override is not treated as safe.
        """
        override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        if override and override.isalpha() and len(override) <= 16:
            return override
        return request.method

    async def collection(self, request: web.Request) -> web.StreamResponse:
        """The creation URL."""
        return await self._dispatch(request, None)

    async def item(self, request: web.Request) -> web.StreamResponse:
        """An upload's URL."""
        return await self._dispatch(request, request.match_info["upload_id"])

    async def _dispatch(self, request: web.Request, upload_id: str | None) -> web.StreamResponse:
        """Every request of the endpoint, tus or the IETF draft, enters here.

        Headers a request may carry once are checked first, before any of them is read, so
        no handler, lock or limit below can see another value than the one there is.
        """
        method = self.effective_method(request)
        ietf = self._ietf.handles(request, method)
        try:
            refuse_repeated(request.headers, ignored=IETF_IGNORED_WHEN_REPEATED if ietf else ())
        except RepeatedHeader as exc:
            if ietf:
                return self._ietf.refused(exc)  # a problem document, as the draft's errors are
            raise
        if ietf:
            if upload_id is None:
                return await self._ietf.collection(request, method)
            return await self._ietf.item(request, method, upload_id)
        if upload_id is None:
            return await self._on_collection(request, method)
        return await self._on_item(request, method, upload_id)

    async def _on_collection(self, request: web.Request, method: str) -> web.StreamResponse:
        if method == "OPTIONS":
            return self.options()
        if method == "POST":
            return await self.post(request)
        raise MethodNotAllowed(
            f"{method} is not allowed on the creation URL", headers={"Allow": "OPTIONS, POST"}
        )

    async def _on_item(
        self, request: web.Request, method: str, upload_id: str
    ) -> web.StreamResponse:
        if method == "OPTIONS":
            return self.options()
        if not is_valid_upload_id(upload_id):
            raise NotFound("no such upload")
        if method == "HEAD":
            return await self.head(request, upload_id)
        if method == "PATCH":
            return await self.patch(request, upload_id)
        if method == "DELETE":
            return await self.delete(request, upload_id)
        if method == "GET":
            return await self.get(request, upload_id)
        raise MethodNotAllowed(
            f"{method} is not allowed on an upload",
            headers={"Allow": "OPTIONS, HEAD, PATCH, DELETE, GET"},
        )

    # --- OPTIONS --------------------------------------------------------------------------

    def options(self) -> web.Response:
        # "A successful response ... MUST contain the Tus-Version header. It MAY include the
        # Tus-Extension and Tus-Max-Size headers."
        headers = {
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(self._service.extensions()),
            "Tus-Checksum-Algorithm": ",".join(SUPPORTED_CHECKSUMS),
        }
        max_size = self._service.max_size
        if max_size is not None:
            headers["Tus-Max-Size"] = str(max_size)
        return web.Response(status=204, headers=headers)

    # --- POST (creation, creation-with-upload, defer-length, concatenation) -----------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        _require_tus_resumable(request)
        refuse_encoded_body(request)
        h = request.headers
        concat = None
        if "Upload-Concat" in h:
            concat = parse_concat(h["Upload-Concat"], self._base_path(request))
        length: int | None = None
        if isinstance(concat, ConcatFinal):
            # "The Client MUST NOT include the Upload-Length header in the final upload
            # creation."
            if "Upload-Length" in h or "Upload-Defer-Length" in h:
                raise BadRequest("a final upload must not carry Upload-Length")
            if _has_body(request):
                raise BadRequest("a final upload takes no body")
        elif "Upload-Length" in h:
            if "Upload-Defer-Length" in h:
                raise BadRequest("send either Upload-Length or Upload-Defer-Length, not both")
            length = parse_non_negative_int(h["Upload-Length"], "Upload-Length")
        elif "Upload-Defer-Length" in h:
            parse_defer_length(h["Upload-Defer-Length"])
        else:
            raise BadRequest("Upload-Length or Upload-Defer-Length: 1 is required")
        metadata = parse_metadata(h.get("Upload-Metadata", ""))
        with_body = _has_body(request)
        if with_body:
            _require_offset_octet_stream(request)
        principal = await self._gate.principal(request)
        # Refused before the upload is created: a 400 leaves nothing behind.
        checksum = _checksum_of(request) if with_body else None
        status = await self._service.create(
            caller_of(self._gate, request, principal),
            length=length,
            metadata=metadata,
            concat=concat,
        )
        location = self._location(request, status.record.id)
        headers = {"Location": location}
        if with_body:
            # creation-with-upload: the body is the first chunk, at offset 0.
            try:
                status = await self._append(
                    request, principal, status.record.id, 0, checksum, created=status.record
                )
            except TusError as exc:
                # The upload exists: tell the client where, so it can resume.
                exc.headers.setdefault("Location", location)
                raise
            assert status.offset is not None
            headers["Upload-Offset"] = str(status.offset)
        elif _is_offset_octet_stream(request) and status.offset is not None:
            # creation-with-upload of an empty first chunk: the offset stored all the same.
            headers["Upload-Offset"] = str(status.offset)
        _add_expires(headers, status)
        return web.Response(status=201, headers=headers)

    # --- HEAD -----------------------------------------------------------------------------

    async def head(self, request: web.Request, upload_id: str) -> web.Response:
        _require_tus_resumable(request)
        principal = await self._gate.principal(request)
        status = await self._service.status(principal, upload_id)
        rec = status.record
        # "The Server MUST prevent the client and/or proxies from caching the response."
        headers = {"Cache-Control": "no-store"}
        if status.offset is not None:
            headers["Upload-Offset"] = str(status.offset)
        if rec.length is not None:
            headers["Upload-Length"] = str(rec.length)
        elif not rec.is_final:
            headers["Upload-Defer-Length"] = "1"
        if rec.metadata:
            headers["Upload-Metadata"] = format_metadata(rec.metadata)
        if rec.is_partial:
            headers["Upload-Concat"] = "partial"
        elif rec.is_final:
            base = self._base_path(request)
            headers["Upload-Concat"] = "final;" + " ".join(base + p for p in status.parts)
        _add_expires(headers, status)
        if rec.file_id is not None and rec.file_status is not None:
            # What the finished upload became (see GET /file/{id} for the details); its
            # status is read with the upload.
            headers["X-File-Id"] = rec.file_id
            headers["X-File-Status"] = rec.file_status
        return web.Response(status=200, headers=headers)

    # --- PATCH ----------------------------------------------------------------------------

    async def patch(self, request: web.Request, upload_id: str) -> web.Response:
        _require_tus_resumable(request)
        # "All PATCH requests MUST use Content-Type: application/offset+octet-stream,
        # otherwise the server SHOULD return a 415 Unsupported Media Type status."
        _require_offset_octet_stream(request)
        refuse_encoded_body(request)
        if "Upload-Offset" not in request.headers:
            raise BadRequest("Upload-Offset is required")
        offset = parse_non_negative_int(request.headers["Upload-Offset"], "Upload-Offset")
        principal = await self._gate.principal(request)
        status = await self._append(request, principal, upload_id, offset, _checksum_of(request))
        assert status.offset is not None
        headers = {"Upload-Offset": str(status.offset)}
        _add_expires(headers, status)
        return web.Response(status=204, headers=headers)

    async def _append(
        self,
        request: web.Request,
        principal: Principal,
        upload_id: str,
        offset: int,
        checksum: Checksum | None,
        *,
        created: UploadRecord | None = None,
    ) -> UploadStatus:
        h = request.headers
        new_length = None
        if "Upload-Length" in h:
            new_length = parse_non_negative_int(h["Upload-Length"], "Upload-Length")
        return await self._service.receive(
            caller_of(self._gate, request, principal),
            upload_id,
            offset=offset,
            body=request.content,
            content_length=request.content_length,
            new_length=new_length,
            checksum=checksum,
            created=created,
        )

    async def shutdown(self, _app: web.Application) -> None:
        """on_shutdown: in-flight PATCHes stop reading, store what they have and answer.

        Without this, aiohttp stops delivering body bytes at shutdown and every PATCH in
        flight would wait for the whole shutdown timeout.
        """
        self._service.release_all()

    # --- DELETE (termination) ---------------------------------------------------------------

    async def delete(self, request: web.Request, upload_id: str) -> web.Response:
        _require_tus_resumable(request)
        principal = await self._gate.principal(request)
        await self._service.terminate(principal, upload_id)
        return web.Response(status=204)

    # --- GET (download of a finished upload) ------------------------------------------------

    async def get(self, request: web.Request, upload_id: str) -> web.StreamResponse:
        principal = await self._gate.principal(request)
        rec = await self._service.finished_upload(principal, upload_id)
        if rec.is_partial:
            # A partial upload's bytes were never validated (type policy, virus scan): they
            # are served only as part of a final upload, once that is a committed file.
            raise Forbidden("a partial upload is not served; concatenate it into a final upload")
        f = await self._files.get(rec.file_id) if rec.file_id else None
        if f is not None and f.status in (FileStatus.REJECTED, FileStatus.FAILED):
            raise Forbidden(f"the file was {f.status.value}: {f.reason}")
        if f is None or f.status is not FileStatus.COMMITTED:
            # Nothing is served before the pipeline has validated it, to the uploader either.
            raise Conflict(
                "the file is still being validated; try again once it is committed",
                headers={"Retry-After": "2"},
            )
        name = rec.metadata.get("filename") or rec.metadata.get("name")
        return await stream_bytes(
            request,
            # The file's bytes as stored: fewer than the upload's when the pipeline stored
            # a copy without location metadata (strip_location).
            size=f.size,
            name=name.decode("utf-8", "replace") if name else None,
            reader=self._reader(f),
            on_sent=self._metrics.bytes_served.inc if self._metrics is not None else None,
        )

    def _reader(self, f: FileRecord) -> ByteReader:
        return lambda start, length: self._pipeline.download(f, start, length)

    # --- URLs -----------------------------------------------------------------------------

    def _base_path(self, request: web.Request) -> str:
        """The creation URL's path as mounted (sub-app prefix included), ending in '/'."""
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else self._default_base_path
        if canonical.endswith("{upload_id}"):
            canonical = canonical[: -len("{upload_id}")]
        return canonical if canonical.endswith("/") else canonical + "/"

    def _location(self, request: web.Request, upload_id: str) -> str:
        path = self._base_path(request) + upload_id
        if self._config.relative_location:
            return path
        scheme, host = request.scheme, request.host
        if self._config.trust_proxy_headers:
            fwd = request.forwarded[0] if request.forwarded else {}
            scheme = fwd.get("proto") or _first(request.headers.get("X-Forwarded-Proto")) or scheme
            host = fwd.get("host") or _first(request.headers.get("X-Forwarded-Host")) or host
        if scheme not in ("http", "https"):
            scheme = "http"
        return f"{scheme}://{host}{path}"


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[0].strip() or None


def _has_body(request: web.Request) -> bool:
    if request.content_length is not None:
        return request.content_length > 0
    return request.body_exists


def _require_tus_resumable(request: web.Request) -> None:
    # "If the Client requested version is not supported by the Server, it MUST respond with
    # the 412 Precondition Failed status and MUST include the Tus-Version header."
    version = request.headers.get("Tus-Resumable")
    if version != TUS_VERSION:
        shown = "missing" if version is None else f"{version[:32]!r}"
        raise PreconditionFailed(
            f"Tus-Resumable {shown}: this server speaks tus {TUS_VERSION}",
            headers={"Tus-Version": TUS_VERSION},
        )


def _is_offset_octet_stream(request: web.Request) -> bool:
    ctype = request.headers.get("Content-Type", "")
    return ctype.split(";", 1)[0].strip().lower() == OFFSET_OCTET_STREAM


def _require_offset_octet_stream(request: web.Request) -> None:
    if not _is_offset_octet_stream(request):
        raise UnsupportedMediaType(f"Content-Type must be {OFFSET_OCTET_STREAM}")


def _add_expires(headers: dict[str, str], status: UploadStatus) -> None:
    # "The Upload-Expires response header indicates the time after which the unfinished
    # upload expires." Finished uploads do not expire, except partial ones.
    rec = status.record
    if rec.expires_at is not None and (not status.finished or rec.is_partial):
        headers["Upload-Expires"] = format_http_date(rec.expires_at)


def _checksum_of(request: web.Request) -> Checksum | None:
    """The checksum extension's Upload-Checksum (400 when malformed or not supported)."""
    value = request.headers.get("Upload-Checksum")
    return None if value is None else parse_checksum(value)
