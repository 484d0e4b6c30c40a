"""Files API: what finished uploads became (metadata, status, download).

The seed's paths (``/files``, ``/file/{id}``, ``/file/{id}/content``) and the same under
``/api/v1``. A file that belongs to someone else answers 404, exactly like a missing one.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from auth import Principal
from auth.gateway import Gate

from ..catalog.files import FileRecord, FileRepository, FileStatus
from ..pipeline.pipeline import Pipeline
from ..protocol.errors import Conflict, NotFound
from ..protocol.handlers import stream_bytes

__all__ = ["FilesApi", "file_json"]

_FILE_ID = re.compile(r"[0-9a-f]{32}")


def file_json(f: FileRecord, base: str = "") -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
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
    }


class FilesApi:
    def __init__(self, *, files: FileRepository, pipeline: Pipeline, gate: Gate) -> None:
        self._files = files
        self._pipeline = pipeline
        self._gate = gate

    async def _caller(self, request: web.Request) -> Principal:
        principal = await self._gate.principal(request)
        await self._gate.limit(request, "api", who=principal.user_id)
        return principal

    def routes(self, prefix: str = "") -> list[web.RouteDef]:
        return [
            web.get(f"{prefix}/file/{{file_id}}", self.get_file),
            web.get(f"{prefix}/file/{{file_id}}/content", self.content),
        ]

    async def _load(self, request: web.Request, principal: Principal, file_id: str) -> FileRecord:
        if not _FILE_ID.fullmatch(file_id):
            raise NotFound("no such file")
        f = await self._files.get(file_id)
        if f is not None and not principal.may_access(f.owner):
            self._gate.audit(request, "access.denied", actor=principal.user_id, target=file_id)
            f = None
        if f is None:
            raise NotFound("no such file")
        return f

    async def get_file(self, request: web.Request) -> web.Response:
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"])
        base = request.path.rsplit("/file/", 1)[0]
        return web.json_response(file_json(f, base), headers={"Cache-Control": "private, no-cache"})

    async def content(self, request: web.Request) -> web.StreamResponse:
        principal = await self._caller(request)
        f = await self._load(request, principal, request.match_info["file_id"])
        if f.status is not FileStatus.COMMITTED:
            if f.status in (FileStatus.REJECTED, FileStatus.FAILED):
                raise NotFound(f"the file was {f.status.value}: {f.reason}")
            raise Conflict("the file is still being processed", headers={"Retry-After": "2"})
        etag = f'"{f.sha256}"'
        inm = request.headers.get("If-None-Match")
        if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return web.Response(status=304, headers={"ETag": etag})
        self._gate.audit(request, "file.download", actor=principal.user_id, target=f.id)
        return await stream_bytes(
            request,
            size=f.size,
            name=f.name,
            reader=lambda start, length: self._pipeline.read_source(f, start, length),
            extra_headers={"ETag": etag, "Cache-Control": "private, no-cache"},
        )
