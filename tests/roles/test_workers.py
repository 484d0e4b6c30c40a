"""``tusserver serve --workers 2`` on the embedded default (SQLite + local disk).

Two server processes accept on one port under a supervisor. The tests place requests on a
chosen process: they open connections until the one they want accepted it (tests/roles/procs.py
reads /proc to know which did), so "on the other process" is a fact, not a hope.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tusserver.testing import listens

from ..e2e.helpers import OCTET, TUS, MiB, create, download_sha256, make_bytes, sha256
from ..ops.helpers import samples
from .conftest import RoleFactory, RoleProcess
from .procs import RawConnection, children, connect, connect_to, wait_children

pytestmark = pytest.mark.e2e

SETTINGS = {"TUSSERVER_LOCK_TIMEOUT": "10", "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2"}


def _start(role_factory: RoleFactory) -> tuple[RoleProcess, list[int]]:
    srv = role_factory("all", SETTINGS, extra_args=("--workers", "2"))
    assert srv.pid is not None
    pids = wait_children(srv.pid, 2)
    # each process listens on a socket of its own once its app has started
    deadline = time.monotonic() + 30
    while not all(listens(pid, srv.port) for pid in pids):
        assert time.monotonic() < deadline, "a server process does not listen"
        time.sleep(0.05)
    return srv, pids


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def _get_offset(port: int, pids: list[int], pid: int, path: str) -> int:
    conn = await connect_to(port, pids, pid)
    try:
        status, headers, _ = await conn.request("HEAD", path, TUS)
        assert status == 200, status
        return int(headers["upload-offset"])
    finally:
        await conn.close()


async def test_200_concurrent_uploads_are_byte_exact(role_factory: RoleFactory) -> None:
    srv, pids = _start(role_factory)
    count = 200
    payloads = [make_bytes(5_000 + 1_733 * i, seed=i) for i in range(count)]

    async def upload(session: aiohttp.ClientSession, data: bytes) -> str:
        url = await create(session, srv.endpoint, len(data))
        half = len(data) // 2
        for offset, piece in ((0, data[:half]), (half, data[half:])):
            async with session.patch(
                url, data=io.BytesIO(piece), headers={**OCTET, "Upload-Offset": str(offset)}
            ) as resp:
                assert resp.status == 204, (resp.status, await resp.text())
                assert int(resp.headers["Upload-Offset"]) == offset + len(piece)
        return url

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        urls = await asyncio.gather(*(upload(session, data) for data in payloads))
    for url, data in zip(urls, payloads, strict=True):
        assert await download_sha256(url) == (len(data), sha256(data))

    # /metrics of either process counts the requests of both
    for pid in pids:
        conn = await connect_to(srv.port, pids, pid)
        try:
            status, _, body = await conn.request("GET", "/metrics", {})
        finally:
            await conn.close()
        assert status == 200
        got = samples(body.decode())
        assert (
            got[("tusserver_http_requests_total", (("method", "POST"), ("status", "201")))] == count
        )
        assert (
            got[("tusserver_http_requests_total", (("method", "PATCH"), ("status", "204")))]
            == 2 * count
        )
    assert children(srv.pid or 0) == pids, "no process died on the way"


async def test_a_burst_of_connections_is_spread_over_the_processes(
    role_factory: RoleFactory,
) -> None:
    """A client opening its keep-alive connections at once (a load generator, a browser
    uploading many files) is served by every process, not by whichever woke first."""
    srv, pids = _start(role_factory)
    conns = await asyncio.gather(*(connect(srv.port, pids) for _ in range(16)))
    try:
        owners = [conn.owner for conn in conns]
        for pid in pids:
            assert owners.count(pid) >= 1, f"process {pid} accepted none of 16: {owners}"
        # and each connection is served by the process that accepted it
        for conn in conns:
            status, _, _ = await conn.request("OPTIONS", "/uploads/", TUS)
            assert status in (200, 204), status
    finally:
        for conn in conns:
            await conn.close()


async def test_patches_on_both_processes_never_interleave(role_factory: RoleFactory) -> None:
    """Rounds of PATCHes at the same offset, each with bytes of its own, sent at once on
    connections of both processes. One writer at a time means: at most one 204 per round,
    and what a round added is a prefix of one PATCH's bytes, never a mix of two."""
    srv, pids = _start(role_factory)
    size, chunk = 3 * MiB, 256 * 1024
    async with aiohttp.ClientSession() as session:
        path = _path(await create(session, srv.endpoint, size))
    reached: dict[int, int] = dict.fromkeys(pids, 0)
    rounds: list[tuple[int, int, list[bytes]]] = []  # (offset before, after, bodies sent)

    async def attempt(conn: RawConnection, at: int, body: bytes, go: asyncio.Event) -> int:
        # Everyone sends half a body, then waits until everyone has: the PATCHes overlap.
        try:
            await conn.send_head(
                "PATCH", path, {**OCTET, "Upload-Offset": str(at), "Content-Length": str(len(body))}
            )
            await conn.send(body[: len(body) // 2])
            await go.wait()
            await conn.send(body[len(body) // 2 :])
            status, _, _ = await conn.response()
        except (ConnectionError, asyncio.IncompleteReadError):
            status = 0  # let go of mid-body: the server may close the connection
        finally:
            await conn.close()
        reached[conn.owner] += 1
        assert status in (0, 204, 400, 409, 423), status
        return status

    offset = 0
    while offset < size:
        assert len(rounds) < 80, rounds
        n = len(rounds)
        length = min(chunk, size - offset)
        bodies = [make_bytes(length, seed=1000 * n + k) for k in range(2 * len(pids))]
        conns = [await connect_to(srv.port, pids, pids[k % len(pids)]) for k in range(len(bodies))]
        go = asyncio.Event()
        tasks = [
            asyncio.ensure_future(attempt(conn, offset, body, go))
            for conn, body in zip(conns, bodies, strict=True)
        ]
        await asyncio.sleep(0.2)
        go.set()
        statuses = await asyncio.gather(*tasks)
        assert statuses.count(204) <= 1, f"two PATCHes of one offset succeeded: {statuses}"
        new = await _get_offset(srv.port, pids, pids[n % len(pids)], path)
        assert offset <= new <= size
        rounds.append((offset, new, bodies))
        offset = new
    assert all(reached.values()), f"a process got no PATCH: {reached}"

    # read back once the file is committed (409 + Retry-After while the pipeline validates it)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{srv.url}{path}") as resp:
                waiting = resp.status == 409 and "Retry-After" in resp.headers
                if not waiting or time.monotonic() > deadline:
                    assert resp.status == 200, resp.status
                    content = await resp.read()
                    break
            await asyncio.sleep(0.1)
    assert len(content) == size
    for before, after, bodies in rounds:
        added = content[before:after]
        assert any(body.startswith(added) for body in bodies), (
            f"bytes {before}..{after} are not one PATCH's bytes: writes interleaved"
        )


async def test_a_patch_held_by_one_process_is_released_for_a_request_on_the_other(
    role_factory: RoleFactory,
) -> None:
    srv, pids = _start(role_factory)
    size, sent = 1 * MiB, 100_000
    data = make_bytes(size, seed=5)
    async with aiohttp.ClientSession() as session:
        path = _path(await create(session, srv.endpoint, size))
    holder, other = pids

    # a PATCH on the holder's connection sends part of its body, then stalls (a dead client)
    stalled = await connect_to(srv.port, pids, holder)
    await stalled.send_head(
        "PATCH", path, {**OCTET, "Upload-Offset": "0", "Content-Length": str(size)}
    )
    await stalled.send(data[:sent])
    await asyncio.sleep(0.5)  # the holder reads what was sent, and holds the upload

    # the client comes back on another connection, accepted by the other process
    retry = await connect_to(srv.port, pids, other)
    try:
        started = time.monotonic()
        status, headers, _ = await retry.request("HEAD", path, TUS)
        assert status == 200
        assert time.monotonic() - started < 5, "the holder did not let go (lock timeout is 10 s)"
        assert int(headers["upload-offset"]) == sent  # the holder stored what it had
        status, headers, _ = await retry.request(
            "PATCH", path, {**OCTET, "Upload-Offset": str(sent)}, data[sent:]
        )
        assert status == 204, status
        assert int(headers["upload-offset"]) == size
    finally:
        await retry.close()
    with_status = None
    try:
        with_status, _, _ = await asyncio.wait_for(stalled.response(), 10)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # closed without an answer: also a release
    finally:
        await stalled.close()
    assert with_status in (None, 400, 409, 423)
    assert await download_sha256(f"{srv.url}{path}") == (size, sha256(data))


async def test_a_killed_process_is_restarted_and_the_client_resumes(
    role_factory: RoleFactory,
) -> None:
    srv, pids = _start(role_factory)
    assert srv.pid is not None
    size = 4 * MiB
    data = make_bytes(size, seed=9)
    async with aiohttp.ClientSession() as session:
        path = _path(await create(session, srv.endpoint, size))
    victim, survivor = pids

    # a PATCH in flight on the victim, which is SIGKILLed mid-body
    conn = await connect_to(srv.port, pids, victim)
    await conn.send_head(
        "PATCH", path, {**OCTET, "Upload-Offset": "0", "Content-Length": str(size)}
    )
    await conn.send(data[:MiB])
    await asyncio.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(conn.response(), 10)
    await conn.close()

    # the supervisor starts a new process in its place
    now = wait_children(srv.pid, 2, exclude=frozenset({victim}))
    assert survivor in now
    assert srv.running

    # the client resumes from the offset the server reports, on any process
    offset = await _get_offset(srv.port, now, survivor, path)
    assert 0 <= offset <= MiB
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            f"{srv.url}{path}",
            data=io.BytesIO(data[offset:]),
            headers={**OCTET, "Upload-Offset": str(offset)},
        ) as resp,
    ):
        assert resp.status == 204, await resp.text()
    assert await download_sha256(f"{srv.url}{path}") == (size, sha256(data))
    # the new process serves too
    replacement = next(p for p in now if p != survivor)
    assert await _get_offset(srv.port, now, replacement, path) == size


async def test_sigterm_stops_every_process_gracefully(role_factory: RoleFactory) -> None:
    srv, pids = _start(role_factory)
    data = make_bytes(300_000, seed=3)
    async with aiohttp.ClientSession() as session:
        url = await create(session, srv.endpoint, len(data))
        async with session.patch(
            url, data=io.BytesIO(data), headers={**OCTET, "Upload-Offset": "0"}
        ) as resp:
            assert resp.status == 204
    started = time.monotonic()
    assert srv.terminate(timeout=40) == 0
    assert time.monotonic() - started < 35
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the supervisor"
    log = srv.log()
    assert "stopping the server processes" in log
    assert log.count("server process stopped") == 2, log
    assert "Traceback" not in log, log
    # the data survived: a single-process server on the same directory serves the file
    again = role_factory("all", SETTINGS, data_dir=srv.data_dir)
    assert await download_sha256(f"{again.url}{_path(url)}") == (len(data), sha256(data))


async def test_ctrl_c_to_the_whole_group_stops_every_process_once(
    role_factory: RoleFactory,
) -> None:
    """Ctrl-C in a terminal signals the whole process group (as systemd's SIGTERM reaches
    every process of the unit): each server process gets the signal directly and again from
    the supervisor, and still drains once, without a traceback."""
    srv, pids = _start(role_factory)
    assert srv.pid is not None
    assert srv.proc is not None
    os.killpg(os.getpgid(srv.pid), signal.SIGINT)
    code = await asyncio.to_thread(srv.proc.wait, 40)
    assert code == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the supervisor"
    log = srv.log()
    assert "Traceback" not in log and "GracefulExit" not in log, log
    assert log.count("server process stopped") == 2, log
    assert log.count("status=0") >= 2, log


async def test_serve_in_the_worker_role_listens_on_the_port_it_is_given(
    role_factory: RoleFactory,
) -> None:
    """`serve --role worker --port P` is `tusserver worker --port P`: its health and metrics
    answer on P (the port went to the HTTP setting the worker role does not use)."""
    srv = role_factory("all", SETTINGS, extra_args=("--role", "worker"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{srv.url}/healthz") as resp:
            assert resp.status == 200
        async with session.post(srv.endpoint, headers={**TUS, "Upload-Length": "1"}) as resp:
            assert resp.status == 404  # no tus endpoint: the pipeline only


async def _scrape_metrics(port: int, pids: list[int], pid: int) -> str:
    conn = await connect_to(port, pids, pid)
    try:
        status, _, body = await conn.request("GET", "/metrics", {})
    finally:
        await conn.close()
    assert status == 200
    return body.decode()


async def test_dependency_up_is_not_zero_for_a_healthy_server_with_two_processes(
    role_factory: RoleFactory,
) -> None:
    srv, pids = _start(role_factory)
    # scrape twice through the first process, as Prometheus would on any process
    await _scrape_metrics(srv.port, pids, pids[0])
    text = await _scrape_metrics(srv.port, pids, pids[0])
    got = samples(text)
    up = {labels: v for (name, labels), v in got.items() if name == "tusserver_dependency_up"}
    assert up, text
    # Everything is healthy: the DependencyDown alert (tusserver_dependency_up == 0) must
    # not match any series, and there is one series per dependency.
    assert all(v == 1 for v in up.values()), up
    names = [dict(labels)["dependency"] for labels in up]
    assert len(names) == len(set(names)), up  # one series per dependency, not one per process
