"""Where LocalObjectStore keeps an object's metadata: in an extended attribute of the object's
own file, set before the file is renamed into place; in a sidecar ``.meta/<key>.json`` when
the filesystem has no user xattrs or the metadata does not fit in one; objects written by
earlier versions (sidecar only) keep working, encrypted ones included.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from storage_backends.encryption import EncryptedObjectStore, KeyRing, generate_key_spec
from storage_backends.local import META_XATTR, LocalObjectStore
from tests.storage.stored_meta import sidecar_path, stored_doc, xattr_doc

K1, K2 = generate_key_spec("k1"), generate_key_spec("k2")
META = {"file-id": "f" * 32, "owner": "alice", "original-name": "Straße ☃.png", "sha256": "ab" * 32}
#: Past XATTR_SIZE_MAX (64 KiB): no filesystem takes it as one attribute (E2BIG).
HUGE = {"note": "x" * 70_000}


async def blocks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(store: Any, key: str) -> bytes:
    return b"".join([b async for b in store.get(key)])


def no_user_xattrs(calls: list[object]) -> Callable[..., None]:
    def refuse(*args: object) -> None:
        calls.append(args[0])
        raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))

    return refuse


Put = Callable[[LocalObjectStore, str, bytes, dict[str, str], Path], Awaitable[None]]


async def put_consume(
    store: LocalObjectStore, key: str, data: bytes, meta: dict[str, str], tmp: Path
) -> None:
    src = tmp / f"src-{len(list(tmp.iterdir()))}"
    src.write_bytes(data)
    await store.put_file(key, src, content_type="x/y", metadata=meta, consume=True)
    assert not src.exists()


async def put_copy(
    store: LocalObjectStore, key: str, data: bytes, meta: dict[str, str], tmp: Path
) -> None:
    src = tmp / f"src-{len(list(tmp.iterdir()))}"
    src.write_bytes(data)
    await store.put_file(key, src, content_type="x/y", metadata=meta)
    assert src.read_bytes() == data
    assert xattr_doc(src) is None  # the source keeps no trace of the object's metadata


async def put_stream(
    store: LocalObjectStore, key: str, data: bytes, meta: dict[str, str], tmp: Path
) -> None:
    await store.put_stream(key, blocks(data), size=len(data), content_type="x/y", metadata=meta)


async def put_built(
    store: LocalObjectStore, key: str, data: bytes, meta: dict[str, str], tmp: Path
) -> None:
    await store.put_built(key, lambda fd: os.pwrite(fd, data, 0), content_type="x/y", metadata=meta)


PUTS: dict[str, Put] = {
    "consume": put_consume,
    "copy": put_copy,
    "stream": put_stream,
    "built": put_built,
}


@pytest.fixture
def src_dir(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


@pytest.mark.parametrize("how", PUTS)
async def test_metadata_lives_in_the_objects_xattr(how: str, tmp_path: Path, src_dir: Path) -> None:
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    key = "alice/2026/12/06/f1/photo.png"
    await PUTS[how](store, key, b"pixels", META, src_dir)
    assert xattr_doc(root / key) == {"content_type": "x/y", "metadata": META}
    assert not (root / ".meta").exists()  # no sidecar, not even its directory
    info = await store.stat(key)
    assert info is not None
    assert (info.size, info.content_type, dict(info.metadata)) == (6, "x/y", META)
    assert store.read_meta(key) == ("x/y", META)
    # The object's new directories are private, like every directory of the store.
    for d in ("alice", "alice/2026/12/06", "alice/2026/12/06/f1"):
        assert stat.S_IMODE((root / d).stat().st_mode) == 0o700, d
    assert [k async for k in store.list_keys()] == [key]
    # A second object in the same (existing) directory.
    await PUTS[how](store, "alice/2026/12/06/f1/thumb.webp", b"small", {"t": "1"}, src_dir)
    assert store.read_meta("alice/2026/12/06/f1/thumb.webp") == ("x/y", {"t": "1"})
    await store.delete(key)
    assert await store.stat(key) is None
    assert store.read_meta(key) == ("application/octet-stream", {})


async def test_the_metadata_read_through_a_descriptor_is_that_files(tmp_path: Path) -> None:
    """What a Range read on an encrypted object uses: the envelope of the file it opened,
    even when another object was renamed over its key since."""
    store = LocalObjectStore(tmp_path / "o")
    await store.open()
    await put_stream(store, "k", b"one", {"v": "1"}, tmp_path)
    fd = os.open(store.path("k"), os.O_RDONLY)
    try:
        await put_stream(store, "k", b"two", {"v": "2"}, tmp_path)
        assert store.read_meta("k", fd) == ("x/y", {"v": "1"})
        assert store.read_meta("k") == ("x/y", {"v": "2"})
    finally:
        os.close(fd)


def plant_old_object(root: Path, key: str, data: bytes, doc: dict[str, Any]) -> None:
    """An object as an earlier version stored it: the file, and its metadata in a sidecar."""
    obj = root / key
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    sidecar_path(root, key).parent.mkdir(parents=True, exist_ok=True)
    sidecar_path(root, key).write_text(json.dumps(doc))


async def test_an_object_of_an_earlier_version_is_read_from_its_sidecar(tmp_path: Path) -> None:
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    plant_old_object(root, "a/old.bin", b"legacy", {"content_type": "a/b", "metadata": META})
    info = await store.stat("a/old.bin")
    assert info is not None and (info.content_type, dict(info.metadata)) == ("a/b", META)
    assert await read_all(store, "a/old.bin") == b"legacy"
    # Rewriting its metadata moves it into the attribute, atomically, and the sidecar goes.
    await store.replace_metadata("a/old.bin", {"v": "2"})
    assert xattr_doc(root / "a/old.bin") == {"content_type": "a/b", "metadata": {"v": "2"}}
    assert not sidecar_path(root, "a/old.bin").exists()
    assert store.read_meta("a/old.bin") == ("a/b", {"v": "2"})
    # Deleting an old object removes its sidecar too.
    plant_old_object(root, "a/gone.bin", b"x", {"content_type": "a/b", "metadata": {}})
    await store.delete("a/gone.bin")
    assert not (root / "a/gone.bin").exists() and not sidecar_path(root, "a/gone.bin").exists()
    # A new object over an old one's key: its own metadata, the stale sidecar removed.
    plant_old_object(root, "a/again.bin", b"x", {"content_type": "a/b", "metadata": {"o": "1"}})
    await put_stream(store, "a/again.bin", b"new", {"n": "1"}, tmp_path)
    assert store.read_meta("a/again.bin") == ("x/y", {"n": "1"})
    assert not sidecar_path(root, "a/again.bin").exists()


async def test_a_read_between_the_attribute_and_the_sidecar_removal_finds_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """replace_metadata on an older object sets the attribute, then removes the sidecar: a
    reader that looked for the attribute just before and for the sidecar just after still
    gets the metadata (it reads the attribute again), never an object without any."""
    import storage_backends.local as local

    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    plant_old_object(root, "a/old.bin", b"legacy", {"content_type": "a/b", "metadata": META})
    real_get = local._get_xattr
    calls: list[object] = []

    def get_racing(target: Any) -> bytes | None:
        calls.append(target)
        if len(calls) == 1:
            # The reader's first look finds no attribute; the rotation then completes.
            raw = real_get(target)
            store_doc = {"content_type": "a/b", "metadata": {"v": "2"}}
            os.setxattr(target, META_XATTR, json.dumps(store_doc).encode())
            sidecar_path(root, "a/old.bin").unlink()
            return raw
        return real_get(target)

    monkeypatch.setattr(local, "_get_xattr", get_racing)
    assert store.read_meta("a/old.bin") == ("a/b", {"v": "2"})
    assert len(calls) == 2


async def test_an_encrypted_object_of_an_earlier_version_reads_and_rotates(
    tmp_path: Path,
) -> None:
    root = tmp_path / "o"
    store = EncryptedObjectStore(LocalObjectStore(root), KeyRing.from_specs([K1]), segment_size=64)
    await store.open()
    data = os.urandom(1000)
    await store.put_stream("e/old.bin", blocks(data), size=1000, content_type="a/b", metadata={})
    # As an earlier version stored it: the envelope in the sidecar, no attribute.
    doc = stored_doc(root, "e/old.bin")
    os.removexattr(root / "e/old.bin", META_XATTR)
    plant_old_object(root, "e/old.bin", (root / "e/old.bin").read_bytes(), doc)
    assert await read_all(store, "e/old.bin") == data
    rotating = EncryptedObjectStore(
        LocalObjectStore(root), KeyRing.from_specs([K2, K1]), segment_size=64
    )
    await rotating.open()
    assert (await rotating.rotate()).rewrapped == 1
    assert not sidecar_path(root, "e/old.bin").exists()
    assert xattr_doc(root / "e/old.bin") is not None
    only_k2 = EncryptedObjectStore(LocalObjectStore(root), KeyRing.from_specs([K2]))
    await only_k2.open()
    assert await read_all(only_k2, "e/old.bin") == data


@pytest.mark.parametrize("how", PUTS)
async def test_without_user_xattrs_metadata_goes_to_sidecars(
    how: str, tmp_path: Path, src_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "setxattr", no_user_xattrs(calls))
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    for i in range(3):
        await PUTS[how](store, f"d{i}/f.bin", b"data", {"i": str(i)}, src_dir)
        assert xattr_doc(root / f"d{i}/f.bin") is None
        doc = json.loads(sidecar_path(root, f"d{i}/f.bin").read_bytes())
        assert doc == {"content_type": "x/y", "metadata": {"i": str(i)}}
        info = await store.stat(f"d{i}/f.bin")
        assert info is not None and dict(info.metadata) == {"i": str(i)}
    assert len(calls) == 1  # refused once: the store does not ask again
    await store.replace_metadata("d0/f.bin", {"i": "new"})
    assert store.read_meta("d0/f.bin") == ("x/y", {"i": "new"})
    assert len(calls) == 1
    await store.delete("d1/f.bin")
    assert not sidecar_path(root, "d1/f.bin").exists()
    assert [k async for k in store.list_keys()] == ["d0/f.bin", "d2/f.bin"]
    # Another store (another process, a remount) asks again.
    other = LocalObjectStore(root)
    await PUTS[how](other, "d3/f.bin", b"data", {}, src_dir)
    assert len(calls) == 2


@pytest.mark.parametrize("how", PUTS)
async def test_metadata_too_big_for_an_xattr_goes_to_the_sidecar(
    how: str, tmp_path: Path, src_dir: Path
) -> None:
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    await PUTS[how](store, "big/f.bin", b"data", HUGE, src_dir)
    assert xattr_doc(root / "big/f.bin") is None
    assert store.read_meta("big/f.bin") == ("x/y", HUGE)
    # Too big is about this object only: the next one has its attribute.
    await PUTS[how](store, "small/f.bin", b"data", META, src_dir)
    assert xattr_doc(root / "small/f.bin") is not None
    assert not sidecar_path(root, "small/f.bin").exists()
    # Replacing an object whose metadata is in the attribute by one whose metadata is too
    # big: the new object carries no attribute, so nothing shadows its sidecar.
    await PUTS[how](store, "small/f.bin", b"data2", HUGE, src_dir)
    assert xattr_doc(root / "small/f.bin") is None
    assert store.read_meta("small/f.bin") == ("x/y", HUGE)


async def test_a_stale_attribute_on_a_retried_commit_never_shadows_the_sidecar(
    tmp_path: Path,
) -> None:
    """A commit that set the attribute on the upload's file and died before the rename is
    retried with metadata too big for an attribute: the object must not carry the old one."""
    store = LocalObjectStore(tmp_path / "o")
    await store.open()
    src = tmp_path / "upload"
    src.write_bytes(b"bytes")
    os.setxattr(src, META_XATTR, json.dumps({"content_type": "old", "metadata": {}}).encode())
    await store.put_file("k/f.bin", src, content_type="x/y", metadata=HUGE, consume=True)
    assert xattr_doc(tmp_path / "o" / "k/f.bin") is None
    assert store.read_meta("k/f.bin") == ("x/y", HUGE)


async def test_replace_metadata_switches_atomically_between_places(tmp_path: Path) -> None:
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    await put_stream(store, "r/f.bin", b"data", {"v": "1"}, tmp_path)
    await store.replace_metadata("r/f.bin", {"v": "2"})  # attribute to attribute
    assert xattr_doc(root / "r/f.bin") == {"content_type": "x/y", "metadata": {"v": "2"}}
    await store.replace_metadata("r/f.bin", HUGE)  # attribute to sidecar
    assert xattr_doc(root / "r/f.bin") is None
    assert store.read_meta("r/f.bin") == ("x/y", HUGE)
    await store.replace_metadata("r/f.bin", {"v": "3"})  # sidecar to attribute
    assert xattr_doc(root / "r/f.bin") == {"content_type": "x/y", "metadata": {"v": "3"}}
    assert not sidecar_path(root, "r/f.bin").exists()
    assert (root / "r/f.bin").read_bytes() == b"data"


async def test_an_upload_on_another_filesystem_is_copied_with_its_metadata(
    tmp_path: Path, src_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename across filesystems (EXDEV): the copy gets the metadata, not the source."""
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(src).parent == src_dir:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "o"
    store = LocalObjectStore(root)
    await store.open()
    await put_consume(store, "x/f.bin", b"moved", META, src_dir)
    assert (root / "x/f.bin").read_bytes() == b"moved"
    assert xattr_doc(root / "x/f.bin") == {"content_type": "x/y", "metadata": META}
    assert [p.name for p in (root / "x").iterdir()] == ["f.bin"]  # no temporary file left


_RAMFS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path
    from storage_backends.encryption import EncryptedObjectStore, KeyRing
    from storage_backends.local import LocalObjectStore

    async def blocks(data):
        yield data

    async def main(root, key_spec):
        store = LocalObjectStore(root)
        await store.open()
        src = root.parent / "src"
        src.write_bytes(b"consumed")
        await store.put_file("a/f.bin", src, content_type="x/y", metadata={"m": "1"},
                             consume=True)
        await store.put_stream("b/f.bin", blocks(b"streamed"), size=8, content_type="x/y",
                               metadata={"m": "2"})
        enc = EncryptedObjectStore(store, KeyRing.from_specs([key_spec]), segment_size=64)
        await enc.open()
        await enc.put_stream("c/f.bin", blocks(b"sealed" * 50), size=300, content_type="x/y",
                             metadata={"m": "3"})
        plain = b"".join([b async for b in enc.get("c/f.bin")])
        out = {
            "xattrs_refused": not store._xattrs,
            "meta": [store.read_meta(k) for k in ("a/f.bin", "b/f.bin")],
            "sidecars": sorted(str(p.relative_to(root)) for p in root.rglob("*.json")),
            "encrypted_ok": plain == b"sealed" * 50,
            "enc_meta": dict((await enc.stat("c/f.bin")).metadata),
        }
        print(json.dumps(out))

    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
    """
)


def test_a_real_filesystem_without_user_xattrs(tmp_path: Path) -> None:
    """ramfs has no user xattrs (ENOTSUP), mounted in a user namespace of our own."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    mnt = tmp_path / "ramfs"
    (mnt / "objects").mkdir(parents=True)
    script = tmp_path / "run.py"
    script.write_text(_RAMFS_SCRIPT)
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount -t ramfs none {mnt}"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces to mount ramfs in: {probe.stderr.decode().strip()}")
    cmd = (
        f'mount -t ramfs none "{mnt}" && mkdir "{mnt}/objects" && '
        f'exec "{sys.executable}" "{script}" "{mnt}/objects" "{K1}"'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [unshare, "-rm", "sh", "-c", cmd], capture_output=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["xattrs_refused"] is True
    assert out["meta"] == [["x/y", {"m": "1"}], ["x/y", {"m": "2"}]]
    assert {".meta/a/f.bin.json", ".meta/b/f.bin.json", ".meta/c/f.bin.json"} <= set(
        out["sidecars"]
    )
    assert out["encrypted_ok"] is True
    assert out["enc_meta"] == {"m": "3"}
