"""Helpers of the draft suite: request headers, problem documents, a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from tusserver.protocol import sfv

Client = TestClient[Any, Any]

DRAFT = {"Upload-Draft-Interop-Version": "8"}
PARTIAL = {"Content-Type": "application/partial-upload"}
PROBLEMS = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = PROBLEMS + "mismatching-upload-offset"
COMPLETED_UPLOAD = PROBLEMS + "completed-upload"
INCONSISTENT_LENGTH = PROBLEMS + "inconsistent-upload-length"


def path_of(location: str) -> str:
    return location[location.index("/uploads/") :]


async def create(
    client: Client,
    body: bytes = b"",
    *,
    complete: bool = False,
    method: str = "POST",
    **headers: str,
) -> Any:
    """A draft upload creation on the creation URL."""
    h = {**DRAFT, "Upload-Complete": "?1" if complete else "?0", **headers}
    return await client.request(method, "/uploads/", data=body, headers=h)


async def created(client: Client, body: bytes = b"", **kwargs: Any) -> str:
    resp = await create(client, body, **kwargs)
    assert resp.status == 201, await resp.text()
    return path_of(resp.headers["Location"])


async def append(
    client: Client, path: str, offset: int, body: bytes, *, complete: bool = False, **headers: str
) -> Any:
    h = {
        **DRAFT,
        **PARTIAL,
        "Upload-Offset": str(offset),
        "Upload-Complete": "?1" if complete else "?0",
        **headers,
    }
    return await client.patch(path, data=body, headers=h)


async def head(client: Client, path: str) -> Any:
    return await client.head(path, headers=DRAFT)


async def problem(resp: Any, status: int, type_: str | None = None) -> dict[str, Any]:
    """Assert an RFC 9457 problem document and return it."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/problem+json"), text
    if resp.method == "HEAD":  # no content to read
        return {}
    doc: dict[str, Any] = json.loads(text)
    assert doc["status"] == status
    assert isinstance(doc["title"], str) and doc["title"]
    if type_ is not None:
        assert doc["type"] == type_
    return doc


def digest(algorithm: str, data: bytes) -> str:
    """A digest field value (RFC 9530), e.g. ``sha-256=:...:``."""
    h = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(h).decode()}:"


def limits(value: str) -> dict[str, int]:
    """Upload-Limit, parsed strictly: a Dictionary of Integers."""
    parsed = sfv.parse_dictionary(value)
    out = {}
    for key, member in parsed.items():
        assert isinstance(member, sfv.Item) and type(member.value) is int, value
        out[key] = member.value
    return out


# --- a raw HTTP/1.1 client, to see informational responses --------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes = b""
    informational: list[RawResponse] = field(default_factory=list)


class RawConnection:
    """One TCP connection to the test server, writing and reading HTTP/1.1 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, client: Client) -> RawConnection:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        return cls(reader, writer)

    async def send_head(
        self, method: str, path: str, headers: dict[str, str], version: str = "HTTP/1.1"
    ) -> None:
        lines = [f"{method} {path} {version}", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self, timeout: float = 10) -> RawResponse:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        version, code, reason = ([*status_line.split(" ", 2), ""])[:3]
        assert version.startswith("HTTP/1."), status_line
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                headers.add(key.strip(), value.strip())
        return RawResponse(int(code), reason, headers)

    async def read_response(self, timeout: float = 10, head_request: bool = False) -> RawResponse:
        """Informational responses first (kept in ``informational``), then the final one."""
        interim = []
        while True:
            resp = await self.read_head(timeout)
            if 100 <= resp.status < 200:
                interim.append(resp)
                continue
            break
        length = int(resp.headers.get("Content-Length", "0"))
        if length and not head_request:
            resp.body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        resp.informational = interim
        return resp

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
