"""Processes on one data directory (SQLite + the local chunk store) either share it with
lock files (``serve --workers N``, ``serve --role api``, ``tusserver worker``) or keep their
upload locks in memory (a lone ``serve``). The two kinds cannot be mixed: a lone ``serve``
does not see the lock files, so a PATCH on it and a PATCH on another process were both
acknowledged for the same offset and their bytes interleaved in the file. Such a second
process is refused at start, before it serves anything; processes that share start side by
side.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest

from tusserver.testing import HOST, clean_environ, free_port, tusserver_command
from tusserver.uploads.filelocks import DataDirInUse, claim_data_dir

from ..e2e.helpers import OCTET, TUS, create, make_bytes
from ..e2e.server import _defaults
from .conftest import RoleFactory

pytestmark = [pytest.mark.e2e]

_ENV = {"TUSSERVER_SWEEP_INTERVAL": "0", "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2"}


def _start_second(data_dir: Path, kind: str) -> subprocess.CompletedProcess[str]:
    """Start a second process on ``data_dir``; it must exit by itself (it is refused)."""
    args = ["worker"] if kind == "worker" else ["serve", "--role", kind]
    argv = [*tusserver_command(), "--data-dir", str(data_dir), *args]
    argv += ["--host", HOST, "--port", str(free_port())]
    env = {**clean_environ(), **_defaults(), **_ENV}
    try:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"a {kind} process started beside the first one on {data_dir}: it was not refused"
        ) from exc


@pytest.mark.parametrize(
    ("first", "second"),
    [("all", "all"), ("all", "api"), ("all", "worker"), ("api", "all")],
)
def test_a_lone_server_and_another_process_on_one_data_dir_are_refused(
    role_factory: RoleFactory, tmp_path: Path, first: str, second: str
) -> None:
    shared = tmp_path / "shared"
    running = role_factory(first, _ENV, data_dir=shared)
    done = _start_second(shared, second)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "data_dir" in done.stderr and "in use" in done.stderr, done.stderr
    assert str(shared) in done.stderr, done.stderr
    # the first one goes on serving
    assert running.running


def test_processes_that_share_a_data_dir_start_side_by_side(
    role_factory: RoleFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    api = role_factory("api", _ENV, data_dir=shared)
    other_api = role_factory("api", _ENV, data_dir=shared)
    worker = role_factory("worker", _ENV, data_dir=shared)
    assert api.running and other_api.running and worker.running
    # once they are gone, a lone server may have the directory
    for proc in (api, other_api, worker):
        proc.terminate()
    alone = role_factory("all", _ENV, data_dir=shared)
    assert alone.running


def _sweep(data_dir: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [*tusserver_command(), "--data-dir", str(data_dir), "sweep"]
    environ = {**clean_environ(), **_defaults(), **env}
    return subprocess.run(
        argv, env=environ, capture_output=True, text=True, timeout=60, check=False
    )


_EXPIRING = {**_ENV, "TUSSERVER_EXPIRATION": "3"}


async def _slow_body(data: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    """``data`` in 64 KiB pieces, one every 0.1 s."""
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]
        started.set()
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", ["all", "api"])
async def test_tusserver_sweep_never_expires_an_upload_a_server_is_writing(
    role_factory: RoleFactory, tmp_path: Path, kind: str
) -> None:
    """``tusserver sweep`` (a cron job, the documented alternative to the servers' own
    sweeps) beside running servers: an upload whose deadline passes while a PATCH streams
    into it is not inactive. The sweep's expiry must see the servers' upload locks; where it
    cannot (a lone ``serve`` keeps them in memory) it expires nothing. It expired the upload under
    the PATCH: the client got 204 for all its bytes, and the file then failed with "the
    uploaded bytes are missing"."""
    shared = tmp_path / "shared"
    server = role_factory(kind, _EXPIRING, data_dir=shared)
    data = make_bytes(64 * 1024 * 60, seed=7)  # about 6 s at 640 KiB/s
    async with aiohttp.ClientSession() as session:
        url = await create(session, server.endpoint, len(data))
        started = asyncio.Event()
        sending = asyncio.ensure_future(
            session.patch(
                url,
                data=_slow_body(data, started),
                headers={**OCTET, "Upload-Offset": "0"},
            )
        )
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(4)  # past the upload's deadline (3 s), the PATCH still streaming
        swept = await asyncio.to_thread(_sweep, shared, _EXPIRING)
        async with await sending as resp:
            assert resp.status == 204, await resp.text()
            assert resp.headers["Upload-Offset"] == str(len(data))
        # the bytes the client was told are stored are there
        if kind == "all":  # committed by its pipeline, and served
            deadline = time.monotonic() + 30
            while True:
                async with session.head(url, headers=TUS) as head:
                    assert head.status == 200
                    status = head.headers.get("X-File-Status")
                if status not in ("received", "validating") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == "committed", status
            async with session.get(url) as got:
                assert got.status == 200
                assert await got.read() == data
        else:  # no worker: the upload waits in the chunk store
            async with session.head(url, headers=TUS) as head:
                assert head.status == 200
                assert head.headers.get("X-File-Status") == "received"
            upload_id = url.rstrip("/").rsplit("/", 1)[1]
            assert (shared / "uploads" / upload_id).read_bytes() == data
    if kind == "all":
        # A lone serve: its locks are out of reach; the sweep says so, expires nothing (the
        # rest of the sweep needs no upload lock), and says what to change.
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "expired no upload: data_dir" in swept.stdout, swept.stdout
        assert "is in use" in swept.stdout, swept.stdout
        assert 'locker = "file"' in swept.stdout, swept.stdout
    else:
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "expired 0 upload(s)" in swept.stdout, swept.stdout
    assert "removed 0 orphaned upload(s)" in swept.stdout, swept.stdout


def test_a_server_starting_waits_for_a_short_claim_to_end(tmp_path: Path) -> None:
    """A ``tusserver sweep`` holds a shared claim for the few seconds it runs: a lone server
    started meanwhile waits for it instead of failing to start; a claim that lasts is
    refused once the wait is over."""
    locks = tmp_path / "locks"
    sweep = claim_data_dir(locks, alone=False)
    timer = threading.Timer(0.5, os.close, (sweep,))
    timer.start()
    started = time.monotonic()
    server = claim_data_dir(locks, alone=True, wait=10)
    assert 0.4 < time.monotonic() - started < 5
    try:
        with pytest.raises(DataDirInUse):
            claim_data_dir(locks, alone=False, wait=0.3)
    finally:
        os.close(server)
        timer.join()
