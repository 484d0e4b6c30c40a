# ruff: noqa: E501
"""The OpenAPI 3.1 document of the JSON API and the tus endpoint, served at
``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__

__all__ = ["openapi_document", "openapi_handler"]


def _param(name: str, desc: str, schema: dict[str, Any], where: str = "query") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "description": desc,
        "schema": schema,
        "required": where == "path",
    }


_S = {"type": "string"}
_I = {"type": "integer", "minimum": 0}
_ERR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_UPLOAD_ID = _param(
    "upload_id", "upload id", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "path"
)
_FILE_ID = _param(
    "file_id", "file id (32 hex digits)", {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "path"
)


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    file_ref = {"$ref": "#/components/schemas/File"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tusserver", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": _S, "message": _S}},
                "File": {
                    "type": "object",
                    "properties": {
                        "id": _S, "name": _S, "folder": _S, "size": _I,
                        "type": {"type": ["string", "null"],
                                 "description": "detected MIME type (declared until detected)"},
                        "status": {"enum": ["received", "validating", "committed", "rejected", "failed"]},
                        "reason": {"type": ["string", "null"]},
                        "detected_type": {"type": ["string", "null"]},
                        "declared_type": {"type": ["string", "null"]},
                        "type_mismatch": {"type": "boolean"},
                        "category": {"type": ["string", "null"]},
                        "sha256": {"type": ["string", "null"]},
                        "tags": {"type": "array", "items": _S},
                        "created_at": {"type": "string", "format": "date-time"},
                        "content_url": _S,
                        "media": {"type": ["object", "null"], "description": (
                            "image: kind, format, width, height, orientation; video: kind, "
                            "container, width, height, duration, video_codec, audio_codec, "
                            "frame_rate; audio: kind, container, duration, audio_codec, "
                            "sample_rate, channels")},
                        "thumbnail_sizes": {"type": "array", "items": _I},
                        "thumbnail_url": {"type": ["string", "null"]},
                        "location_stripped": {"type": "boolean"},
                    },
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/files": {"get": {
                "summary": "List and search files (keyset pagination)",
                "parameters": [
                    _param("q", "name contains (case-insensitive)", _S),
                    _param("match", "substring (default) or prefix", {"enum": ["substring", "prefix"]}),
                    _param("type", "detected MIME type, or major/*", _S),
                    _param("category", "video, audio, image, document, other", _S),
                    _param("min_size", "bytes", _I), _param("max_size", "bytes", _I),
                    _param("from", "created at or after (ISO 8601)", _S),
                    _param("to", "created before (ISO 8601)", _S),
                    _param("tag", "has this tag (repeatable: all must match)", _S),
                    _param("folder", "in this folder, e.g. /photos/", _S),
                    _param("status", "pipeline status", _S),
                    _param("orientation", "landscape, portrait or square (media)",
                           {"enum": ["landscape", "portrait", "square"]}),
                    _param("min_width", "pixels, as displayed", _I),
                    _param("min_height", "pixels, as displayed", _I),
                    _param("min_duration", "seconds (video, audio)", {"type": "number"}),
                    _param("max_duration", "seconds (video, audio)", {"type": "number"}),
                    _param("sort", "date, name or size; '-' prefix for descending (default -date)", _S),
                    _param("cursor", "next_cursor of the previous page", _S),
                    _param("limit", "1..200 (default 50)", _I),
                ],
                "responses": {"200": {"description": "a page", **json_body({"type": "object", "properties": {
                    "files": {"type": "array", "items": file_ref},
                    "next_cursor": {"type": ["string", "null"]},
                    "items": {"type": "array", "items": file_ref, "deprecated": True,
                              "description": "the same list as files (removed in the next release)"}},
                    "required": ["files", "next_cursor"]})},
                    "400": _ERR, "401": _ERR},
            }},
            "/api/v1/file/{file_id}": {
                "get": {"summary": "File metadata and pipeline status", "parameters": [_FILE_ID],
                        "responses": {"200": {"description": "the file", **json_body(file_ref)}, "404": _ERR}},
                "patch": {"summary": "Rename, move, tag", "parameters": [_FILE_ID],
                          "requestBody": json_body({"type": "object", "properties": {
                              "name": _S, "folder": _S, "tags": {"type": "array", "items": _S}}}),
                          "responses": {"200": {"description": "the file", **json_body(file_ref)}, "400": _ERR, "404": _ERR}},
                "delete": {"summary": "Delete the file and its object", "parameters": [_FILE_ID],
                           "responses": {"204": {"description": "deleted"}, "404": _ERR, "409": _ERR}},
            },
            "/api/v1/file/{file_id}/thumbnail": {"get": {
                "summary": "WebP thumbnail of an image or video (ETag, long private caching)",
                "parameters": [_FILE_ID, _param("size", "longest side: 256 (default) or 1024", _I)],
                "responses": {"200": {"description": "image/webp"}, "304": {"description": "not modified"},
                              "400": _ERR, "404": _ERR}}},
            "/api/v1/file/{file_id}/content": {"get": {
                "summary": "Download (Range, ETag/If-None-Match); preview=1: for the page's own "
                           "viewer, not counted as a download",
                "parameters": [_FILE_ID, _param("preview", "1: a preview, not a download", _S)],
                "responses": {"200": {"description": "bytes"}, "206": {"description": "a range"},
                              "304": {"description": "not modified"}, "404": _ERR, "409": _ERR, "416": _ERR}}},
            "/api/v1/upload": {"post": {
                "summary": "Plain upload: multipart/form-data with one or many files, or one file as the body",
                "description": "A body that is not multipart/form-data is one file, named by the query parameters.",
                "parameters": [_param("filename", "the file's name (required for a raw body)", _S),
                               _param("mimetype", "the declared MIME type (raw body)", _S),
                               _param("folder", "the folder to put the file in (raw body)", _S)],
                "requestBody": {"content": {
                    "multipart/form-data": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"201": {"description": "multipart: one entry per file; raw body: the file's entry",
                                      "content": {"application/json": {"schema": {"type": "object", "properties": {
                                          "file_id": _S, "filename": _S, "mimetype": _S, "upload_id": _S,
                                          "size": _I, "status": _S, "url": _S, "files": {"type": "array"}}}}}},
                              "400": _ERR, "413": _ERR, "415": _ERR, "429": _ERR}}},
            "/api/v1/folders": {
                "get": {"summary": "The caller's folder tree", "responses": {"200": {"description": "paths"}}},
                "post": {"summary": "Create a folder", "requestBody": json_body({"type": "object", "properties": {"path": _S}}),
                         "responses": {"201": {"description": "created"}, "400": _ERR}},
                "delete": {"summary": "Delete an empty folder", "parameters": [_param("path", "folder", _S)],
                           "responses": {"204": {"description": "deleted"}, "409": _ERR}},
            },
            "/api/v1/analytics": {"get": {
                "summary": "Totals, series, top types, rejects by reason, top files",
                "parameters": [_param("from", "ISO 8601", _S), _param("to", "ISO 8601", _S),
                               _param("granularity", "hour or day", _S), _param("user", "admins: one user", _S)],
                "responses": {"200": {"description": "the report"}, "400": _ERR}}},
            "/api/v1/auth/login": {"post": {
                "summary": "Sign in", "security": [],
                "requestBody": json_body({"type": "object", "properties": {"username": _S, "password": _S, "cookie": {"type": "boolean"}}}),
                "responses": {"200": {"description": "access_token, refresh_token, expires_in"}, "401": _ERR, "429": _ERR}}},
            "/api/v1/auth/register": {"post": {"summary": "Sign up", "security": [], "responses": {"201": {"description": "the user"}, "409": _ERR}}},
            "/api/v1/auth/refresh": {"post": {"summary": "New tokens for a refresh token", "security": [], "responses": {"200": {"description": "tokens"}, "401": _ERR}}},
            "/api/v1/auth/logout": {"post": {"summary": "Revoke the caller's tokens", "responses": {"200": {"description": "signed out"}}}},
            "/api/v1/auth/me": {"get": {"summary": "The caller", "responses": {"200": {"description": "user"}}}},
            "/api/v1/auth/session": {"get": {
                "summary": "Whether the caller is signed in (200 either way)", "security": [{}, {"bearer": []}],
                "responses": {"200": {"description": "authenticated, and the user when it is", **json_body({
                    "type": "object", "required": ["authenticated"],
                    "properties": {"authenticated": {"type": "boolean"}, "user": {"type": "object"}}})}}}},
            "/api/v1/auth/password": {"post": {
                "summary": "Change the caller's password (revokes its tokens)",
                "requestBody": json_body({"type": "object", "properties": {"old_password": _S, "new_password": _S}}),
                "responses": {"200": {"description": "changed"}, "400": _ERR, "401": _ERR}}},
            "/api/v1/limits": {"get": {
                "summary": "What the server accepts: max size, categories, limits per category", "security": [],
                "responses": {"200": {"description": "limits"}}}},
            "/uploads/": {
                "options": {"summary": "tus capabilities", "security": [], "responses": {"204": {"description": "Tus-Version, Tus-Extension, Tus-Max-Size"}}},
                "post": {"summary": "tus creation (with upload, defer-length, concatenation)", "responses": {"201": {"description": "Location"}}},
            },
            "/uploads/{upload_id}": {
                "head": {"summary": "tus offset", "parameters": [_UPLOAD_ID], "responses": {"200": {"description": "Upload-Offset"}}},
                "patch": {"summary": "tus append", "parameters": [_UPLOAD_ID], "responses": {"204": {"description": "new Upload-Offset"}}},
                "delete": {"summary": "tus termination", "parameters": [_UPLOAD_ID], "responses": {"204": {"description": "terminated"}}},
                "get": {"summary": "bytes of a finished upload", "parameters": [_UPLOAD_ID], "responses": {"200": {"description": "bytes"}}},
            },
        },
    }  # fmt: skip


async def openapi_handler(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
