"""Files API: list and search, metadata, download, organization, plain form uploads.

The seed's paths (``/files``, ``/file/{id}``, ``/file/{id}/content``, ``/upload``) and the same
under ``/api/v1``. A file that belongs to someone else answers 404, exactly like a missing
one. Every query parameter is parsed and bounded before it reaches SQL; SQL is never built
from strings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import re
from typing import Any

import structlog
from aiohttp import BodyPartReader, StreamReader, web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError

from auth import Principal
from auth.gateway import Gate

from ..catalog import files as catalog
from ..catalog.analytics import Event, EventRecorder
from ..catalog.db import Database
from ..catalog.files import FileQuery, FileRecord, FileRepository, FileStatus
from ..errors import (
    BadRequest,
    NotFound,
    RequestTimeout,
    TooManyRequests,
    TusError,
    UploadInterrupted,
    UploadSuspended,
)
from ..errors import StateConflict as Conflict
from ..http_io import caller_of, refuse_encoded_body, stream_bytes
from ..http_util import content_disposition, not_modified, parse_range, safe_filename
from ..metrics import Metrics
from ..pipeline.media import THUMBNAIL_SIZES, delete_thumbnails, thumbnail_key
from ..pipeline.media.probe import IMAGE_TYPES, probe_kind
from ..pipeline.validators import CATEGORIES
from ..protocol.headers import format_http_date
from ..uploads.service import UploadService, UploadStatus
from .common import parse_when, read_json, text_param

_log = structlog.get_logger("tusserver.api.files")

__all__ = ["FilesApi", "file_json", "normalize_folder"]

_FILE_ID = re.compile(r"[0-9a-f]{32}")
_MIME = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}/(\*|[a-z0-9][a-z0-9.+-]{0,127})")
_TAG = re.compile(r"[\w][\w .:-]{0,63}")
MAX_LIMIT = 200
MAX_TAGS = 32


def file_json(f: FileRecord, base: str = "") -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        # The detected MIME type (the declared one until the pipeline has looked at the bytes).
        "type": f.detected_type or f.declared_type,
        "folder": f.folder,
        "size": f.size,
        "status": f.status.value,
        "reason": f.reason,
        "detected_type": f.detected_type,
        "declared_type": f.declared_type,
        "type_mismatch": f.type_mismatch,
        "category": f.category,
        "sha256": f.sha256,
        "tags": list(f.tags),
        "metadata": dict(f.metadata),
        "owner": f.owner,
        "upload_id": f.upload_id,
        "created_at": f.created_at.isoformat(),
        "committed_at": f.committed_at.isoformat() if f.committed_at else None,
        "content_url": f"{base}/file/{f.id}/content",
        "media": dict(f.media) if f.media else None,
        "thumbnail_sizes": _thumbnail_sizes(f),
        "thumbnail_url": f"{base}/file/{f.id}/thumbnail" if _thumbnail_sizes(f) else None,
        "location_stripped": f.location_stripped,
    }


def _thumbnail_sizes(f: FileRecord) -> list[int]:
    return sorted(int(k) for k in (f.thumbnails or {}))


def normalize_folder(raw: str) -> str:
    """``a/b`` or ``/a/b/`` -> ``/a/b/``; each segment sanitized; no '.' or '..'."""
    if len(raw) > 1024:
        raise BadRequest("folder: at most 1024 characters")
    segments = [s for s in raw.split("/") if s]
    if len(segments) > 32:
        raise BadRequest("folder: at most 32 levels")
    clean = []
    for seg in segments:
        if seg in (".", ".."):
            raise BadRequest("folder: '.' and '..' are not folder names")
        clean.append(safe_filename(seg, limit=128))
    folder = "/" + "".join(s + "/" for s in clean)
    if len(folder) > 1024:
        # The path as stored (slashes added around it): what the catalog's column holds.
        raise BadRequest("folder: at most 1024 characters")
    return folder


def _int_param(query: Any, name: str, *, minimum: int, maximum: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,19}", raw):
        raise BadRequest(f"{name}: must be a whole number")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name}: must be between {minimum} and {maximum}")
    return value


def _seconds_param(query: Any, name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,6})?", raw):
        raise BadRequest(f"{name}: seconds, like 90 or 12.5")
    return float(raw)


def _encode_cursor(sort: str, f: FileRecord) -> str:
    """``sort`` is the signed sort ("-date"): a cursor is only valid for the same order."""
    value = catalog.sort_value(f, sort.removeprefix("-"))
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, f.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    invalid = BadRequest("cursor: invalid or from another sort order; start again without it")
    if len(cursor) > 2048:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, value, last_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise invalid from None
    if kind != sort or not isinstance(last_id, str) or not _FILE_ID.fullmatch(last_id):
        raise invalid
    field = sort.removeprefix("-")
    if field == "date":
        if not isinstance(value, str):
            raise invalid
        try:
            value = dt.datetime.fromisoformat(value)
            if value.tzinfo is None:
                raise invalid
            # (An offset can carry an instant past the years a datetime holds.)
            value = value.astimezone(dt.UTC)
        except (ValueError, OverflowError):
            raise invalid from None
    elif field == "name":
        if (
            not isinstance(value, str)
            or len(value) > 255
            or "\x00" in value
            or not _encodable(value)  # (JSON carries a lone surrogate; no database does)
        ):
            raise invalid
    elif not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise invalid
    return value, last_id


def parse_query(query: Any, principal: Principal) -> tuple[FileQuery, str]:
    """A FileQuery from request parameters; the second value is the sort name."""
    known = {
        "q", "match", "type", "category", "min_size", "max_size", "from", "to", "tag",
        "folder", "status", "sort", "cursor", "limit", "owner",
        "orientation", "min_width", "min_height", "min_duration", "max_duration",
    }  # fmt: skip
    unknown = sorted(set(query.keys()) - known)
    if unknown:
        raise BadRequest(f"unknown parameter: {unknown[0][:40]}")
    q = text_param(query, "q", max_len=200)
    match = query.get("match", "substring")
    if match not in ("substring", "prefix"):
        raise BadRequest("match: substring or prefix")
    mime = query.get("type") or None
    if mime is not None and not _MIME.fullmatch(mime.lower()):
        raise BadRequest("type: a MIME type like image/png or image/*")
    category = query.get("category") or None
    if category is not None and category not in CATEGORIES:
        raise BadRequest(f"category: one of {', '.join(CATEGORIES)}")
    status = query.get("status") or None
    if status is not None and status not in {s.value for s in FileStatus}:
        raise BadRequest(f"status: one of {', '.join(s.value for s in FileStatus)}")
    sort_raw = query.get("sort", "-date")
    descending = sort_raw.startswith("-")
    sort = sort_raw.removeprefix("-")
    if sort not in catalog.SORTS:
        raise BadRequest("sort: date, name or size, with '-' for descending")
    tags = tuple(query.getall("tag", []))
    if len(tags) > 10 or not all(_TAG.fullmatch(t) for t in tags):
        raise BadRequest("tag: at most 10 tags of letters, digits, space . : - _")
    folder = normalize_folder(query["folder"]) if query.get("folder") else None
    limit = _int_param(query, "limit", minimum=1, maximum=MAX_LIMIT) or 50
    max_int = 2**63 - 1
    owner: str | None = principal.user_id
    wanted_owner = text_param(query, "owner", max_len=64)
    if principal.is_admin:
        owner = wanted_owner
    elif wanted_owner and wanted_owner != principal.user_id:
        raise BadRequest("owner: only admins may search other users' files")
    orientation = query.get("orientation") or None
    if orientation is not None and orientation not in ("landscape", "portrait", "square"):
        raise BadRequest("orientation: landscape, portrait or square")
    cursor = query.get("cursor")
    fq = FileQuery(
        orientation=orientation,
        min_width=_int_param(query, "min_width", minimum=0, maximum=2**31 - 1),
        min_height=_int_param(query, "min_height", minimum=0, maximum=2**31 - 1),
        min_duration=_seconds_param(query, "min_duration"),
        max_duration=_seconds_param(query, "max_duration"),
        owner=owner,
        q=q,
        match=match,
        mime=mime.lower() if mime else None,
        category=category,
        min_size=_int_param(query, "min_size", minimum=0, maximum=max_int),
        max_size=_int_param(query, "max_size", minimum=0, maximum=max_int),
        created_from=parse_when(query.get("from"), "from"),
        created_to=parse_when(query.get("to"), "to"),
        tags=tags,
        folder=folder,
        status=status,
        sort=sort,
        descending=descending,
        after=_decode_cursor(cursor, sort_raw) if cursor else None,
        limit=limit,
    )
    return fq, sort_raw


class FilesApi:
    def __init__(
        self,
        *,
        db: Database,
        files: FileRepository,
        pipeline: Any,
        uploads: UploadService,
        gate: Gate,
        events: EventRecorder | None = None,
        metrics: Metrics | None = None,
        redirect_for: float = 0.0,
    ) -> None:
        self._redirect_for = redirect_for
        self._metrics = metrics
        self._db = db
        self._files = files
        self._pipeline = pipeline
        self._uploads = uploads
        self._gate = gate
        self._events = events

    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        return [
            web.get(f"{prefix}/files", self.list_files),
            web.get(f"{prefix}/file/{{file_id}}", self.get_file),
            web.patch(f"{prefix}/file/{{file_id}}", self.update_file),
            web.delete(f"{prefix}/file/{{file_id}}", self.delete_file),
            web.get(f"{prefix}/file/{{file_id}}/content", self.content),
            web.get(f"{prefix}/file/{{file_id}}/thumbnail", self.thumbnail),
            web.get(f"{prefix}/folders", self.get_folders),
            web.post(f"{prefix}/folders", self.post_folder),
            web.delete(f"{prefix}/folders", self.delete_folder),
            web.post(f"{prefix}/upload", self.form_upload),
        ]

    async def _caller(self, request: web.Request) -> Principal:
        principal = await self._gate.principal(request)
        await self._gate.limit(request, "api", who=principal.user_id)
        return principal

    async def _load(
        self, request: web.Request, principal: Principal, file_id: str, *, cached: bool = False
    ) -> FileRecord:
        """The caller's file or 404. ``cached``: for reads only (writes decide on the row as it
        is); the owner check runs on the record wherever it came from."""
        if not _FILE_ID.fullmatch(file_id):
            raise NotFound("no such file")
        f = await self._files.get(file_id, cached=cached)
        if f is not None and not principal.may_access(f.owner):
            # Someone else's file reads exactly like a missing one; a probe is counted.
            if self._metrics is not None:
                self._metrics.probes.labels("file").inc()
            self._gate.audit(request, "access.denied", actor=principal.user_id, target=file_id)
            f = None
        if f is None:
            raise NotFound("no such file")
        return f

    @staticmethod
    def _base(request: web.Request) -> str:
        return "/api/v1" if request.path.startswith("/api/v1/") else ""

    # --- reading ----------------------------------------------------------------------------

    async def list_files(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        query, sort = parse_query(request.query, principal)
        items = await catalog.search_files(self._db, query)
        base = self._base(request)
        next_cursor = (
            _encode_cursor(sort, items[-1]) if len(items) == query.limit and items else None
        )
        listed = [file_json(f, base) for f in items]
        return web.json_response(
            # "items": the same list under its old name, deprecated (see docs/api.md).
            {"files": listed, "next_cursor": next_cursor, "items": listed},
            headers={"Cache-Control": "private, no-cache"},
        )

    async def get_file(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"], cached=True)
        etag = f'W/"{f.id}-{int(f.updated_at.timestamp() * 1000)}-{f.status.value}"'
        validators = {"ETag": etag, "Last-Modified": format_http_date(f.updated_at)}
        if not_modified(request, etag, f.updated_at):
            return web.Response(status=304, headers=validators)
        return web.json_response(
            file_json(f, self._base(request)),
            headers={"Cache-Control": "private, no-cache", **validators},
        )

    async def content(self, request: web.Request) -> web.StreamResponse:
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"], cached=True)
        if f.status is not FileStatus.COMMITTED:
            if f.status in (FileStatus.REJECTED, FileStatus.FAILED):
                raise NotFound(f"the file was {f.status.value}: {f.reason}")
            raise Conflict("the file is still being processed", headers={"Retry-After": "2"})
        etag = f'"{f.sha256}"'
        modified = f.committed_at or f.created_at
        validators = {"ETag": etag, "Last-Modified": format_http_date(modified)}
        if not_modified(request, etag, modified):
            return web.Response(status=304, headers=validators)
        if request.query.get("preview") == "1":
            return await self._preview(request, principal, f, validators)
        # A download is a GET that sends bytes: a HEAD or a refused range (416) is not one,
        # in the audit log as in analytics.
        download = request.method == "GET"
        if download and self._redirect_for > 0 and f.storage_key:
            url = await self._pipeline.objects.presign_get(
                f.storage_key,
                expires=dt.timedelta(seconds=self._redirect_for),
                filename=f.name,
                # The very header a download through the server gets (stream_bytes).
                content_disposition=content_disposition(f.name),
            )
            if url is not None:
                # The client fetches the bytes (Range included) from S3 directly.
                self._gate.audit(request, "file.download", actor=principal.user_id, target=f.id)
                self._record_download(request, f, f.size)
                return web.Response(
                    status=307,
                    headers={**validators, "Location": url, "Cache-Control": "private, no-store"},
                )
        if download:
            parse_range(request.headers.get("Range"), f.size)  # a 416 is raised before
            self._gate.audit(request, "file.download", actor=principal.user_id, target=f.id)
        resp = await stream_bytes(
            request,
            size=f.size,
            name=f.name,
            reader=lambda start, length: self._pipeline.download(f, start, length),
            extra_headers={**validators, "Cache-Control": "private, no-cache"},
            on_sent=self._metrics.bytes_served.inc if self._metrics is not None else None,
        )
        if download:
            self._record_download(request, f, resp.content_length or 0)
        return resp

    async def _preview(
        self,
        request: web.Request,
        principal: Principal,
        f: FileRecord,
        validators: dict[str, str],
    ) -> web.StreamResponse:
        """The bytes for the page's own player or image (``?preview=1``): not a download in
        analytics or the audit log, and labelled with the detected type when it is media the
        browser may render. Range requests of a player are answered as usual."""
        if request.headers.get("Range", "bytes=0-").startswith("bytes=0-"):
            # Audited once per viewing: a player's later range requests are not.
            self._gate.audit(request, "file.preview", actor=principal.user_id, target=f.id)
        mime = f.detected_type or ""
        playable = mime in IMAGE_TYPES or mime.startswith(("video/", "audio/"))
        return await stream_bytes(
            request,
            size=f.size,
            name=f.name,
            reader=lambda start, length: self._pipeline.read_source(f, start, length),
            content_type=mime if playable else "application/octet-stream",
            extra_headers={
                **validators,
                "Cache-Control": "private, no-cache",
                "Content-Disposition": content_disposition(f.name, inline=True),
            },
            on_sent=self._metrics.bytes_served.inc if self._metrics is not None else None,
        )

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        """``GET /file/{id}/thumbnail?size=256``: a WebP made by the pipeline; 404 if none."""
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"], cached=True)
        sizes = _thumbnail_sizes(f)
        raw = request.query.get("size", "256")
        if not re.fullmatch(r"[0-9]{1,5}", raw):
            raise BadRequest("size: a whole number of pixels")
        size = int(raw)
        if f.status is not FileStatus.COMMITTED or not f.storage_key or not sizes:
            raise NotFound("this file has no thumbnail")
        if size not in sizes:
            raise NotFound(f"no thumbnail of size {size}; sizes: {', '.join(map(str, sizes))}")
        length = int((f.thumbnails or {})[str(size)])
        etag = f'"{f.sha256}-t{size}"'
        modified = f.committed_at or f.created_at
        validators = {
            "ETag": etag,
            "Last-Modified": format_http_date(modified),
            # The thumbnail of a file id never changes: cached by the browser for a year.
            "Cache-Control": "private, max-age=31536000, immutable",
        }
        if not_modified(request, etag, modified):
            return web.Response(status=304, headers=validators)
        key = thumbnail_key(f.storage_key, size)
        resp = await stream_bytes(
            request,
            size=length,
            name=None,
            reader=lambda start, count: self._pipeline.objects.get(key, start, count),
            content_type="image/webp",
            extra_headers={**validators, "Content-Disposition": "inline"},
        )
        return resp

    def _record_download(self, request: web.Request, f: FileRecord, nbytes: int) -> None:
        if self._events is not None:
            self._events.record(
                Event(
                    "file.downloaded",
                    at=dt.datetime.now(dt.UTC),
                    owner=f.owner,
                    file_id=f.id,
                    bytes=nbytes,
                    client=request.headers.get("User-Agent"),
                )
            )

    # --- organization -----------------------------------------------------------------------

    async def update_file(self, request: web.Request) -> web.Response:
        """Rename (``name``), move (``folder``) and tag (``tags``) a file."""
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"])
        data = await read_json(request)
        unknown = set(data) - {"name", "folder", "tags"}
        if unknown:
            raise BadRequest(f"unknown field: {sorted(unknown)[0][:40]}")
        name = None
        if "name" in data:
            if not isinstance(data["name"], str) or not data["name"].strip():
                raise BadRequest("name: a non-empty string")
            name = safe_filename(data["name"], limit=255)
        folder = None
        if "folder" in data:
            if not isinstance(data["folder"], str):
                raise BadRequest("folder: a path string such as /photos/2024/")
            folder = normalize_folder(data["folder"])
        clean: list[str] | None = None
        if "tags" in data:
            tags = data["tags"]
            if not isinstance(tags, list) or len(tags) > MAX_TAGS:
                raise BadRequest(f"tags: a list of at most {MAX_TAGS} tags")
            clean = []
            for t in tags:
                if not isinstance(t, str) or not _TAG.fullmatch(t.strip()):
                    raise BadRequest("tags: letters, digits, space . : - _ ; at most 64 each")
                if t.strip() not in clean:
                    clean.append(t.strip())
        # Everything is validated: apply it all in one transaction, or nothing.
        await self._files.organize(
            f.id, name=name, folder=folder, tags=clean, now=dt.datetime.now(dt.UTC)
        )
        updated = await self._files.get(f.id)
        if updated is None:  # deleted by another request meanwhile
            raise NotFound("no such file")
        return web.json_response(file_json(updated, self._base(request)))

    async def delete_file(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"])
        if f.status in (FileStatus.RECEIVED, FileStatus.VALIDATING):
            raise Conflict("the file is still being processed; delete it when it is done")
        if f.storage_key:
            # Thumbnails are stored before the file's own object: a file that failed after
            # them (its object refused, its attempts used up) has them too. Deleting what
            # is not there is fine.
            sizes = set(_thumbnail_sizes(f))
            if probe_kind(f.detected_type or "") is not None:
                # Media: a thumbnail stored before a later step failed is not in the row.
                sizes.update(THUMBNAIL_SIZES)
            await delete_thumbnails(self._pipeline.objects, f.storage_key, sorted(sizes))
            await self._pipeline.objects.delete(f.storage_key)
        if f.upload_id:
            # The tus URL of the upload answers 410 from now on.
            await self._uploads.discard(f.upload_id)
        if not await self._files.delete(f.id):
            # Another request deleted it meanwhile: that one is the deletion, counted once.
            raise NotFound("no such file")
        await self._gate_record(request, principal, f)
        if self._events is not None:
            self._events.record(
                Event("file.deleted", at=dt.datetime.now(dt.UTC), owner=f.owner, file_id=f.id,
                      bytes=f.size)
            )  # fmt: skip
        return web.Response(status=204)

    async def _gate_record(self, request: web.Request, principal: Principal, f: FileRecord) -> None:
        self._gate.audit(request, "file.delete", actor=principal.user_id, target=f.id)

    async def get_folders(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        found = await catalog.list_folders(self._db, principal.user_id)
        if len(found) < 1000:
            return web.json_response({"folders": found})
        # A long list is a long document: written in a thread, a folder at a time. (One
        # json.dumps of the whole list runs in C without letting the GIL go: the event
        # loop waited for all of it, half a second for 100,000 deep folders.)
        body = await asyncio.to_thread(_folders_document, found)
        return web.Response(text=body, content_type="application/json")

    async def post_folder(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        data = await read_json(request)
        if not isinstance(data.get("path"), str):
            raise BadRequest("path: a folder path such as /photos/2024/")
        path = normalize_folder(data["path"])
        try:
            await catalog.create_folder(self._db, principal.user_id, path, dt.datetime.now(dt.UTC))
        except catalog.TooManyFolders:
            raise Conflict(f"at most {catalog.MAX_FOLDERS} folders; delete some first") from None
        return web.json_response({"path": path}, status=201)

    async def delete_folder(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        raw = request.query.get("path")
        if not raw:
            raise BadRequest("path: which folder to delete")
        path = normalize_folder(raw)
        if path == "/":
            raise BadRequest("the root folder cannot be deleted")
        if not await catalog.delete_folder(self._db, principal.user_id, path):
            raise Conflict("the folder is not empty")
        return web.Response(status=204)

    # --- plain (non-resumable) uploads ------------------------------------------------------

    async def form_upload(self, request: web.Request) -> web.Response:
        """``multipart/form-data`` with one or many files, each through the same pipeline.

        Each file is streamed into the chunk store as it arrives (never held in memory) and
        becomes its own upload; a failure of one file is reported in its entry and does not
        stop the others. An optional ``folder`` field before the files says where they go.
        Any other body is one file, named by the ``filename`` query parameter
        (:meth:`_raw_upload`).
        """
        principal = await self._gate.principal(request)
        refuse_encoded_body(request)
        if not request.content_type.startswith("multipart/form-data"):
            return await self._raw_upload(request, principal)
        try:
            reader = await request.multipart()
        except ValueError:  # no boundary in the Content-Type
            raise BadRequest(_MALFORMED_FORM) from None
        results: list[dict[str, Any]] = []
        headers: dict[str, str] = {}
        folder: str | None = None
        idle = self._uploads.config.body_idle_timeout or None
        while True:
            try:
                # Part headers (a few hundred bytes) and other fields: read under the body
                # idle timeout too (the file contents have theirs in BodyReader).
                async with asyncio.timeout(idle):
                    part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise BadRequest("nested multipart bodies are not supported")
                if part.filename is None:
                    raw = await _read_field(part, idle, keep=part.name == "folder")
                    if part.name == "folder":
                        folder = normalize_folder(_text(raw, "folder"))
                    continue
            except (TimeoutError, ValueError, HttpProcessingError) as exc:
                # A boundary, part headers or a field aiohttp cannot read (its message quotes
                # the client's bytes: not echoed back), or that did not come in time. The
                # files before it are stored and reported; the rest of the body is refused.
                refused: TusError = (
                    RequestTimeout(
                        "the form sent nothing for too long", headers={"Connection": "close"}
                    )
                    if isinstance(exc, TimeoutError)
                    else BadRequest(_MALFORMED_FORM)
                )
                if not results:
                    raise refused from None
                results.append(
                    {
                        "filename": None,
                        "error": refused.code,
                        "message": refused.message,
                        "status_code": refused.status,
                    }
                )
                break
            entry, stop = await self._one_form_file(request, principal, part, folder)
            results.append(entry)
            if stop is not None:
                # The body was stopped (shutdown, or a newer request for the upload), or a
                # file was refused by a rate limit or the cap on bodies at once: the parts
                # after this one are not read.
                if isinstance(stop, TooManyRequests) and "Retry-After" in stop.headers:
                    headers["Retry-After"] = stop.headers["Retry-After"]
                break
        if not results:
            raise BadRequest("no file fields in the form")
        base = self._base(request)
        for entry in results:
            if entry.get("file_id"):
                entry["url"] = f"{base}/file/{entry['file_id']}"
        failed = sum(1 for e in results if "error" in e)
        status = 201 if failed < len(results) else 400
        return web.json_response({"files": results}, status=status, headers=headers)

    async def _raw_upload(self, request: web.Request, principal: Principal) -> web.Response:
        """One file as the whole body: ``POST /upload?filename=a.png&mimetype=image/png``."""
        query = request.query
        unknown = sorted(set(query.keys()) - {"filename", "mimetype", "folder"})
        if unknown:
            raise BadRequest(f"unknown parameter: {unknown[0][:40]}")
        raw_name = query.get("filename", "")
        if not raw_name.strip():
            raise BadRequest(
                "send multipart/form-data with one or more file fields, or the file as the "
                "body with ?filename=...&mimetype=..."
            )
        if len(raw_name) > _MAX_FORM_NAME:
            raise BadRequest(f"filename: at most {_MAX_FORM_NAME} characters")
        # As for a form's file: the name is kept as sent; the pipeline makes it safe.
        name = raw_name
        mimetype = (query.get("mimetype") or "").strip().lower()
        if not mimetype:
            declared = request.content_type.lower()
            mimetype = declared if declared and _MIME.fullmatch(declared) else ""
        if not mimetype:
            mimetype = "application/octet-stream"
        if not _MIME.fullmatch(mimetype) or "*" in mimetype:
            raise BadRequest("mimetype: a MIME type like image/png")
        folder = normalize_folder(query["folder"]) if query.get("folder") else None
        final = await self._uploads.upload_whole(
            caller_of(self._gate, request, principal),
            metadata={"filename": name.encode(), "filetype": mimetype.encode()},
            body=request.content,
            content_length=request.content_length,
        )
        file_id = final.record.file_id
        if folder and file_id:
            await self._files.organize(file_id, folder=folder, now=dt.datetime.now(dt.UTC))
        f = await self._files.get(file_id or "")
        entry: dict[str, Any] = {"file_id": file_id, "filename": name, "mimetype": mimetype}
        if f is not None:
            entry.update(file_json(f, self._base(request)))
        entry.update(
            upload_id=final.record.id,
            size=final.offset,
            status=f.status.value if f else "received",
            url=f"{self._base(request)}/file/{file_id}" if file_id else None,
        )
        return web.json_response(entry, status=201)

    async def _one_form_file(
        self,
        request: web.Request,
        principal: Principal,
        part: BodyPartReader,
        folder: str | None,
    ) -> tuple[dict[str, Any], TusError | None]:
        """Upload one file part; its entry, and the error that ended the request's body
        there (no part after it is read), if one did."""
        name = part.filename or "file"
        ctype = part.headers.get("Content-Type", "application/octet-stream")
        # (Header bytes that are not UTF-8 reach us as lone surrogates: shown replaced.)
        entry: dict[str, Any] = {"filename": _shown(name)}

        def created(status: UploadStatus) -> None:
            entry["upload_id"] = status.record.id

        try:
            # Refused in the file's entry, as any other refusal of one file: the files
            # before it are stored and reported, the ones after it are read.
            if not _encodable(name) or not _encodable(ctype):
                raise BadRequest("a file part's name or Content-Type is not valid UTF-8")
            # The name and type are metadata held outside the quota: bounded, as those
            # of a raw upload.
            if len(name) > _MAX_FORM_NAME:
                raise BadRequest(f"a file part's name: at most {_MAX_FORM_NAME} characters")
            if len(ctype) > _MAX_FORM_TYPE:
                raise BadRequest(f"a file part's Content-Type: at most {_MAX_FORM_TYPE} characters")
            final = await self._uploads.upload_whole(
                caller_of(self._gate, request, principal),
                metadata={"filename": name.encode(), "filetype": ctype.encode()},
                body=PartStream(part, request.content),
                on_created=created,
                # The entry tells the upload's id: a file stopped by a shutdown (503) can be
                # resumed with tus from what arrived.
                keep_unfinished=True,
            )
            entry["size"] = final.offset
            entry["file_id"] = final.record.file_id
            if folder and final.record.file_id:
                await self._files.organize(
                    final.record.file_id, folder=folder, now=dt.datetime.now(dt.UTC)
                )
            f = await self._files.get(final.record.file_id or "")
            entry["status"] = f.status.value if f else "received"
        except TusError as exc:
            # A file refused with 429 (a rate limit, or the cap on bodies at once) ends the
            # form too: reading its bytes to throw them away would hold a body without a
            # place, and the files after it would be refused the same way. The client sends
            # them again after Retry-After.
            stopped = isinstance(
                exc, UploadInterrupted | UploadSuspended | RequestTimeout | TooManyRequests
            )
            if not stopped:
                # The rest of the refused file is read past, each wait under the idle
                # timeout like every other wait of the form. Whatever stops that read (the
                # body ends, breaks or stalls inside this part, or was stopped by the refusal
                # itself) means no part follows.
                try:
                    await _read_field(
                        part, self._uploads.config.body_idle_timeout or None, keep=False
                    )
                except Exception:
                    stopped = True
            entry["error"] = exc.code
            entry["message"] = exc.message
            entry["status_code"] = exc.status
            return entry, exc if stopped else None
        return entry, None


_MALFORMED_FORM = "malformed multipart/form-data: a boundary or part headers cannot be read"


def _text(raw: bytes, field: str) -> str:
    """A form field's value as text: UTF-8 (else 400)."""
    if len(raw) > 4 * 1024:
        raise BadRequest(f"{field}: at most 1024 characters")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{field}: not valid UTF-8") from None


def _folders_document(found: list[str]) -> str:
    """``{"folders": [...]}``, each path encoded by its own call (the GIL can change hands
    between them)."""
    return '{"folders": [' + ", ".join([json.dumps(path) for path in found]) + "]}"


#: The longest name and Content-Type of a form's file part (a raw upload's filename has the
#: same bound).
_MAX_FORM_NAME = 1024
_MAX_FORM_TYPE = 255


def _shown(text: str) -> str:
    """Client text for an answer: lone surrogates (bytes that were not UTF-8) replaced."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class PartStream:
    """One part of a multipart body as the lifecycle reads bodies (a ``ByteStream``).

    Stopping it (lock breaking, shutdown) stops the request's whole body: the parts after
    it are not read.
    """

    __slots__ = ("_content", "_part")

    def __init__(self, part: BodyPartReader, content: StreamReader) -> None:
        self._part = part
        self._content = content

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._part.read_chunk(n if n > 0 else BodyPartReader.chunk_size)
        except ValueError as exc:
            # The body ended inside the part, or its boundary is not the one announced: to
            # the lifecycle, a body that broke (what arrived is kept, the file ended early).
            raise BadHttpMessage(f"malformed multipart/form-data: {exc}") from None

    def is_eof(self) -> bool:
        return self._part.at_eof()

    def set_exception(self, exc: BaseException) -> None:
        self._content.set_exception(exc)


#: The most of a form's ``folder`` field that is read (a folder has at most 1024 characters).
_FIELD_MAX = 64 * 1024


async def _read_field(part: BodyPartReader, idle: float | None, *, keep: bool) -> bytes:
    """A form field that is not a file: kept (decoded as its headers say, at most
    ``_FIELD_MAX`` bytes) or read past. ``idle`` bounds each wait for its bytes, not the
    whole field (TimeoutError): a long field sent slowly but steadily is read."""
    raw = bytearray()
    while True:
        async with asyncio.timeout(idle):
            chunk = await part.read_chunk()
        if not chunk:
            break
        if keep:
            raw += chunk
            if len(raw) > _FIELD_MAX:
                raise BadRequest(f"form field {part.name!r}: at most {_FIELD_MAX} bytes")
    if not keep:
        return b""
    decoded = bytearray()
    async for piece in part.decode_iter(raw):
        decoded += piece
        if len(decoded) > _FIELD_MAX:
            raise BadRequest(f"form field {part.name!r}: at most {_FIELD_MAX} bytes")
    return bytes(decoded)
