"""A TCP proxy that can stall: a service that stops answering without closing its connections
(a hung S3, a dead load balancer, a network partition, a frozen PostgreSQL host)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["StalledPostgres", "StallingProxy"]


class StallingProxy:
    """A TCP proxy in front of ``upstream`` ("host:port"). While ``stalled`` it accepts
    connections and reads what is sent, but passes nothing on, in either direction.

    ``swallow``: what was sent during a stall is dropped (a hung server that never answers).
    Otherwise it is held back and delivered once the stall ends, closes included, and
    connections accepted meanwhile reach the upstream only then: a network partition that
    heals, a frozen host that resumes (TCP loses nothing; the answers only come late)."""

    def __init__(self, upstream: str, *, swallow: bool = True) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self.swallow = swallow
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the proxy."""
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.stalled:
                if self.swallow:
                    while await reader.read(65536):
                        pass
                    return
                await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            if self.stalled:
                if self.swallow:
                    continue  # the other side waits for an answer that never comes
                await self._flowing.wait()
            dst.write(data)
            await dst.drain()
        if not self.swallow:
            await self._flowing.wait()  # (a close is held back too)
        dst.close()


@dataclass(frozen=True)
class StalledPostgres:
    """The shared PostgreSQL behind a proxy: set ``proxy.stalled`` to make it stop answering."""

    proxy: StallingProxy
    database: str

    @property
    def url(self) -> str:
        """postgresql+asyncpg URL of this worker's database, through the proxy."""
        return f"postgresql+asyncpg://postgres@{self.proxy.endpoint}/{self.database}"

    @property
    def proxy_holds(self) -> bool:
        """Whether what is sent during a stall arrives once it ends (else it is dropped)."""
        return not self.proxy.swallow

    @property
    def dsn(self) -> str:
        """asyncpg DSN of the same, through the proxy."""
        return f"postgresql://postgres@{self.proxy.endpoint}/{self.database}"
