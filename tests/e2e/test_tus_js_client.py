"""tus-js-client (its Node build) against a real server process, through tus_js_upload.mjs."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .helpers import TUS, MiB, download_sha256, make_file, parse_metadata
from .server import ServerProcess

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("tus_js_upload.mjs")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed: the tus-js-client e2e tests need Node.js >= 18")
    if not (REPO / "node_modules" / "tus-js-client" / "package.json").exists():
        pytest.fail("node_modules/tus-js-client is missing: run `npm ci` at the repository root")
    return exe


async def run_tus_js(node: str, **args: Any) -> dict[str, Any]:
    """Run the Node script with ``args`` as its JSON argument; returns its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    detail = (
        f"exit {proc.returncode}\nstdout: {out.decode()[-4000:]}\nstderr: {err.decode()[-4000:]}"
    )
    assert lines, detail
    result: dict[str, Any] = json.loads(lines[-1])
    assert proc.returncode == 0 and "error" not in result, detail
    return result


async def head(url: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session, session.head(url, headers=TUS) as resp:
        assert resp.status == 200
        return resp


@pytest.mark.parametrize(
    ("size", "chunk_size", "source"),
    [
        (0, None, "stream"),
        (1, None, "stream"),
        (MiB + 7, 256 * 1024, "stream"),
        (MiB + 7, 100_000, "buffer"),
        (12 * MiB + 1, 5 * MiB, "stream"),
        (12 * MiB + 1, None, "buffer"),
    ],
    ids=["empty", "one-byte", "1MiB+7-chunked", "1MiB+7-buffer", "12MiB-chunked", "12MiB-one"],
)
async def test_upload(
    node: str,
    shared_server: ServerProcess,
    tmp_path: Path,
    size: int,
    chunk_size: int | None,
    source: str,
) -> None:
    path, digest = make_file(tmp_path / "src.bin", size, seed=10)
    args: dict[str, Any] = {"endpoint": shared_server.endpoint, "file": str(path), "source": source}
    if chunk_size:
        args["chunkSize"] = chunk_size
    result = await run_tus_js(node, **args)
    url = result["url"]
    assert url.startswith(shared_server.endpoint)
    patches = [m for m in result["methods"] if m.startswith("PATCH")]
    assert all(m == "PATCH 204" for m in patches), result["methods"]
    if chunk_size:
        assert len(patches) == -(-size // chunk_size)  # ceil
    resp = await head(url)
    assert resp.headers["Upload-Offset"] == str(size)
    assert resp.headers["Upload-Length"] == str(size)
    assert await download_sha256(url) == (size, digest)


async def test_metadata_and_headers(
    node: str, shared_server: ServerProcess, tmp_path: Path
) -> None:
    path, digest = make_file(tmp_path / "src.bin", 4096, seed=11)
    metadata = {"filename": "naïve 文件.txt", "filetype": "text/plain", "empty": ""}
    result = await run_tus_js(
        node,
        endpoint=shared_server.endpoint,
        file=str(path),
        metadata=metadata,
        headers={"X-Request-ID": "e2e-tus-js-client"},
    )
    resp = await head(result["url"])
    got = parse_metadata(resp.headers["Upload-Metadata"])
    assert got == {k: v.encode() for k, v in metadata.items()}
    assert await download_sha256(result["url"]) == (4096, digest)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [(9 * MiB + 5, None), (9 * MiB + 5, MiB), (10, None)],
    ids=["9MiB", "9MiB-chunked", "tiny"],
)
async def test_parallel_uploads_concatenate(
    node: str, shared_server: ServerProcess, tmp_path: Path, size: int, chunk_size: int | None
) -> None:
    """parallelUploads: 3 partial uploads and a final one (concatenation extension)."""
    path, digest = make_file(tmp_path / "src.bin", size, seed=12)
    args: dict[str, Any] = {
        "endpoint": shared_server.endpoint,
        "file": str(path),
        "parallelUploads": 3,
        "metadata": {"filename": "parallel.bin"},
    }
    if chunk_size:
        args["chunkSize"] = chunk_size
    result = await run_tus_js(node, **args)
    methods = result["methods"]
    # three partial creations, the final creation, no error anywhere
    assert methods.count("POST 201") == 4, methods
    assert all(int(m.split()[1]) < 300 for m in methods), methods

    final = result["url"]
    resp = await head(final)
    assert resp.headers["Upload-Offset"] == str(size)
    assert resp.headers["Upload-Length"] == str(size)
    concat = resp.headers["Upload-Concat"]
    assert concat.startswith("final;")
    parts = concat.removeprefix("final;").split()
    assert len(parts) == 3
    assert parse_metadata(resp.headers["Upload-Metadata"]) == {"filename": b"parallel.bin"}
    assert await download_sha256(final) == (size, digest)

    # each partial upload is complete and partial, and together they are the file
    total = 0
    async with aiohttp.ClientSession(shared_server.url) as session:
        for part in parts:
            async with session.head(part, headers=TUS) as presp:
                assert presp.status == 200
                assert presp.headers["Upload-Concat"] == "partial"
                assert presp.headers["Upload-Offset"] == presp.headers["Upload-Length"]
                total += int(presp.headers["Upload-Length"])
    assert total == size


@pytest.mark.parametrize(
    ("chunk_size", "abort_after", "resume_with"),
    [
        # aborted right after the 3rd chunk was accepted (or early in the 4th PATCH)
        (MiB, 3 * MiB, "uploadUrl"),
        # aborted in the middle of the 2nd PATCH (its first progress event)
        (4 * MiB, 4 * MiB + 1, "uploadUrl"),
        (4 * MiB, 4 * MiB + 1, "findPreviousUploads"),
    ],
    ids=["between-chunks", "mid-patch", "mid-patch-findPreviousUploads"],
)
async def test_interrupted_then_resumed(
    node: str,
    shared_server: ServerProcess,
    tmp_path: Path,
    chunk_size: int,
    abort_after: int,
    resume_with: str,
) -> None:
    size = 10 * MiB + 3
    path, digest = make_file(tmp_path / "src.bin", size, seed=13)
    result = await run_tus_js(
        node,
        endpoint=shared_server.endpoint,
        file=str(path),
        chunkSize=chunk_size,
        abortAfterBytes=abort_after,
        resumeWith=resume_with,
        urlStoragePath=str(tmp_path / "tus-url-storage.json"),
    )
    aborted = result["aborted"]
    assert aborted is not None
    assert aborted["acceptedOffset"] >= abort_after - chunk_size > 0
    # the second Upload resumed the first one (same URL) from the server's offset
    assert result["url"] == aborted["url"]
    assert result["methods"][0] == "HEAD 200", result["methods"]
    assert "POST 201" not in result["methods"]
    assert aborted["acceptedOffset"] <= result["resumeOffset"] < size
    assert await download_sha256(result["url"]) == (size, digest)


# --- the IETF draft modes: protocol 'ietf-draft-03' (interop 5) and 'ietf-draft-05' (6) -------


async def draft_head(url: str, version: int) -> aiohttp.ClientResponse:
    headers = {"Upload-Draft-Interop-Version": str(version)}
    async with aiohttp.ClientSession() as session, session.head(url, headers=headers) as resp:
        assert resp.status == 204
        return resp


@pytest.mark.parametrize(
    ("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)], ids=["03", "05"]
)
@pytest.mark.parametrize("chunk_size", [None, 256 * 1024], ids=["one-request", "chunked"])
async def test_ietf_draft_modes(
    node: str,
    shared_server: ServerProcess,
    tmp_path: Path,
    protocol: str,
    version: int,
    chunk_size: int | None,
) -> None:
    size = MiB + 7
    path, digest = make_file(tmp_path / "src.bin", size, seed=14)
    args: dict[str, Any] = {"endpoint": shared_server.endpoint, "file": str(path)}
    args["protocol"] = protocol
    if chunk_size:
        args["chunkSize"] = chunk_size
    result = await run_tus_js(node, **args)
    methods = result["methods"]
    # The draft's versions 5 and 6 answer creation and every append with 201 (tus: 204).
    assert methods[0] == "POST 201", methods
    patches = [m for m in methods if m.startswith("PATCH")]
    assert patches and all(m == "PATCH 201" for m in patches), methods
    if chunk_size:
        assert len(patches) == -(-size // chunk_size)
    state = await draft_head(result["url"], version)
    assert (state.headers["Upload-Offset"], state.headers["Upload-Complete"]) == (str(size), "?1")
    assert await download_sha256(result["url"]) == (size, digest)


@pytest.mark.parametrize(
    ("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)], ids=["03", "05"]
)
async def test_ietf_draft_modes_dropped_request_resumed(
    node: str, shared_server: ServerProcess, tmp_path: Path, protocol: str, version: int
) -> None:
    """A PATCH is dropped mid-body; a new Upload resumes the same upload URL (HEAD for the
    offset in the draft's version, then the rest) and the file ends byte-exact."""
    size = 10 * MiB + 3
    chunk_size = 4 * MiB
    path, digest = make_file(tmp_path / "src.bin", size, seed=15)
    result = await run_tus_js(
        node,
        endpoint=shared_server.endpoint,
        file=str(path),
        protocol=protocol,
        chunkSize=chunk_size,
        abortAfterBytes=chunk_size + 1,
        resumeWith="uploadUrl",
    )
    aborted = result["aborted"]
    assert aborted is not None and aborted["acceptedOffset"] >= chunk_size
    assert result["url"] == aborted["url"]
    # The draft's offset retrieval answers 204; no new upload was created.
    assert result["methods"][0] == "HEAD 204", result["methods"]
    assert "POST 201" not in result["methods"]
    assert aborted["acceptedOffset"] <= result["resumeOffset"] < size
    state = await draft_head(result["url"], version)
    assert state.headers["Upload-Complete"] == "?1"
    if version == 6:  # Upload-Length exists from 6 on (tus-js-client sends it at creation)
        assert state.headers["Upload-Length"] == str(size)
    assert await download_sha256(result["url"]) == (size, digest)
