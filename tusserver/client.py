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
        self._data: dict[str, str] = {}
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if isinstance(data, dict):  # anything else (a file someone else wrote): ignored
            self._data = {k: v for k, v in data.items() if isinstance(v, str)}

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


@dataclass
class _Progress:
    """A file's bar and the bytes of it counted in the total bar."""

    bar: Any
    total_bar: Any
    counted: int = 0

    def start_at(self, offset: int) -> None:
        """Show ``offset`` bytes as already there, without counting them as sent now: they
        go into the bars' ``initial``, which tqdm leaves out of the rate."""
        _skip(self.bar, offset - self.bar.n)
        _skip(self.total_bar, offset - self.counted)
        self.counted = offset

    def sent(self, n: int) -> None:
        self.bar.update(n)
        self.total_bar.update(n)
        self.counted += n


def _skip(bar: Any, n: int) -> None:
    if n == 0 or getattr(bar, "disable", False):
        return
    bar.n += n
    bar.initial += n
    bar.last_print_n = bar.n
    bar.refresh()


async def _resume_point(
    session: aiohttp.ClientSession, url: str | None, headers: dict[str, str]
) -> tuple[str | None, int]:
    """(upload URL, offset) to go on from, or (None, 0) when it must start over."""
    if url is None:
        return None, 0
    async with session.head(url, headers={**TUS, **headers}) as resp:
        if resp.status == 200 and "Upload-Offset" in resp.headers:
            return url, int(resp.headers["Upload-Offset"])
    return None, 0


async def _upload_one(
    session: aiohttp.ClientSession,
    path: Path,
    *,
    endpoint: str,
    headers: dict[str, str],
    chunk_size: int,
    store: ResumeStore,
    progress: _Progress,
    start: tuple[str | None, int] | None = None,
) -> Result:
    size = os.stat(path).st_size
    key = fingerprint(path, endpoint)
    if start is None:  # a retry: ask the server again
        start = await _resume_point(session, store.get(key), headers)
    url, offset = start
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
    progress.start_at(offset)
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
            if new >= offset:
                progress.sent(new - offset)
            else:  # the server kept less than we thought
                progress.start_at(new)
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
    sizes = {p: p.stat().st_size for p in paths}

    async def resume_point(path: Path) -> tuple[str | None, int] | None:
        """Where an earlier run stopped; None when the server cannot say now (retried)."""
        try:
            return await _resume_point(session, store.get(fingerprint(path, endpoint)), headers)
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def run(i: int, path: Path, start: tuple[str | None, int] | None) -> Result:
        async with sem:
            # The bar starts where the upload resumes; those bytes are not in its rate.
            bar = tqdm(
                total=sizes[path],
                initial=start[1] if start else 0,
                unit="B",
                unit_scale=True,
                desc=path.name[:30],
                position=i + 1,
                leave=True,
                disable=quiet,
            )
            progress = _Progress(bar, total_bar, counted=start[1] if start else 0)
            try:
                for attempt in range(3):
                    try:
                        return await _upload_one(
                            session, path, endpoint=endpoint, headers=headers,
                            chunk_size=chunk_size, store=store, progress=progress,
                            start=start if attempt == 0 and start is not None else None,
                        )  # fmt: skip
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        if attempt == 2:
                            return Result(path, error=f"network: {exc}")
                        await asyncio.sleep(1 + attempt * 2)
                return Result(path, error="gave up")
            except UploadFailed as exc:
                return Result(path, error=str(exc))
            finally:
                bar.close()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        # Ask first where each file stands, so every bar starts at its resumed offset.
        starts = await asyncio.gather(*(resume_point(p) for p in paths))
        resumed = sum(s[1] for s in starts if s is not None)
        total_bar = tqdm(
            total=total,
            initial=resumed,
            unit="B",
            unit_scale=True,
            desc="total",
            disable=quiet,
            position=0,
        )
        try:
            results = await asyncio.gather(
                *(run(i, p, s) for i, (p, s) in enumerate(zip(paths, starts, strict=True)))
            )
        finally:
            total_bar.close()
    return list(results)


DEFAULT_ENDPOINT = "http://127.0.0.1:1080/uploads/"
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
DEFAULT_PARALLEL = 4


def default_resume_store() -> Path:
    """``$XDG_CACHE_HOME/tusserver/resume.json`` (``~/.cache/...`` without XDG_CACHE_HOME)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tusserver" / "resume.json"


def _parser() -> argparse.ArgumentParser:
    store = default_resume_store()
    p = argparse.ArgumentParser(
        prog="tusup",
        description=(
            "Upload files to a tus server, resumably: several at once, a sha256 checksum on\n"
            "every chunk and on the whole file. Run it again after an interruption and each\n"
            "file goes on from where the server has it (its progress bar starts there)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""environment:
  TUSUP_TOKEN     the access token (Authorization: Bearer), when --token is not given;
                  get one with POST /api/v1/auth/login (it is valid 15 minutes)
  TUSUP_ENDPOINT  the tus creation URL, when --endpoint is not given
  XDG_CACHE_HOME  where the resume file lives (default ~/.cache)

resume file:
  {store}
  It maps each file (path, size, modification time) and endpoint to its upload URL while
  the upload is unfinished; a file that finished leaves it. Delete it to start over.""",
    )
    p.add_argument("files", nargs="+", type=Path, help="files to upload")
    p.add_argument(
        "--endpoint",
        default=os.environ.get("TUSUP_ENDPOINT", DEFAULT_ENDPOINT),
        help=f"tus creation URL (default: $TUSUP_ENDPOINT, else {DEFAULT_ENDPOINT})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("TUSUP_TOKEN"),
        help="bearer access token (default: $TUSUP_TOKEN; none: no Authorization header)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"bytes per PATCH request (default: {DEFAULT_CHUNK_SIZE}, 8 MiB; at least 1024)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        help=f"files uploaded at once (default: {DEFAULT_PARALLEL})",
    )
    p.add_argument(
        "--resume-store",
        type=Path,
        default=store,
        help=f"the resume file (default: {store})",
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
