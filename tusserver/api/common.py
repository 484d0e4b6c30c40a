"""Small helpers of the JSON API: bounded JSON bodies."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from aiohttp import web

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..http_io import refuse_encoded_body

__all__ = ["parse_when", "read_json", "string_field", "text_param"]

_MIN_DATE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_DATE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def parse_when(raw: str | None, name: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time (UTC when no zone is given), within 1970..9999."""
    if raw is None or raw == "":
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            value = dt.datetime.fromisoformat(raw).replace(tzinfo=dt.UTC)
        else:
            value = dt.datetime.fromisoformat(raw)
            value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
            value = value.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise BadRequest(f"{name}: not an ISO 8601 date or date-time") from None
    if not _MIN_DATE <= value <= _MAX_DATE:
        raise BadRequest(f"{name}: must be between 1970 and 9999")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def text_param(query: Any, name: str, *, max_len: int) -> str | None:
    """A free-text query parameter: bounded, without control characters."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise BadRequest(f"{name}: at most {max_len} characters")
    if _CONTROL.search(raw):
        raise BadRequest(f"{name}: control characters are not allowed")
    return str(raw)


async def read_json(request: web.Request, *, limit: int = 16 * 1024) -> dict[str, Any]:
    """The request's JSON object, read with a size limit; clear 4xx for anything else."""
    refuse_encoded_body(request)
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType("send a JSON body with Content-Type: application/json")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the JSON body must be at most {limit} bytes")
    # read(n) gives what has arrived so far, not the whole body: read until its end.
    pieces: list[bytes] = []
    size = 0
    while size <= limit:
        piece = await request.content.read(limit + 1 - size)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    raw = b"".join(pieces)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the JSON body must be at most {limit} bytes")
    try:
        data = json.loads(raw)
        # Lone surrogates parse as JSON but cannot be stored: refuse them here.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeDecodeError, UnicodeEncodeError, RecursionError):
        raise BadRequest("the body is not valid JSON (UTF-8, reasonably nested)") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def string_field(data: dict[str, Any], name: str, *, max_len: int = 1024) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    if len(value) > max_len:
        raise BadRequest(f"'{name}' is too long")
    return value
