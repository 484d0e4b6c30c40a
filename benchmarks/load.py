"""The tus load generator: real tus 1.0.0 requests from one asyncio process (aiohttp client).

In ``patch`` mode each upload is a POST with Upload-Length, then PATCHes of ``chunk`` bytes
with ``Content-Type: application/offset+octet-stream`` and ``Upload-Offset``; every response
is checked (201 + Location, 204 + the expected Upload-Offset). In ``cwu`` mode (the small
upload workload: creation-with-upload, which every tus server advertises) the POST carries the
whole body and must answer 201 with ``Upload-Offset`` equal to the size, and a HEAD per upload
then verifies the offset. Bodies are cut from one
preallocated random buffer and streamed in 256 KiB slices (memoryviews, no copies), so the
client holds a few MiB whatever the upload size.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["BodySource", "Scenario", "ScenarioResult", "percentile", "run_scenario"]

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class Scenario:
    name: str
    uploads: int
    size: int
    chunk: int
    concurrency: int
    #: ``patch``: POST, then PATCHes of ``chunk``; ``cwu``: creation-with-upload, then HEAD.
    mode: str = "patch"

    def describe(self) -> str:
        if self.mode == "cwu":
            return (
                f"{self.uploads} x {_fmt_size(self.size)} by creation-with-upload + HEAD, "
                f"concurrency {self.concurrency}"
            )
        return (
            f"{self.uploads} x {_fmt_size(self.size)} in {_fmt_size(self.chunk)} PATCHes, "
            f"concurrency {self.concurrency}"
        )


@dataclass
class ScenarioResult:
    scenario: str
    description: str
    uploads: int
    upload_size: int
    chunk_size: int
    concurrency: int
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    bytes_acked: int = 0
    mib_per_s: float = 0.0
    uploads_per_s: float = 0.0
    patches: int = 0
    patch_p50_ms: float | None = None
    patch_p99_ms: float | None = None
    post_p50_ms: float | None = None
    post_p99_ms: float | None = None
    #: CPU seconds the server process (tree) used during the scenario; set by the runner.
    server_cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BodySource:
    """Request bodies cut from one preallocated buffer of random bytes."""

    SLICE = 256 * KiB

    def __init__(self, size: int = 4 * MiB) -> None:
        self._buf = memoryview(os.urandom(size))
        self._span = size - self.SLICE

    def _slice(self, pos: int, n: int) -> memoryview:
        start = (pos * 7919) % self._span
        return self._buf[start : start + n]

    def body(self, key: int, n: int) -> memoryview | AsyncIterator[memoryview]:
        """A body of ``n`` bytes; small ones are a single memoryview, large ones streamed."""
        if n <= self.SLICE:
            return self._slice(key, n)
        return self._stream(key, n)

    async def _stream(self, key: int, n: int) -> AsyncIterator[memoryview]:
        sent = 0
        i = 0
        while sent < n:
            k = min(self.SLICE, n - sent)
            yield self._slice(key + i, k)
            sent += k
            i += 1


class _UploadFailed(Exception):
    pass


@dataclass
class _Stats:
    post: list[float] = field(default_factory=list)
    patch: list[float] = field(default_factory=list)
    bytes_acked: int = 0
    completed: int = 0
    errors: int = 0
    first_error: str | None = None


async def _one_upload(
    session: aiohttp.ClientSession,
    endpoint: URL,
    scenario: Scenario,
    index: int,
    source: BodySource,
    stats: _Stats,
) -> None:
    if scenario.mode == "cwu":
        await _one_cwu_upload(session, endpoint, scenario, index, source, stats)
        return
    size, chunk = scenario.size, scenario.chunk
    t0 = time.perf_counter()
    async with session.post(endpoint, headers={**TUS, "Upload-Length": str(size)}) as resp:
        await resp.read()
        if resp.status != 201 or "Location" not in resp.headers:
            raise _UploadFailed(f"POST -> {resp.status}")
        location = resp.headers["Location"]
    stats.post.append(time.perf_counter() - t0)
    url = endpoint.join(URL(location))
    offset = 0
    while offset < size:
        n = min(chunk, size - offset)
        headers = {
            **TUS,
            "Content-Type": OCTETS,
            "Content-Length": str(n),
            "Upload-Offset": str(offset),
        }
        t = time.perf_counter()
        body = source.body(index * 131 + offset // source.SLICE, n)
        async with session.patch(url, data=body, headers=headers) as resp:
            await resp.read()
            got = resp.headers.get("Upload-Offset")
            if resp.status != 204 or got != str(offset + n):
                raise _UploadFailed(
                    f"PATCH at {offset} -> {resp.status}, Upload-Offset {got!r} "
                    f"(expected {offset + n})"
                )
        stats.patch.append(time.perf_counter() - t)
        offset += n
        stats.bytes_acked += n
    stats.completed += 1


async def _one_cwu_upload(
    session: aiohttp.ClientSession,
    endpoint: URL,
    scenario: Scenario,
    index: int,
    source: BodySource,
    stats: _Stats,
) -> None:
    size = scenario.size
    headers = {
        **TUS,
        "Upload-Length": str(size),
        "Content-Type": OCTETS,
        "Content-Length": str(size),
    }
    t0 = time.perf_counter()
    async with session.post(endpoint, data=source.body(index, size), headers=headers) as resp:
        await resp.read()
        got = resp.headers.get("Upload-Offset")
        if resp.status != 201 or "Location" not in resp.headers or got != str(size):
            raise _UploadFailed(f"POST with body -> {resp.status}, Upload-Offset {got!r}")
        location = resp.headers["Location"]
    stats.post.append(time.perf_counter() - t0)
    t = time.perf_counter()
    async with session.head(endpoint.join(URL(location)), headers=TUS) as resp:
        got = resp.headers.get("Upload-Offset")
        if resp.status != 200 or got != str(size):
            raise _UploadFailed(f"HEAD -> {resp.status}, Upload-Offset {got!r}")
    stats.patch.append(time.perf_counter() - t)
    stats.bytes_acked += size
    stats.completed += 1


def percentile(samples: list[float], p: float) -> float | None:
    """Nearest-rank percentile of ``samples`` (seconds), in milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return round(ordered[rank - 1] * 1000, 3)


async def run_scenario(
    endpoint: str | URL,
    scenario: Scenario,
    source: BodySource,
    *,
    timeout: float,
) -> ScenarioResult:
    """Run ``scenario.uploads`` uploads with ``scenario.concurrency`` workers."""
    endpoint = URL(str(endpoint))
    stats = _Stats()
    connector = aiohttp.TCPConnector(limit=scenario.concurrency, limit_per_host=0)
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    indices = iter(range(scenario.uploads))
    result = ScenarioResult(
        scenario=scenario.name,
        description=scenario.describe(),
        uploads=scenario.uploads,
        upload_size=scenario.size,
        chunk_size=scenario.chunk,
        concurrency=scenario.concurrency,
    )
    async with aiohttp.ClientSession(
        connector=connector, timeout=client_timeout, auto_decompress=False
    ) as session:

        async def worker() -> None:
            for index in indices:  # a shared iterator: each upload is taken exactly once
                try:
                    await _one_upload(session, endpoint, scenario, index, source, stats)
                except (_UploadFailed, aiohttp.ClientError, OSError, ValueError) as exc:
                    stats.errors += 1
                    if stats.first_error is None:
                        stats.first_error = f"{type(exc).__name__}: {exc}"

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker()) for _ in range(scenario.concurrency)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        except TimeoutError:
            result.timed_out = True
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.perf_counter() - t0

    result.completed = stats.completed
    result.errors = stats.errors
    result.first_error = stats.first_error
    result.wall_s = round(wall, 3)
    result.bytes_acked = stats.bytes_acked
    result.mib_per_s = round(stats.bytes_acked / MiB / wall, 1) if wall else 0.0
    result.uploads_per_s = round(stats.completed / wall, 1) if wall else 0.0
    result.patches = len(stats.patch)
    result.patch_p50_ms = percentile(stats.patch, 50)
    result.patch_p99_ms = percentile(stats.patch, 99)
    result.post_p50_ms = percentile(stats.post, 50)
    result.post_p99_ms = percentile(stats.post, 99)
    return result


def _fmt_size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"
