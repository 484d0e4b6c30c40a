"""What the HTTP adapters (tus, the IETF draft, the REST API) share about requests and
responses: the lifecycle's :class:`~tusserver.uploads.observer.Caller` of a request, and
streaming a representation with ranges.

Pure helpers without aiohttp (ranges, dispositions, file names) are in
:mod:`tusserver.http_util`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from types import MappingProxyType

import structlog
from aiohttp import web

from auth import Principal
from auth.gateway import Gate

from .errors import UnsupportedEncoding
from .http_util import content_disposition, parse_range
from .uploads.body import READ_PIECE
from .uploads.observer import Caller

__all__ = [
    "HANDLER_ARGS",
    "ByteReader",
    "RequestAdmission",
    "caller_of",
    "refuse_encoded_body",
    "stream_bytes",
]

_log = structlog.get_logger("tusserver.http")

ByteReader = Callable[[int, int], AsyncIterator[bytes]]


class RequestAdmission:
    """The gateway's limits, caps and audit log, bound to one request and one caller."""

    __slots__ = ("_gate", "_request", "_who")

    def __init__(self, gate: Gate, request: web.Request, who: str | None) -> None:
        self._gate = gate
        self._request = request
        self._who = who

    async def limit(self, kind: str, *, cost: float = 1.0, require: float | None = None) -> None:
        await self._gate.limit(self._request, kind, who=self._who, cost=cost, require=require)

    async def charge(self, kind: str, *, cost: float) -> None:
        await self._gate.charge(self._request, kind, who=self._who, cost=cost)

    async def pace(self, kind: str, *, cost: float) -> float:
        return await self._gate.pace(self._request, kind, who=self._who, cost=cost)

    def slot(self, kind: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._gate.slot(self._request, kind, who=self._who)

    def audit(self, action: str, *, target: str | None) -> None:
        self._gate.audit(self._request, action, actor=self._who, target=target)


#: How the server's connections read requests (``web.Application(handler_args=...)`` of the
#: app served: aiohttp takes them from that app, never from a sub-app).
#:
#: - ``read_bufsize``: aiohttp buffers up to twice this per connection before it stops
#:   reading the socket (its own default let every upload hold 512 KiB there); bodies are
#:   read in pieces of this size (:mod:`tusserver.uploads.body`).
#: - ``auto_decompress`` off: request bodies are never inflated. No route takes a compressed
#:   body (upload routes and JSON bodies answer 415, see :func:`refuse_encoded_body`), and
#:   aiohttp would otherwise inflate a refused body while it discards it after the answer:
#:   a 1 MiB gzip body of zeros cost the server over 2 s of CPU that way, whatever the
#:   route.
#: - ``max_field_size``: a header's value may be 64 KiB (aiohttp's default is 8 KiB), for a
#:   final upload's ``Upload-Concat`` naming its partials by absolute URLs, as tus-js-client
#:   does: 100 of them (``max_concat_parts``) at about 100 characters each did not fit.
HANDLER_ARGS: Mapping[str, object] = MappingProxyType(
    {"read_bufsize": READ_PIECE, "auto_decompress": False, "max_field_size": 64 * 1024}
)


def refuse_encoded_body(request: web.Request) -> None:
    """Bodies are taken as they are (no route inflates one, see :data:`HANDLER_ARGS`): a
    Content-Encoding other than identity is a 415, not bytes misread. On upload routes a
    compressed body would also get past every size and byte-rate limit Content-Length
    decided."""
    if "Content-Encoding" not in request.headers:
        return
    encodings = [
        token.strip().lower()
        for value in request.headers.getall("Content-Encoding", [])
        for token in value.split(",")
    ]
    refused = [e for e in encodings if e not in ("", "identity")]
    if refused:
        raise UnsupportedEncoding(
            f"Content-Encoding {refused[0][:32]!r} is not accepted: "
            "send the body as it is (identity)"
        )


def caller_of(gate: Gate, request: web.Request, principal: Principal) -> Caller:
    """The lifecycle's view of who sends ``request``."""
    return Caller(
        principal=principal,
        admission=RequestAdmission(gate, request, principal.user_id),
        client=request.headers.get("User-Agent"),
    )


async def stream_bytes(
    request: web.Request,
    *,
    size: int,
    name: str | None,
    reader: ByteReader,
    content_type: str = "application/octet-stream",
    extra_headers: dict[str, str] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Stream a representation with single-range support and a safe attachment name."""
    rng = parse_range(request.headers.get("Range"), size)
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(name),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
        **(extra_headers or {}),
    }
    start, length, status = 0, size, 200
    if rng is not None:
        start, length, status = rng.start, rng.length, 206
        headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
    blocks = reader(start, length) if length and request.method != "HEAD" else None
    # The first block is read before anything is sent, so a missing object is a clean error.
    first = await anext(blocks, b"") if blocks is not None else b""
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = length
    await resp.prepare(request)
    if blocks is not None:
        sent = 0
        try:
            await resp.write(first)
            sent += len(first)
            async for block in blocks:
                await resp.write(block)
                sent += len(block)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # Headers are gone: the only honest signal left is to cut the connection.
            _log.exception("download failed mid-stream", path=request.path)
            if request.transport is not None:
                request.transport.close()
            return resp
        finally:
            if on_sent is not None:
                on_sent(sent)
    await resp.write_eof()
    return resp
