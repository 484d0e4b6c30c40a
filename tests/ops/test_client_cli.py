"""``tusserver upload`` (the tusup client) against a real server: several files at once, a
killed run resumed from its resume store, and the failures an operator meets."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.helpers import TUS, MiB, download_sha256, make_file
from tests.e2e.server import ServerProcess, free_port

from .conftest import ServerFactory
from .helpers import describe, popen, run, scrape

pytestmark = pytest.mark.e2e


def _upload_args(server: ServerProcess, store: Path, *extra: str | Path) -> list[str | Path]:
    return ["upload", "--quiet", "--endpoint", server.endpoint, "--resume-store", store, *extra]


def _results(res: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """path -> (upload URL, file id) from the client's output lines."""
    out = {}
    for line in res.stdout.splitlines():
        path, url, file_id = line.split("\t")
        out[path] = (url, file_id)
    return out


def _head_offset(url: str) -> int | None:
    req = urllib.request.Request(url, method="HEAD", headers=TUS)
    with urllib.request.urlopen(req, timeout=10) as resp:
        value = resp.headers.get("Upload-Offset")
    return None if value is None else int(value)


def _stored_urls(store: Path) -> list[str]:
    try:
        return list(json.loads(store.read_text()).values())
    except (FileNotFoundError, ValueError):
        return []


def test_upload_several_files(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory()
    sizes = {
        "tiny.bin": 1000,
        "small.bin": 256 * 1024 + 7,
        "medium.bin": 3 * MiB,
        "big.bin": 30 * MiB,
    }
    sources = {
        str(tmp_path / name): make_file(tmp_path / name, size, seed=i)
        for i, (name, size) in enumerate(sizes.items())
    }
    store = tmp_path / "resume.json"

    res = run(_upload_args(server, store, "--chunk-size", "1048576", *sources))
    assert res.returncode == 0, describe(res)
    results = _results(res)
    assert sorted(results) == sorted(sources), describe(res)
    urls = [url for url, _ in results.values()]
    assert len(set(urls)) == 4
    assert all(url.startswith(server.endpoint) for url in urls), urls
    assert all(file_id != "-" for _, file_id in results.values()), describe(res)
    assert _stored_urls(store) == [], "finished uploads must leave the resume store"

    async def verify() -> None:
        for path, (url, _) in results.items():
            size, digest = await download_sha256(url)
            assert (size, digest) == (Path(path).stat().st_size, sources[path][1]), path

    asyncio.run(verify())


def test_killed_upload_resumes(server_factory: ServerFactory, tmp_path: Path) -> None:
    server = server_factory()
    path, digest = make_file(tmp_path / "movie.bin", 40 * MiB, seed=7)
    store = tmp_path / "resume.json"
    args = _upload_args(server, store, "--chunk-size", "262144", "--parallel", "1", path)

    first = popen(args)
    try:
        deadline = time.monotonic() + 60
        while not (stored := _stored_urls(store)):
            assert first.poll() is None, f"the client ended before creating: {first.communicate()}"
            assert time.monotonic() < deadline, "the client never recorded its upload"
            time.sleep(0.02)
        url = stored[0]
        # Progress is read from /metrics, not by HEAD: a HEAD takes the upload's lock and
        # makes the server interrupt the client's PATCH in flight.
        while not scrape(server.url).get(("tusserver_bytes_received_total", ()), 0) > 0:
            assert first.poll() is None, f"the client ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "no bytes arrived"
            time.sleep(0.02)
        assert first.poll() is None, "the client finished before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert _stored_urls(store) == [url], "the killed run must leave its URL behind"
    offset = _head_offset(url)
    assert offset is not None and 0 < offset < 40 * MiB

    second = run(args)
    assert second.returncode == 0, describe(second)
    assert [u for u, _ in _results(second).values()] == [url], "the second run started over"
    assert _stored_urls(store) == []
    metrics = scrape(server.url)
    assert metrics[("tusserver_uploads_total", (("event", "created"),))] == 1
    assert metrics[("tusserver_uploads_total", (("event", "finished"),))] == 1

    size, got = asyncio.run(download_sha256(url))
    assert (size, got) == (40 * MiB, digest)


def test_missing_file_exits_2(tmp_path: Path) -> None:
    present, _ = make_file(tmp_path / "present.bin", 10)
    res = run(
        ["upload", "--quiet", "--resume-store", tmp_path / "r.json", present, tmp_path / "nope.bin"]
    )
    assert res.returncode == 2, describe(res)
    assert "nope.bin" in res.stderr and "Traceback" not in res.stderr, describe(res)
    assert res.stdout == ""


def test_server_down_fails_with_a_message(tmp_path: Path) -> None:
    path, _ = make_file(tmp_path / "a.bin", 5000)
    endpoint = f"http://127.0.0.1:{free_port()}/uploads/"
    res = run(
        ["upload", "--quiet", "--endpoint", endpoint, "--resume-store", tmp_path / "r.json", path]
    )
    assert res.returncode != 0, describe(res)
    assert "Traceback" not in res.stderr, describe(res)
    assert f"FAILED {path}" in res.stderr, describe(res)
    assert res.stdout == ""
