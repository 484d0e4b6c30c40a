"""A small clamd client speaking INSTREAM over TCP or a unix socket (no external library).

Protocol: ``zINSTREAM\\0``, then chunks as ``<uint32 big-endian length><bytes>``, then a
zero-length chunk; clamd replies ``stream: OK``, ``stream: <signature> FOUND`` or an error
line ending in ``ERROR`` (for instance when the stream exceeds StreamMaxLength). Anything but
a clean ``OK`` is never reported as clean.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ClamdClient", "ScanError", "ScanResult", "ScannerUnavailable"]

_CHUNK = 64 * 1024


class ScannerUnavailable(Exception):
    """clamd could not be reached (or went away mid-scan): retry later."""


class ScanError(Exception):
    """clamd answered with an error for this stream. ``transient``: an error of clamd's
    (out of memory, a failed call) rather than of the stream (past its size limit): the
    scan is worth trying again."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class ScanResult:
    clean: bool
    signature: str | None = None


class ClamdClient:
    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme == "tcp":
            if not parts.hostname or not parts.port:
                raise ValueError("clamd tcp URL needs host and port")
            self._tcp: tuple[str, int] | None = (parts.hostname, parts.port)
            self._unix: str | None = None
        elif parts.scheme == "unix":
            self._tcp, self._unix = None, parts.path
        else:
            raise ValueError("clamd URL must be tcp://host:port or unix:///path")
        self._timeout = timeout
        self.url = url

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self._tcp is not None:
                coro = asyncio.open_connection(*self._tcp)
            else:
                assert self._unix is not None
                coro = asyncio.open_unix_connection(self._unix)
            return await asyncio.wait_for(coro, timeout=min(self._timeout, 10.0))
        except (OSError, TimeoutError) as exc:
            raise ScannerUnavailable(f"clamd at {self.url} is unreachable: {exc}") from exc

    async def ping(self) -> bool:
        reader, writer = await self._connect()
        try:
            writer.write(b"zPING\0")
            await writer.drain()
            reply = await asyncio.wait_for(
                reader.readuntil(b"\0"), timeout=min(self._timeout, 10.0)
            )
            return reply.rstrip(b"\0") == b"PONG"
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise ScannerUnavailable(f"clamd at {self.url} did not answer: {exc}") from exc
        finally:
            writer.close()

    async def scan(self, source: AsyncIterable[bytes]) -> ScanResult:
        reader, writer = await self._connect()
        reply = b""
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    writer.write(b"zINSTREAM\0")
                    async for block in source:
                        view = memoryview(block)
                        for i in range(0, len(view), _CHUNK):
                            piece = view[i : i + _CHUNK]
                            writer.write(struct.pack(">I", len(piece)))
                            writer.write(piece)
                            await writer.drain()
                    writer.write(struct.pack(">I", 0))
                    await writer.drain()
                except OSError:
                    # clamd stops reading when a stream passes its limit and says why;
                    # read that reply below. No reply means the scan proves nothing.
                    pass
                reply = await reader.readuntil(b"\0")
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise ScannerUnavailable(f"clamd connection failed during the scan: {exc}") from exc
        except TimeoutError as exc:
            raise ScannerUnavailable("clamd did not answer in time") from exc
        finally:
            writer.close()
        return parse_reply(reply.rstrip(b"\0").decode("utf-8", "replace"))


def parse_reply(text: str) -> ScanResult:
    """Interpret one INSTREAM reply; only an exact ``OK`` is clean."""
    body = text.split(":", 1)[1].strip() if ":" in text else text.strip()
    if body == "OK":
        return ScanResult(clean=True)
    if body.endswith(" FOUND"):
        return ScanResult(clean=False, signature=body[: -len(" FOUND")].strip() or "unknown")
    # Only a stream past clamd's limits is refused for good; any other error is clamd's.
    permanent = "limit" in body.lower()
    raise ScanError(f"clamd could not scan the file: {text.strip()[:200]}", transient=not permanent)
