"""tusup's help (defaults, TUSUP_TOKEN, where the resume file lives) and its progress when it
resumes: the bars start at the resumed offset, and the skipped bytes are not in the rate."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

import tusserver.client as client_module
from tests.e2e.helpers import OCTET, TUS, MiB, download_sha256, make_file
from tusserver.client import ResumeStore, fingerprint, upload_files

from .conftest import ServerFactory
from .helpers import cli_env, describe, run

pytestmark = pytest.mark.e2e


def test_help_shows_defaults_the_token_variable_and_the_resume_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    settings = {"TUSUP_TOKEN": "tok-must-not-show", "XDG_CACHE_HOME": str(cache)}
    res = run(["upload", "--help"], settings)
    assert res.returncode == 0, describe(res)
    text = " ".join(res.stdout.split())  # argparse wraps lines
    assert "default: 8388608" in text and "default: 4" in text, text
    assert "http://127.0.0.1:1080/uploads/" in text
    assert "TUSUP_TOKEN" in text and "TUSUP_ENDPOINT" in text
    assert str(cache / "tusserver" / "resume.json") in text
    assert "tok-must-not-show" not in res.stdout + res.stderr
    # tusup is the same program
    direct = subprocess.run(
        [sys.executable, "-m", "tusserver.client", "--help"],
        env=cli_env(settings), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert direct.returncode == 0 and direct.stdout == res.stdout


class _Recorder:
    """tqdm bars drawn into memory, with what each was told."""

    def __init__(self) -> None:
        self.bars: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = io.StringIO()
        kwargs.update(file=out, disable=False, mininterval=0, miniters=1)
        bar = tqdm(*args, **kwargs)
        bar.created_initial = kwargs.get("initial", 0)
        bar.frames = out
        bar.updates = []
        original = bar.update

        def update(n: float | None = 1) -> bool | None:
            bar.updates.append(n)
            return original(n)

        bar.update = update
        self.bars.append(bar)
        return bar

    def by_desc(self, desc: str) -> Any:
        (bar,) = [b for b in self.bars if b.desc.startswith(desc)]
        return bar


def test_resumed_upload_progress_starts_at_its_offset(
    server_factory: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory()
    size, done = 3 * MiB, 1 * MiB
    path, digest = make_file(tmp_path / "resumed.bin", size, seed=11)
    fresh, _ = make_file(tmp_path / "fresh.bin", 2 * MiB, seed=12)
    data = path.read_bytes()

    # An earlier run: the upload exists with its first MiB, and its URL is in the store.
    create = urllib.request.Request(
        server.endpoint, method="POST", headers={**TUS, "Upload-Length": str(size)}
    )
    with urllib.request.urlopen(create, timeout=30) as resp:
        url = urllib.parse.urljoin(server.endpoint, resp.headers["Location"])
    patch = urllib.request.Request(
        url, data=data[:done], method="PATCH", headers={**OCTET, "Upload-Offset": "0"}
    )
    with urllib.request.urlopen(patch, timeout=30) as resp:
        assert resp.status == 204
    store = ResumeStore(tmp_path / "resume.json")
    store.put(fingerprint(path, server.endpoint), url)

    recorder = _Recorder()
    monkeypatch.setattr(client_module, "tqdm", recorder)
    results = asyncio.run(
        upload_files(
            [path, fresh], endpoint=server.endpoint, token=None, chunk_size=256 * 1024,
            parallel=2, store=store,
        )
    )  # fmt: skip
    assert [r.error for r in results] == [None, None], results
    assert results[0].url == url, "it started over instead of resuming"

    bar = recorder.by_desc("resumed.bin")
    assert bar.created_initial == done  # drawn from the resumed offset on
    first_frame = bar.frames.getvalue().split("\r")[1]
    assert "33%" in first_frame, bar.frames.getvalue()[:300]
    assert " 0%" not in bar.frames.getvalue()
    assert sum(bar.updates) == size - done  # only the bytes really sent count...
    assert bar.format_dict["initial"] == done  # ...and the rate is (n - initial) / time
    assert bar.n == size

    other = recorder.by_desc("fresh.bin")
    assert other.created_initial == 0 and sum(other.updates) == 2 * MiB

    total = recorder.by_desc("total")
    assert total.created_initial == done
    assert sum(total.updates) == size - done + 2 * MiB
    assert total.n == size + 2 * MiB

    assert asyncio.run(download_sha256(url)) == (size, digest)
