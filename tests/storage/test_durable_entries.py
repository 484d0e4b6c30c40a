"""With fsync on, what the local stores create or rename survives a power loss: the new
file's directory is synced too (an fsync of a file covers its bytes, not its name).

A power loss cannot be staged in a test; what is checked is that the directories holding
the new names are synced after those names exist, and that nothing is synced with fsync off.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage_backends.encryption import EncryptedChunkStore, KeyRing
from storage_backends.fileio import write_atomic
from storage_backends.local import LocalChunkStore, LocalObjectStore
from tests.storage.test_encryption import K1, SEG


class Syncs:
    """The directories synced (by inode), and the names each held when it was."""

    def __init__(self) -> None:
        self.dirs: list[tuple[int, set[str]]] = []

    def synced(self, path: Path) -> set[str]:
        """Every name the directory held at any of its syncs."""
        ino = path.stat().st_ino
        return set().union(*[names for i, names in self.dirs if i == ino])


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syncs]:
    seen = Syncs()
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            seen.dirs.append((st.st_ino, set(os.listdir(fd))))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield seen


async def blocks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("fsync", [True, False])
async def test_a_new_upload_file_is_durable(tmp_path: Path, syncs: Syncs, fsync: bool) -> None:
    store = LocalChunkStore(tmp_path / "u", fsync=fsync)
    await store.open()
    await store.create("up")
    await store.create("pa")
    await store.write("pa", 0, blocks(b"abc"), fsync=fsync)
    await store.concatenate("final", ["pa"], fsync=fsync)
    expected = {"up", "pa", "final"} if fsync else set()
    assert syncs.synced(store.root) == expected


@pytest.mark.parametrize("fsync", [True, False])
async def test_an_encrypted_upload_and_its_key_are_durable(
    tmp_path: Path, syncs: Syncs, fsync: bool
) -> None:
    store = EncryptedChunkStore(
        tmp_path / "u", KeyRing.from_specs([K1]), segment_size=SEG, fsync=fsync
    )
    await store.open()
    await store.create("up")
    names = syncs.synced(store.root)
    assert ({"up", "up.key"} <= names) is fsync
    assert (names == set()) is not fsync


@pytest.mark.parametrize("how", ["consume", "copy", "stream", "built"])
@pytest.mark.parametrize("fsync", [True, False])
async def test_a_committed_object_is_durable(
    tmp_path: Path, syncs: Syncs, fsync: bool, how: str
) -> None:
    objects = LocalObjectStore(tmp_path / "o", fsync=fsync)
    await objects.open()
    key = "2026/12/07/file.bin"  # a day's first object: its directories are new
    src = tmp_path / "upload"
    src.write_bytes(b"abc")
    meta: dict[str, str] = {"a": "b"}
    if how in ("consume", "copy"):
        await objects.put_file(
            key, src, content_type="text/plain", metadata=meta, consume=how == "consume"
        )
    elif how == "stream":
        await objects.put_stream(
            key, blocks(b"abc"), size=3, content_type="text/plain", metadata=meta
        )
    else:
        await objects.put_built(
            key, lambda fd: os.pwrite(fd, b"abc", 0), content_type="text/plain", metadata=meta
        )
    root = objects.path(key).parents[3]
    chain = [(root, "2026"), (root / "2026", "12"), (root / "2026/12", "07")]
    chain.append((root / "2026/12/07", "file.bin"))
    for directory, name in chain:
        assert (name in syncs.synced(directory)) is fsync, (directory, name)


@pytest.mark.parametrize("durable", [True, False])
def test_write_atomic_durable(tmp_path: Path, syncs: Syncs, durable: bool) -> None:
    write_atomic(tmp_path / "new" / "doc", b"{}", durable=durable)
    assert ("doc" in syncs.synced(tmp_path / "new")) is durable
    assert ("new" in syncs.synced(tmp_path)) is durable
