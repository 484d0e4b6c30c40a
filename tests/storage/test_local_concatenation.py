"""A cancelled concatenation on the local chunk store ends only once its copy has.

The copy runs in a thread, which a cancellation cannot stop. If the caller's cancellation
went on at once, the final's lock would be let go while the thread still writes the final's
file, and the next attempt (a HEAD on the final) would start a second copy into the same file
(it truncates it first) beside the first.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import storage_backends.local as local
from storage_backends.local import LocalChunkStore


async def blocks(data: bytes) -> Any:
    yield data


async def test_a_cancelled_concatenation_waits_for_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalChunkStore(tmp_path / "u", fsync=False)
    await store.open()
    for part, data in (("p1", b"abc"), ("p2", b"defg")):
        await store.create(part)
        await store.write(part, 0, blocks(data), fsync=False)
    await store.create("final")

    started, release, copied = threading.Event(), threading.Event(), threading.Event()
    real = local._concat_files

    def slow_copy(target: Path, sources: list[Path], fsync: bool) -> int:
        started.set()
        release.wait(10)
        size = real(target, sources, fsync)
        copied.set()
        return size

    monkeypatch.setattr(local, "_concat_files", slow_copy)
    task = asyncio.create_task(store.concatenate("final", ["p1", "p2"], fsync=False))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.2)
    assert not task.done(), "the cancellation went on while the copy was still running"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert copied.is_set()
    assert await store.get_offset("final") == 7
