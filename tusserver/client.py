"""``tusup`` (also ``tusserver upload``): upload files from a terminal, resumably.

Several files go up at once, each with its own progress bar and one for the total. An
interrupted run (network drop, Ctrl-C, killed process) resumes on the next run: the upload
URL of each file is kept in a small resume store keyed by the file's fingerprint (path,
size, modification time) and the endpoint. Every chunk carries an ``Upload-Checksum``
(sha256) and the whole file's sha256 travels in the metadata, so the server verifies both.
Exits non-zero when any file fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import mimetypes
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm
from yarl import URL

__all__ = ["ResumeStore", "main", "upload_files"]

TUS = {"Tus-Resumable": "1.0.0"}


class UploadFailed(Exception):
    pass


class ResumeStore:
    """fingerprint -> upload URL, in a JSON file written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._data: dict[str, str] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            self._data = {}

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def put(self, key: str, url: str) -> None:
        self._data[key] = url
        self._save()

    def drop(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data, indent=1))
        os.replace(tmp, self.path)


def fingerprint(path: Path, endpoint: str) -> str:
    st = path.stat()
    raw = f"{endpoint}\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()


def _b64(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return base64.b64encode(data).decode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Result:
    path: Path
    url: str | None = None
    file_id: str | None = None
    error: str | None = None


async def _upload_one(
    session: aiohttp.ClientSession,
    path: Path,
    *,
    endpoint: str,
    headers: dict[str, str],
    chunk_size: int,
    store: ResumeStore,
    bar: Any,
    total_bar: Any,
) -> Result:
    size = os.stat(path).st_size
    key = fingerprint(path, endpoint)
    url = store.get(key)
    offset = 0
    if url is not None:
        async with session.head(url, headers={**TUS, **headers}) as resp:
            if resp.status == 200 and "Upload-Offset" in resp.headers:
                offset = int(resp.headers["Upload-Offset"])
            else:
                url = None
    if url is None:
        whole = await asyncio.to_thread(_sha256_file, path)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        meta = f"filename {_b64(path.name)},filetype {_b64(ctype)},sha256 {_b64(whole)}"
        async with session.post(
            endpoint,
            headers={**TUS, **headers, "Upload-Length": str(size), "Upload-Metadata": meta},
        ) as resp:
            if resp.status != 201:
                raise UploadFailed(f"creation refused: {resp.status} {(await resp.text())[:200]}")
            url = str(resp.url.join(URL(resp.headers["Location"])))
        store.put(key, url)
    bar.update(offset)
    total_bar.update(offset)
    setbacks = 0
    with open(path, "rb") as fh:  # noqa: ASYNC230 - reads happen in a thread below
        while offset < size:
            fh.seek(offset)
            data = await asyncio.to_thread(fh.read, chunk_size)
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
            async with session.patch(
                url,
                data=data,
                headers={
                    **TUS,
                    **headers,
                    "Content-Type": "application/offset+octet-stream",
                    "Upload-Offset": str(offset),
                    "Upload-Checksum": f"sha256 {digest}",
                },
            ) as resp:
                text = "" if resp.status == 204 else (await resp.text())[:200]
                if resp.status == 204:
                    new = int(resp.headers["Upload-Offset"])
                    setbacks = 0
                elif resp.status == 409 and "Upload-Offset" in resp.headers:
                    new = int(resp.headers["Upload-Offset"])
                elif _resumable(resp.status, text) and setbacks < 10:
                    # Interrupted, busy or briefly unavailable: ask where we are and go on.
                    setbacks += 1
                    await asyncio.sleep(min(0.5 * setbacks, 5))
                    new = await _server_offset(session, url, headers)
                else:
                    raise UploadFailed(f"PATCH refused: {resp.status} {text}")
            bar.update(new - offset)
            total_bar.update(new - offset)
            offset = new
    file_id = None
    async with session.head(url, headers={**TUS, **headers}) as resp:
        file_id = resp.headers.get("X-File-Id")
    store.drop(key)
    return Result(path, url=url, file_id=file_id)


def _resumable(status: int, text: str) -> bool:
    """Answers after which the upload goes on from HEAD's offset."""
    if status in (423, 429) or status >= 500:
        return True
    return status == 400 and (
        "interrupted" in text or "ended early" in text or "taken over" in text
    )


async def _server_offset(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with session.head(url, headers={**TUS, **headers}) as resp:
        if resp.status != 200 or "Upload-Offset" not in resp.headers:
            raise UploadFailed(f"HEAD failed: {resp.status}")
        return int(resp.headers["Upload-Offset"])


async def upload_files(
    paths: Sequence[Path],
    *,
    endpoint: str,
    token: str | None,
    chunk_size: int,
    parallel: int,
    store: ResumeStore,
    quiet: bool = False,
) -> list[Result]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    total = sum(p.stat().st_size for p in paths)
    sem = asyncio.Semaphore(parallel)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    total_bar = tqdm(
        total=total, unit="B", unit_scale=True, desc="total", disable=quiet, position=0
    )
    sizes = {p: p.stat().st_size for p in paths}

    async def run(i: int, path: Path) -> Result:
        async with sem:
            bar = tqdm(
                total=sizes[path],
                unit="B",
                unit_scale=True,
                desc=path.name[:30],
                position=i + 1,
                leave=True,
                disable=quiet,
            )
            try:
                for attempt in range(3):
                    try:
                        return await _upload_one(
                            session, path, endpoint=endpoint, headers=headers,
                            chunk_size=chunk_size, store=store, bar=bar, total_bar=total_bar,
                        )  # fmt: skip
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        if attempt == 2:
                            return Result(path, error=f"network: {exc}")
                        await asyncio.sleep(1 + attempt * 2)
                        bar.reset()
                return Result(path, error="gave up")
            except UploadFailed as exc:
                return Result(path, error=str(exc))
            finally:
                bar.close()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(run(i, p) for i, p in enumerate(paths)))
    total_bar.close()
    return list(results)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tusup", description="Upload files to a tus server")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--endpoint",
        default=os.environ.get("TUSUP_ENDPOINT", "http://127.0.0.1:1080/uploads/"),
        help="tus creation URL (TUSUP_ENDPOINT)",
    )
    p.add_argument("--token", default=os.environ.get("TUSUP_TOKEN"), help="bearer token")
    p.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024)
    p.add_argument("--parallel", type=int, default=4, help="files uploaded at once")
    p.add_argument(
        "--resume-store",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "tusserver"
        / "resume.json",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"tusup: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.chunk_size < 1024 or args.parallel < 1:
        print("tusup: --chunk-size >= 1024 and --parallel >= 1", file=sys.stderr)
        return 2
    store = ResumeStore(args.resume_store)
    with contextlib.suppress(KeyboardInterrupt):
        results = asyncio.run(
            upload_files(
                args.files,
                endpoint=args.endpoint,
                token=args.token,
                chunk_size=args.chunk_size,
                parallel=args.parallel,
                store=store,
                quiet=args.quiet,
            )
        )
        failed = 0
        for r in results:
            if r.error:
                failed += 1
                print(f"FAILED {r.path}: {r.error}", file=sys.stderr)
            else:
                print(f"{r.path}\t{r.url}\t{r.file_id or '-'}")
        return 1 if failed else 0
    print("tusup: interrupted; run again to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
