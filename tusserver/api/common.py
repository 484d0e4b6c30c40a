"""Small helpers of the JSON API: bounded JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..protocol.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = ["read_json"]


async def read_json(request: web.Request, *, limit: int = 16 * 1024) -> dict[str, Any]:
    """The request's JSON object, read with a size limit; clear 4xx for anything else."""
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType("send a JSON body with Content-Type: application/json")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the JSON body must be at most {limit} bytes")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the JSON body must be at most {limit} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
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
