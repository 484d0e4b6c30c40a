"""Which process of ``serve --workers N`` holds a connection: Linux /proc, no server help.

``children(pid)``        the live child processes of the supervisor ``pid``
``RawConnection``        one HTTP/1.1 keep-alive connection (asyncio streams) that knows the
                         pid of the server process that accepted it (``owner``)
``connect_to(...)``      a connection accepted by a given process (connects until one is)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

HOST = "127.0.0.1"


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (alive, not zombies)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces; split after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return sorted(out)


def wait_children(
    pid: int, count: int, *, exclude: frozenset[int] = frozenset(), timeout: float = 30.0
) -> list[int]:
    """Wait until ``pid`` has ``count`` children, none of them in ``exclude``."""
    end = time.monotonic() + timeout
    while True:
        now = children(pid)
        if len(now) == count and not set(now) & set(exclude):
            return now
        if time.monotonic() > end:
            raise AssertionError(f"children of {pid}: {now}, wanted {count} not in {exclude}")
        time.sleep(0.05)


def _hex_addr(port: int) -> str:
    return f"0100007F:{port:04X}"


def _server_socket_inode(server_port: int, client_port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == _hex_addr(server_port) and cols[2] == _hex_addr(client_port):
            return cols[9]
    return None


def socket_owner(server_port: int, client_port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` holding the server side of the connection from ``client_port``."""
    inode = _server_socket_inode(server_port, client_port)
    if inode is None or inode == "0":
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


class RawConnection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.owner = owner

    async def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before a response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, body

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        await self.send_head(method, path, {**headers, "Content-Length": str(len(body))})
        if body:
            await self.send(body)
        return await self.response()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def connect(port: int, pids: list[int]) -> RawConnection:
    """A new connection, once one of ``pids`` has accepted it."""
    reader, writer = await asyncio.open_connection(HOST, port)
    client_port = writer.get_extra_info("sockname")[1]
    end = time.monotonic() + 5
    while (owner := socket_owner(port, client_port, pids)) is None:
        if time.monotonic() > end:
            writer.close()
            raise AssertionError(f"no process of {pids} accepted the connection")
        await asyncio.sleep(0.01)
    return RawConnection(reader, writer, owner)


async def connect_to(port: int, pids: list[int], want: int, attempts: int = 200) -> RawConnection:
    """A connection accepted by process ``want`` (new connections until one is)."""
    for _ in range(attempts):
        conn = await connect(port, pids)
        if conn.owner == want:
            return conn
        await conn.close()
    raise AssertionError(f"process {want} accepted none of {attempts} connections")
