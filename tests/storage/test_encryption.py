"""Envelope encryption at rest: ciphertext on disk, exact plaintext back, tampering detected.

The object-store contract (tests/storage/test_object_store_contract.py) also runs every test
through :class:`EncryptedObjectStore`; these tests cover what is specific to encryption.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage_backends.base import StorageError, UploadDataMissing
from storage_backends.encryption import (
    OVERHEAD,
    EncryptedChunkStore,
    EncryptedObjectStore,
    EncryptionKeyError,
    IntegrityError,
    KeyRing,
    generate_key_spec,
    parse_key_spec,
)
from storage_backends.local import LocalObjectStore
from tests.storage.stored_meta import stored_doc, write_stored_doc
from tusserver.app import create_app
from tusserver.config import ConfigError, TusServerConfig
from tusserver.startup import resolve

SEG = 4096
MARKER = b"PLAINTEXT-MARKER-7f3a"
K1 = generate_key_spec("k1")
K2 = generate_key_spec("k2")


def plaintext(size: int, seed: int = 1) -> bytes:
    """Random bytes with the marker planted every 1000 bytes (so every segment has one)."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(size))
    for at in range(0, max(size - len(MARKER), 0), 1000):
        data[at : at + len(MARKER)] = MARKER
    return bytes(data)


async def blocks(data: bytes, size: int = 1500) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def read_all(
    store: EncryptedObjectStore, key: str, start: int = 0, n: int | None = None
) -> bytes:
    return b"".join([b async for b in store.get(key, start, n)])


def disk_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def objects(root: Path, *specs: str, active: str = "") -> EncryptedObjectStore:
    ring = KeyRing.from_specs(specs, active=active)
    return EncryptedObjectStore(LocalObjectStore(root), ring, segment_size=SEG)


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "id:base64"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), "id:base64"),
        ("k:not base64!", "not valid base64"),
        ("k:" + base64.b64encode(b"x" * 16).decode(), "must be 32 bytes, not 16"),
    ],
)
def test_malformed_master_keys_are_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(EncryptionKeyError, match=message):
        parse_key_spec(spec)


def test_config_names_the_key_setting(tmp_path: Path) -> None:
    # No key at all is a value mistake: the config refuses it when built.
    with pytest.raises(ConfigError, match=r"encryption_keys: .*no master key"):
        TusServerConfig(data_dir=tmp_path, encryption="envelope")
    with pytest.raises(ConfigError, match="s3_sse"):
        TusServerConfig(
            data_dir=tmp_path,
            encryption="envelope",
            encryption_keys=(K1,),
            chunk_store="s3",
            s3_endpoint="h:1",
            s3_access_key="a",
            s3_secret_key="b",
        )
    # The keys themselves (and the key file) are read by the start-up step, which create_app
    # runs, and the CLI before anything else.
    refused = {
        r"encryption_keys: .*32 bytes": {"encryption_keys": ("k:AAAA",)},
        "encryption_active_key": {"encryption_keys": (K1,), "encryption_active_key": "k9"},
        "encryption_key_file": {"encryption_key_file": str(tmp_path / "nope")},
        "configured twice": {"encryption_keys": (K1, K1)},
    }
    for message, settings in refused.items():
        config = TusServerConfig(data_dir=tmp_path, encryption="envelope", **settings)
        with pytest.raises(ConfigError, match=message):
            resolve(config)
        with pytest.raises(ConfigError, match=message):
            create_app(config)
    assert not (tmp_path / "uploads").exists()


def test_key_file_with_comments(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# rotated in March\n{K2}\n\n{K1}\n")
    cfg = TusServerConfig(data_dir=tmp_path, encryption="envelope", encryption_key_file=str(f))
    ring = resolve(cfg).key_ring
    assert ring is not None
    assert ring.key_ids == ["k2", "k1"]
    assert ring.active_id == "k2"


# --- object store --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
async def test_objects_are_ciphertext_on_disk_and_plaintext_back(tmp_path: Path, size: int) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    data = plaintext(size)
    await store.put_stream(
        "f/x.bin", blocks(data), size=size, content_type="a/b", metadata={"m": "1"}
    )
    assert await read_all(store, "f/x.bin") == data
    info = await store.stat("f/x.bin")
    assert info is not None and info.size == size and dict(info.metadata) == {"m": "1"}
    raw = (tmp_path / "o" / "f" / "x.bin").read_bytes()
    assert len(raw) == size + OVERHEAD * max(1, -(-size // SEG))
    if size >= len(MARKER):
        assert MARKER in data
    assert MARKER not in disk_bytes(tmp_path / "o")


async def test_ranges_at_every_segment_boundary_are_exact(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    size = 4 * SEG + 17
    data = plaintext(size)
    await store.put_stream("r.bin", blocks(data, 999), size=size, content_type="a/b", metadata={})
    points = sorted({0, 1, size - 1, size} | {k * SEG + d for k in range(1, 5) for d in (-1, 0, 1)})
    points = [p for p in points if 0 <= p <= size]
    for start in points:
        for end in points:
            if end > start:
                assert await read_all(store, "r.bin", start, end - start) == data[start:end], (
                    start,
                    end,
                )
    # A length past the end stops at the end; a start at the end is empty.
    assert await read_all(store, "r.bin", size - 3, 100) == data[-3:]
    assert await read_all(store, "r.bin", size, 10) == b""


async def test_a_tampered_segment_is_an_integrity_error_never_output(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    data = plaintext(3 * SEG)
    await store.put_stream("t.bin", blocks(data), size=len(data), content_type="a/b", metadata={})
    path = tmp_path / "o" / "t.bin"
    raw = bytearray(path.read_bytes())
    raw[(SEG + OVERHEAD) + 100] ^= 0x01  # a bit of segment 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="segment 1"):
        await read_all(store, "t.bin")
    with pytest.raises(IntegrityError):
        await read_all(store, "t.bin", SEG + 5, 10)
    # Segments that were not touched still read (Range reads only open their segments).
    assert await read_all(store, "t.bin", 0, SEG) == data[:SEG]


async def test_swapped_and_truncated_segments_are_detected(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    data = plaintext(3 * SEG)
    await store.put_stream("s.bin", blocks(data), size=len(data), content_type="a/b", metadata={})
    path = tmp_path / "o" / "s.bin"
    raw = path.read_bytes()
    unit = SEG + OVERHEAD
    path.write_bytes(raw[unit : 2 * unit] + raw[:unit] + raw[2 * unit :])
    with pytest.raises(IntegrityError):
        await read_all(store, "s.bin", 0, 10)
    path.write_bytes(raw[: 2 * unit])  # the last segment cut off
    with pytest.raises(IntegrityError):
        await read_all(store, "s.bin")


async def test_wrong_or_missing_master_key_fails_at_open_and_at_read(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    await store.put_stream(
        "a.bin", blocks(b"secret" * 10), size=60, content_type="a/b", metadata={}
    )
    other_k1 = generate_key_spec("k1")  # same id, different bytes
    with pytest.raises(EncryptionKeyError, match="'k1' is not the key"):
        await objects(tmp_path / "o", other_k1).open()
    with pytest.raises(EncryptionKeyError, match="'k1', which is not configured"):
        await objects(tmp_path / "o", K2).open()
    # Read-time check too (a store opened before someone swapped the keys, for instance).
    wrong = objects(tmp_path / "o", other_k1)
    with pytest.raises(EncryptionKeyError, match="cannot unwrap"):
        await read_all(wrong, "a.bin")


async def test_a_corrupted_wrapped_key_is_a_clear_error(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    await store.put_stream("w.bin", blocks(b"x" * 100), size=100, content_type="a/b", metadata={})
    root = tmp_path / "o"
    doc = stored_doc(root, "w.bin")
    wrapped = bytearray(base64.b64decode(doc["metadata"]["tusenc-key"]))
    wrapped[20] ^= 0xFF
    doc["metadata"]["tusenc-key"] = base64.b64encode(bytes(wrapped)).decode()
    write_stored_doc(root, "w.bin", doc)
    with pytest.raises(EncryptionKeyError, match="damaged envelope"):
        await read_all(store, "w.bin")
    doc["metadata"]["tusenc-key"] = "%%%"
    write_stored_doc(root, "w.bin", doc)
    with pytest.raises(IntegrityError, match="malformed"):
        await read_all(store, "w.bin")
    doc["metadata"]["tusenc-kid"] = "k7"
    doc["metadata"]["tusenc-key"] = base64.b64encode(bytes(wrapped)).decode()
    write_stored_doc(root, "w.bin", doc)
    with pytest.raises(EncryptionKeyError, match="'k7', which is not configured"):
        await read_all(store, "w.bin")


async def test_envelopes_cannot_be_swapped_between_objects(tmp_path: Path) -> None:
    store = objects(tmp_path / "o", K1)
    await store.open()
    for name in ("a", "b"):
        await store.put_stream(name, blocks(b"y" * 50), size=50, content_type="a/b", metadata={})
    root = tmp_path / "o"
    write_stored_doc(root, "b", stored_doc(root, "a"))
    with pytest.raises(EncryptionKeyError):
        await read_all(store, "b")


async def test_objects_without_envelope_are_refused_unless_plaintext_is_allowed(
    tmp_path: Path,
) -> None:
    """#16 item 15: plaintext in an encrypted store is an integrity error by default (it
    could be a substitution); the migration setting reads objects stored before encryption."""
    plain = LocalObjectStore(tmp_path / "o")
    await plain.open()
    await plain.put_stream("old.bin", blocks(b"legacy!"), size=7, content_type="a/b", metadata={})
    store = objects(tmp_path / "o", K1)
    await store.open()
    with pytest.raises(IntegrityError, match="no encryption envelope"):
        await read_all(store, "old.bin")
    with pytest.raises(IntegrityError):
        await read_all(store, "old.bin", 2, 3)
    ring = KeyRing.from_specs([K1])
    for inner in (LocalObjectStore(tmp_path / "o"), _Streamed(LocalObjectStore(tmp_path / "o"))):
        strict = EncryptedObjectStore(inner, ring, segment_size=SEG)
        with pytest.raises(IntegrityError):
            await read_all(strict, "old.bin")
        migrating = EncryptedObjectStore(inner, ring, segment_size=SEG, allow_plaintext=True)
        assert await read_all(migrating, "old.bin") == b"legacy!"
        assert await read_all(migrating, "old.bin", 2, 3) == b"gac"


class _Streamed:
    """A local object store seen only through the ObjectStore protocol (as S3 is): the
    encrypted store's generic read path, not its local-file fast path."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self._inner = inner
        self.kind = "streamed"

    def __getattr__(self, name: str) -> Any:
        local_only = ("path", "read_meta", "read_sidecar", "replace_metadata", "list_keys")
        if name in (*local_only, "put_built"):
            raise AttributeError(name)
        return getattr(self._inner, name)


async def test_rotation_rewraps_without_rewriting_data(tmp_path: Path) -> None:
    root = tmp_path / "o"
    store = objects(root, K1)
    await store.open()
    contents = {f"d/{i}.bin": plaintext(i * 1000 + 1, seed=i) for i in range(6)}
    for key, data in contents.items():
        await store.put_stream(
            key, blocks(data), size=len(data), content_type="a/b", metadata={"i": key}
        )
    before = {k: (root / k).read_bytes() for k in contents}

    rotating = objects(root, K2, K1)  # k2 active, k1 kept for reading
    await rotating.open()
    report = await rotating.rotate()
    assert (report.rewrapped, report.already_current) == (6, 0)
    assert (await rotating.rotate()).already_current == 6  # idempotent
    assert {k: (root / k).read_bytes() for k in contents} == before  # data untouched

    only_new = objects(root, K2)
    await only_new.open()  # k1 is no longer needed anywhere
    for key, data in contents.items():
        assert await read_all(only_new, key) == data
        info = await only_new.stat(key)
        assert info is not None and info.metadata == {"i": key}
    with pytest.raises(EncryptionKeyError, match="'k2', which is not configured"):
        await objects(root, K1).open()


# --- chunk store ---------------------------------------------------------------------------


def chunks(root: Path, *specs: str) -> EncryptedChunkStore:
    return EncryptedChunkStore(root, KeyRing.from_specs(specs), segment_size=SEG)


async def test_uploads_in_progress_are_ciphertext_and_resume_exactly(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("up1")
    data = plaintext(5 * SEG + 123)
    rnd = random.Random(7)
    offset = 0
    while offset < len(data):
        n = min(rnd.choice([1, 17, SEG - 1, SEG, SEG + 3, 3000]), len(data) - offset)
        assert await store.write("up1", offset, blocks(data[offset : offset + n], 700)) == n
        offset += n
        assert await store.get_offset("up1") == offset
    assert b"".join([b async for b in store.read("up1", 0, len(data))]) == data
    assert b"".join([b async for b in store.read("up1", SEG - 2, 5)]) == data[SEG - 2 : SEG + 3]
    assert MARKER not in disk_bytes(tmp_path / "u")


async def test_a_failed_checksum_leaves_the_upload_as_it_was(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("c")
    first = plaintext(SEG + 10, seed=2)
    await store.write("c", 0, blocks(first))

    def refuse() -> None:
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError):
        await store.write("c", len(first), blocks(plaintext(2 * SEG, seed=3)), verify=refuse)
    assert await store.get_offset("c") == len(first)
    more = plaintext(SEG, seed=4)
    assert await store.write("c", len(first), blocks(more), verify=lambda: None) == SEG
    assert b"".join([b async for b in store.read("c", 0, len(first) + SEG)]) == first + more
    assert not (tmp_path / "u" / "c.stage").exists()


async def test_bytes_before_a_broken_body_are_kept(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("b")
    data = plaintext(2 * SEG + 50)

    async def broken() -> AsyncIterator[bytes]:
        yield data[: SEG + 20]
        yield data[SEG + 20 : 2 * SEG + 50]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write("b", 0, broken())
    assert await store.get_offset("b") == len(data)
    assert b"".join([b async for b in store.read("b", 0, len(data))]) == data


async def test_a_torn_last_segment_is_not_counted_and_is_rewritten(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("t")
    data = plaintext(2 * SEG + 100)
    await store.write("t", 0, blocks(data))
    path = tmp_path / "u" / "t"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10  # the crash tore the re-sealed last segment
    path.write_bytes(bytes(raw))
    assert await store.get_offset("t") == 2 * SEG  # never more than what authenticates
    rest = data[2 * SEG :] + b"tail"
    await store.write("t", 2 * SEG, blocks(rest))
    assert await store.get_offset("t") == len(data) + 4
    assert b"".join([b async for b in store.read("t", 0, len(data) + 4)]) == data + b"tail"


async def test_chunk_tampering_and_key_loss(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("x")
    data = plaintext(3 * SEG)
    await store.write("x", 0, blocks(data))
    path = tmp_path / "u" / "x"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        b"".join([b async for b in store.read("x", 0, len(data))])
    with pytest.raises(EncryptionKeyError):
        await chunks(tmp_path / "u", K2).open()
    (tmp_path / "u" / "x.key").unlink()
    with pytest.raises(UploadDataMissing):
        await store.get_offset("x")


async def test_concatenation_and_rotation_of_uploads(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    parts = [plaintext(n, seed=n) for n in (SEG + 1, 7, 2 * SEG)]
    for i, part in enumerate(parts):
        await store.create(f"p{i}")
        await store.write(f"p{i}", 0, blocks(part))
    total = await store.concatenate("final", ["p0", "p1", "p2"], fsync=False)
    assert total == sum(map(len, parts))
    assert b"".join([b async for b in store.read("final", 0, total)]) == b"".join(parts)

    rotating = chunks(tmp_path / "u", K2, K1)
    await rotating.open()
    report = await rotating.rotate()
    assert report.rewrapped == 4
    after = chunks(tmp_path / "u", K2)
    await after.open()
    assert b"".join([b async for b in after.read("final", 0, total)]) == b"".join(parts)
    await after.delete("final")
    assert not (tmp_path / "u" / "final.key").exists()
    with pytest.raises(StorageError):
        await after.get_offset("final")


async def test_segments_sealed_from_large_and_misaligned_blocks(tmp_path: Path) -> None:
    # Blocks holding several whole segments (sealed from views, one pwritev per block),
    # blocks ending mid-segment (the tail carried to the next block), tiny blocks.
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("big")
    data = plaintext(23 * SEG + 77, seed=9)
    offset = 0
    for n, block in ((7 * SEG + 5, 3 * SEG + 1), (SEG - 5, 100), (15 * SEG + 77, 5 * SEG - 3)):
        assert await store.write("big", offset, blocks(data[offset : offset + n], block)) == n
        offset += n
        assert await store.get_offset("big") == offset
    assert offset == len(data)
    raw = (tmp_path / "u" / "big").read_bytes()
    assert len(raw) == len(data) + OVERHEAD * 24
    assert b"".join([b async for b in store.read("big", 0, len(data))]) == data
    for start, n in ((0, 1), (SEG - 1, 2), (5 * SEG + 3, 9 * SEG), (len(data) - 78, 78)):
        got = b"".join([b async for b in store.read("big", start, n)])
        assert got == data[start : start + n], (start, n)
    with pytest.raises(StorageError, match="shorter"):
        b"".join([b async for b in store.read("big", len(data) - 10, 11)])


async def test_a_broken_body_in_large_blocks_keeps_every_byte_received(tmp_path: Path) -> None:
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("b2")
    data = plaintext(9 * SEG + 300, seed=5)

    async def broken() -> AsyncIterator[bytes]:
        yield data[: 4 * SEG + 10]
        yield data[4 * SEG + 10 :]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write("b2", 0, broken())
    assert await store.get_offset("b2") == len(data)
    assert b"".join([b async for b in store.read("b2", 0, len(data))]) == data


async def test_short_writes_are_resumed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    real = os.pwritev

    def short(fd: int, bufs: list[Any], pos: int) -> int:
        # Never more than 1000 bytes at a time: ends inside a buffer, or on its edge.
        left, out = 1000, []
        for b in bufs:
            out.append(memoryview(b)[:left])
            left -= len(out[-1])
            if not left:
                break
        return real(fd, out, pos)

    monkeypatch.setattr(os, "pwritev", short)
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("s")
    data = plaintext(3 * SEG + 17, seed=8)
    assert await store.write("s", 0, blocks(data, 2 * SEG + 1)) == len(data)
    assert b"".join([b async for b in store.read("s", 0, len(data))]) == data


# --- commit without re-encryption (copy_into) ----------------------------------------------


def segments(raw: bytes, seg: int = SEG) -> list[bytes]:
    unit = seg + OVERHEAD
    return [raw[i : i + unit] for i in range(0, len(raw), unit)]


async def uploaded(store: EncryptedChunkStore, upload_id: str, data: bytes) -> None:
    """An upload written the way clients do: several appends, some inside a segment."""
    await store.create(upload_id)
    offset = 0
    for n in (1, SEG + 3, 2 * SEG - 2, len(data)):
        n = min(n, len(data) - offset)
        await store.write(upload_id, offset, blocks(data[offset : offset + n], 1100))
        offset += n
    assert await store.get_offset(upload_id) == len(data)


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
async def test_commit_copies_sealed_segments_without_reencrypting(
    tmp_path: Path, size: int
) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    data = plaintext(size, seed=size)
    await uploaded(up, "c1", data)
    chunk_path = tmp_path / "u" / "c1"
    before = chunk_path.read_bytes()

    meta = {"sha256": "ab" * 32, "tusenc-size": "999"}  # a stray envelope field is dropped
    assert await up.copy_into("c1", obj, "d/c1.bin", content_type="image/png", metadata=meta)

    # The upload's file is untouched (the pipeline deletes it after recording the commit).
    assert chunk_path.read_bytes() == before
    raw = (tmp_path / "o" / "d" / "c1.bin").read_bytes()
    assert len(raw) == size + OVERHEAD * max(1, -(-size // SEG))
    src, dst = segments(before), segments(raw)
    # Every segment but the last is the upload's, byte for byte (same nonce: no re-seal) ...
    assert dst[:-1] == src[: len(dst) - 1]
    # ... and the last one was sealed again (final), with a fresh nonce.
    if src:
        assert dst[-1][:12] != src[len(dst) - 1][:12]
    assert MARKER not in raw
    info = await obj.stat("d/c1.bin")
    assert info is not None
    assert (info.size, info.content_type) == (size, "image/png")
    assert dict(info.metadata) == {"sha256": "ab" * 32}
    assert await read_all(obj, "d/c1.bin") == data
    for start, n in ((0, 1), (SEG - 1, 2), (size - 1, 1), (SEG, 3 * SEG)):
        if 0 <= start < size:
            assert await read_all(obj, "d/c1.bin", start, n) == data[start : start + n]
    assert not [p for p in (tmp_path / "o" / "d").iterdir() if p.name.endswith(".tmp")]


async def test_a_committed_copy_is_a_proper_finished_object(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    data = plaintext(3 * SEG)  # a multiple of the segment size: the last full one is final
    await uploaded(up, "m", data)
    assert await up.copy_into("m", obj, "m.bin", content_type="a/b", metadata={})
    path = tmp_path / "o" / "m.bin"
    raw = path.read_bytes()
    # Cutting the final segment off is detected (its predecessor is not final) ...
    path.write_bytes(raw[: 2 * (SEG + OVERHEAD)])
    doc = stored_doc(tmp_path / "o", "m.bin")
    doc["metadata"]["tusenc-size"] = str(2 * SEG)
    write_stored_doc(tmp_path / "o", "m.bin", doc)
    with pytest.raises(IntegrityError):
        await read_all(obj, "m.bin")
    # ... and the data key is bound to the object key, not to the upload id.
    doc["metadata"]["tusenc-size"] = str(3 * SEG)
    write_stored_doc(tmp_path / "o", "m.bin", doc)
    path.write_bytes(raw)
    assert await read_all(obj, "m.bin") == data
    up_env = json.loads((tmp_path / "u" / "m.key").read_text())
    assert up_env["tusenc-key"] != doc["metadata"]["tusenc-key"]
    # (Planted as an object of an earlier version: its metadata in a sidecar.)
    (tmp_path / "o" / "x").mkdir()
    (tmp_path / "o" / "x" / "m.bin").write_bytes(raw)
    (tmp_path / "o" / ".meta" / "x").mkdir(parents=True)
    (tmp_path / "o" / ".meta" / "x" / "m.bin.json").write_text(json.dumps(doc))
    with pytest.raises(EncryptionKeyError):
        await read_all(obj, "x/m.bin")


async def test_commit_wraps_the_key_under_the_object_stores_active_key(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)  # an upload begun before the rotation
    await up.open()
    data = plaintext(2 * SEG + 9)
    await uploaded(up, "r", data)
    both = KeyRing.from_specs([K2, K1])
    up2 = EncryptedChunkStore(tmp_path / "u", both, segment_size=SEG)
    await up2.open()
    obj = EncryptedObjectStore(LocalObjectStore(tmp_path / "o"), both, segment_size=SEG)
    await obj.open()
    assert await up2.copy_into("r", obj, "r.bin", content_type="a/b", metadata={})
    doc = stored_doc(tmp_path / "o", "r.bin")
    assert doc["metadata"]["tusenc-kid"] == "k2"
    only_k2 = objects(tmp_path / "o", K2)
    assert await read_all(only_k2, "r.bin") == data


async def test_commit_replaces_an_existing_object(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    await obj.put_stream("k.bin", blocks(b"old" * 5000), size=15000, content_type="a", metadata={})
    data = plaintext(SEG + 1)
    await uploaded(up, "k", data)
    assert await up.copy_into("k", obj, "k.bin", content_type="b/c", metadata={"v": "2"})
    assert await up.copy_into("k", obj, "k.bin", content_type="b/c", metadata={"v": "2"})  # retry
    assert await read_all(obj, "k.bin") == data
    info = await obj.stat("k.bin")
    assert info is not None and (info.content_type, dict(info.metadata)) == ("b/c", {"v": "2"})


async def test_commit_falls_back_when_it_cannot_copy(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    await uploaded(up, "f", plaintext(SEG + 5))
    plain = LocalObjectStore(tmp_path / "plain")
    await plain.open()
    other_segment = EncryptedObjectStore(
        LocalObjectStore(tmp_path / "o2"), KeyRing.from_specs([K1]), segment_size=2 * SEG
    )
    await other_segment.open()
    for target in (plain, other_segment, object()):
        assert not await up.copy_into("f", target, "f.bin", content_type="a/b", metadata={})
    assert await plain.stat("f.bin") is None
    assert await other_segment.stat("f.bin") is None


async def test_commit_refuses_a_damaged_or_missing_upload(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    await uploaded(up, "t", plaintext(2 * SEG + 100))
    path = tmp_path / "u" / "t"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        await up.copy_into("t", obj, "t.bin", content_type="a/b", metadata={})
    assert await obj.stat("t.bin") is None
    assert [p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")] == []
    with pytest.raises(UploadDataMissing):
        await up.copy_into("nope", obj, "n.bin", content_type="a/b", metadata={})


# --- finish: the last segment sealed as final, the commit a rename -------------------------


def no_kernel_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from storage_backends.encryption import chunks as chunk_module

    def refuse(*_args: Any) -> None:
        raise AssertionError("the sealed upload was copied, not renamed")

    monkeypatch.setattr(chunk_module, "copy_range", refuse)


async def test_finish_reseals_only_the_last_segment_as_final(tmp_path: Path) -> None:
    up = chunks(tmp_path / "u", K1)
    await up.open()
    path = tmp_path / "u" / "f"
    for size in (1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5):
        data = plaintext(size, seed=size)
        await uploaded(up, "f", data)
        before = path.read_bytes()
        await up.finish("f")
        after = path.read_bytes()
        assert len(after) == len(before) == size + OVERHEAD * -(-size // SEG)
        # Every segment but the last is untouched; the last one got a fresh nonce.
        assert segments(after)[:-1] == segments(before)[:-1]
        assert segments(after)[-1][:12] != segments(before)[-1][:12]
        assert await up.get_offset("f") == size
        assert b"".join([b async for b in up.read("f", 0, size)]) == data
        for start in {0, SEG - 1, size - 1, max(size - SEG - 1, 0)}:
            n = min(SEG + 2, size - start)
            got = b"".join([b async for b in up.read("f", start, n)])
            assert got == data[start : start + n], (size, start)
        await up.finish("f")  # idempotent: already final
        assert path.read_bytes() == after
        await up.delete("f")
    await up.create("empty")
    await up.finish("empty")  # nothing to seal: an object's empty segment comes at commit
    assert (tmp_path / "u" / "empty").read_bytes() == b""


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
async def test_the_commit_of_a_finished_upload_is_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    import os

    no_kernel_copy(monkeypatch)
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    data = plaintext(size, seed=size + 1)
    await uploaded(up, "r1", data)
    await up.finish("r1")
    chunk_path = tmp_path / "u" / "r1"
    sealed, inode = chunk_path.read_bytes(), os.stat(chunk_path).st_ino
    meta = {"sha256": "cd" * 32, "tusenc-kid": "forged"}  # a stray envelope field is dropped
    assert await up.copy_into("r1", obj, "d/r1.bin", content_type="a/b", metadata=meta)
    obj_path = tmp_path / "o" / "d" / "r1.bin"
    if size:
        # The upload's sealed file became the object: same inode, same bytes.
        assert not chunk_path.exists()
        assert os.stat(obj_path).st_ino == inode
        assert obj_path.read_bytes() == sealed
    else:
        assert len(obj_path.read_bytes()) == OVERHEAD  # one empty, final segment
    info = await obj.stat("d/r1.bin")
    assert info is not None
    assert (info.size, dict(info.metadata)) == (size, {"sha256": "cd" * 32})
    assert await read_all(obj, "d/r1.bin") == data
    for start, n in ((0, 1), (SEG - 1, 2), (SEG, SEG), (size - 1, 1), (1, 3 * SEG)):
        if 0 <= start < size:
            assert await read_all(obj, "d/r1.bin", start, n) == data[start : start + n]
    assert MARKER not in obj_path.read_bytes()
    assert not [p for p in (tmp_path / "o" / "d").iterdir() if p.name.endswith(".tmp")]
    # The pipeline then deletes what is left of the upload (its key sidecar).
    await up.delete("r1")
    assert not list((tmp_path / "u").glob("r1*"))
    if size > SEG:
        # A renamed object is a proper finished object: cut at a segment boundary, detected.
        raw = obj_path.read_bytes()
        obj_path.write_bytes(raw[: SEG + OVERHEAD])
        doc = stored_doc(tmp_path / "o", "d/r1.bin")
        doc["metadata"]["tusenc-size"] = str(SEG)
        write_stored_doc(tmp_path / "o", "d/r1.bin", doc)
        with pytest.raises(IntegrityError):
            await read_all(obj, "d/r1.bin")


async def test_patches_and_blocks_not_aligned_to_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_kernel_copy(monkeypatch)
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    rnd = random.Random(11)
    data = plaintext(40 * SEG + 321, seed=12)
    await up.create("a")
    offset = 0
    while offset < len(data):
        # PATCHes from 1 byte to several segments, starting and ending anywhere in one;
        # network blocks of any size, up to several segments (the large, inline path).
        n = min(rnd.choice([1, 5, SEG - 1, SEG + 1, 2 * SEG, 7 * SEG + 3]), len(data) - offset)
        block = rnd.choice([1, 300, SEG - 7, SEG, 3 * SEG + 11, 20 * SEG])
        assert await up.write("a", offset, blocks(data[offset : offset + n], block)) == n
        offset += n
        assert await up.get_offset("a") == offset
    await up.finish("a")
    assert await up.copy_into("a", obj, "a.bin", content_type="a/b", metadata={})
    assert await read_all(obj, "a.bin") == data
    for k in range(1, 41, 3):
        for start in (k * SEG - 1, k * SEG, k * SEG + 1):
            assert await read_all(obj, "a.bin", start, 3) == data[start : start + 3]


async def test_a_torn_finish_is_not_counted_and_is_resent(tmp_path: Path) -> None:
    # A crash while finish() re-seals the last segment in place leaves one that
    # authenticates neither as final nor as not final: the upload is not finished (the
    # service records that only after finish returns), HEAD reports the offset before that
    # segment, and the client sends those bytes again.
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    for size in (2 * SEG + 100, 3 * SEG):
        data = plaintext(size, seed=size)
        key = f"t{size}"
        await uploaded(up, key, data)
        await up.finish(key)
        path = tmp_path / "u" / key
        raw = bytearray(path.read_bytes())
        raw[-3] ^= 0x40
        path.write_bytes(bytes(raw))
        last = (size - 1) // SEG * SEG
        assert await up.get_offset(key) == last
        with pytest.raises(IntegrityError):
            await up.finish(key)
        with pytest.raises(IntegrityError):
            await up.copy_into(key, obj, key, content_type="a/b", metadata={})
        assert await up.write(key, last, blocks(data[last:])) == size - last
        assert await up.get_offset(key) == size
        await up.finish(key)
        assert await up.copy_into(key, obj, key, content_type="a/b", metadata={})
        assert await read_all(obj, key) == data


async def test_a_final_last_segment_is_resealed_by_a_later_append(tmp_path: Path) -> None:
    # finish() done but not recorded (a crash in between): the client's retry appends
    # nothing, or (deferred length) more bytes; the final segment becomes a plain one again,
    # and finish seals the new last one.
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    data = plaintext(2 * SEG + 10, seed=3)
    await uploaded(up, "x", data)
    await up.finish("x")
    assert await up.write("x", len(data), blocks(b"")) == 0
    assert await up.get_offset("x") == len(data)
    more = plaintext(SEG + 7, seed=4)
    assert await up.write("x", len(data), blocks(more, 999)) == len(more)
    whole = data + more
    assert await up.get_offset("x") == len(whole)
    assert b"".join([b async for b in up.read("x", 0, len(whole))]) == whole
    await up.finish("x")
    assert await up.copy_into("x", obj, "x.bin", content_type="a/b", metadata={})
    assert await read_all(obj, "x.bin") == whole


@pytest.mark.parametrize("fsync", [True, False])
async def test_resume_after_a_crash_mid_segment(tmp_path: Path, fsync: bool) -> None:
    # The connection drops in the middle of a segment (a large block is on its way): what
    # arrived is sealed as a partial last segment; the next PATCH re-seals it with the rest.
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("c")
    data = plaintext(30 * SEG + 99, seed=21)
    cut = 17 * SEG + 1234

    async def dropped() -> AsyncIterator[bytes]:
        yield data[: 16 * SEG]
        yield data[16 * SEG : cut]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write("c", 0, dropped(), fsync=fsync)
    assert await store.get_offset("c") == cut
    raw = (tmp_path / "u" / "c").read_bytes()
    assert len(raw) == cut + OVERHEAD * 18
    rest = data[cut:]
    assert await store.write("c", cut, blocks(rest, 20 * SEG), fsync=fsync) == len(rest)
    await store.finish("c")
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    assert await store.copy_into("c", obj, "c.bin", content_type="a/b", metadata={})
    assert await read_all(obj, "c.bin") == data


@pytest.mark.parametrize("fsync", [True, False])
async def test_large_writes_are_staged_and_written_by_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    # Blocks are sealed on the event loop into staging buffers of about 1 MiB, written by
    # worker threads; only small writes go to the page cache from the event loop. Blocks
    # bigger than a staging buffer fill several; blocks of one byte still end up staged.
    import threading
    import time

    from storage_backends import fileio
    from storage_backends.encryption import chunks as chunk_module

    writes: list[tuple[bool, int, int]] = []  # (from the event loop, position, bytes)
    real = chunk_module.pwritev_all
    loop_thread = threading.get_ident()
    busy = threading.Lock()

    def spy(fd: int, bufs: list[Any], pos: int) -> int:
        # Never two writes at once, and in the file's order: after a crash only the last
        # segment can be damaged (a later one is never written before an earlier one).
        assert busy.acquire(blocking=False), "two writes at once"
        try:
            on_loop = threading.get_ident() == loop_thread
            writes.append((on_loop, pos, sum(map(len, bufs))))
            if not on_loop:
                time.sleep(0.005)  # a slow disk: the event loop must wait for this write
            return real(fd, bufs, pos)
        finally:
            busy.release()

    monkeypatch.setattr(chunk_module, "pwritev_all", spy)
    store = chunks(tmp_path / "u", K1)
    await store.open()
    await store.create("s")
    data = plaintext(960 * SEG + 9, seed=5)  # about 3.7 MiB
    offset = 0

    async def sizes(piece: bytes, *cuts: int) -> AsyncIterator[bytes]:
        for a, b in itertools.pairwise((0, *cuts, len(piece))):
            yield piece[a:b]

    # The last PATCH fills a staging buffer exactly with its first block (its write starts),
    # then sends small blocks: those wait for that write before going to the page cache.
    last = 260 * SEG - 1
    for n, source in (
        (1, lambda p: blocks(p, 1)),
        (650 * SEG, lambda p: blocks(p, 300 * SEG + 5)),
        (50 * SEG + 9, lambda p: blocks(p, 1)),
        (last, lambda p: sizes(p, 256 * SEG - 8, 257 * SEG - 8, 258 * SEG)),
    ):
        first = len(writes)
        assert await store.write("s", offset, source(data[offset : offset + n]), fsync=fsync)
        offset += n
        # One PATCH's writes follow each other in the file, from its partial last segment.
        mine = writes[first:]
        assert mine[0][1] == (offset - n) // SEG * (SEG + OVERHEAD)
        assert all(b[1] == a[1] + a[2] for a, b in itertools.pairwise(mine))
    assert all(n <= fileio.INLINE_WRITE for on_loop, _, n in writes if on_loop)
    assert sum(n for on_loop, _, n in writes if not on_loop) > 2 * 1024 * 1024
    unit = SEG + OVERHEAD
    staged = max(n for _, _, n in writes)
    assert staged == (1024 * 1024 // SEG) * unit  # a full staging buffer, never more
    # The file holds exactly the sealed segments, and they read back.
    assert await store.get_offset("s") == len(data)
    assert (tmp_path / "u" / "s").stat().st_size == len(data) + OVERHEAD * 961
    assert b"".join([b async for b in store.read("s", 0, len(data))]) == data


async def test_concatenated_finished_parts_commit_by_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_kernel_copy(monkeypatch)
    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    parts = [plaintext(n, seed=n) for n in (SEG + 1, 7, 2 * SEG)]
    for i, part in enumerate(parts):
        await uploaded(up, f"p{i}", part)
        await up.finish(f"p{i}")  # a partial upload is finished too before the final one
    total = await up.concatenate("final", ["p0", "p1", "p2"], fsync=False)
    assert b"".join([b async for b in up.read("final", 0, total)]) == b"".join(parts)
    await up.finish("final")
    assert await up.copy_into("final", obj, "cat.bin", content_type="a/b", metadata={})
    assert await read_all(obj, "cat.bin") == b"".join(parts)


async def test_read_blocks_are_never_views_of_reused_buffers(tmp_path: Path) -> None:
    import asyncio

    from storage_backends.encryption import segments

    obj = objects(tmp_path / "o", K1)
    await obj.open()
    contents = {f"v{i}": plaintext(30 * SEG + i, seed=i) for i in range(4)}
    for key, data in contents.items():
        await obj.put_stream(key, blocks(data, 7000), size=len(data), content_type="a", metadata={})
    rnd = random.Random(2)
    asks = [
        (key, start, rnd.choice([1, 100, SEG, 3 * SEG + 5, None]))
        for key, data in contents.items()
        for start in (rnd.randrange(len(data)) for _ in range(25))
    ]

    async def one(key: str, start: int, n: int | None) -> list[bytes]:
        return [b async for b in obj.get(key, start, n)]

    # Many reads at once, interleaved; every block kept until all are done.
    results = await asyncio.gather(*(one(*a) for a in asks))
    for (key, start, n), got in zip(asks, results, strict=True):
        assert all(type(b) is bytes for b in got)
        want = contents[key][start:] if n is None else contents[key][start : start + n]
        assert b"".join(got) == want, (key, start, n)
    assert segments.POOL._kept <= segments.POOL._limit


async def test_abandoned_reads_close_their_files(tmp_path: Path) -> None:
    import os

    up = chunks(tmp_path / "u", K1)
    await up.open()
    obj = objects(tmp_path / "o", K1)
    await obj.open()
    data = plaintext(40 * SEG + 3)
    await uploaded(up, "a", data)
    assert await up.copy_into("a", obj, "a.bin", content_type="a/b", metadata={})
    before = len(os.listdir("/proc/self/fd"))
    for blocks_of in (up.read("a", 0, len(data)), obj.get("a.bin"), obj.get("a.bin", SEG, None)):
        first = await anext(blocks_of)
        assert first == data[: len(first)] or first == data[SEG : SEG + len(first)]
        await blocks_of.aclose()
    assert len(os.listdir("/proc/self/fd")) == before


# --- local object store: fsync, and the generic (streamed) read path -----------------------


@pytest.mark.parametrize("fsync", [True, False])
async def test_local_object_store_fsync_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fsync: bool
) -> None:
    import os

    from storage_backends import local

    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(local.os, "fsync", spy)
    store = LocalObjectStore(tmp_path / "o", fsync=fsync)
    await store.open()
    await store.put_stream("a", blocks(b"x" * 100), size=100, content_type="a/b", metadata={})
    assert bool(synced) is fsync
    up = chunks(tmp_path / "u", K1)
    await up.open()
    await uploaded(up, "f", plaintext(SEG + 1))
    synced.clear()
    enc = EncryptedObjectStore(store, KeyRing.from_specs([K1]), segment_size=SEG)
    assert await up.copy_into("f", enc, "f.bin", content_type="a/b", metadata={})
    assert bool(synced) is fsync


class Rechunked:
    """An object store that is not local disk (as S3 is not): it hands out its bytes in
    blocks of random sizes, so segments straddle blocks in every way."""

    kind = "rechunked"

    def __init__(self, inner: LocalObjectStore) -> None:
        self._inner = inner
        self._rnd = random.Random(3)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, key: str, start: int = 0, length: int | None = None) -> Any:
        data = b"".join([b async for b in self._inner.get(key, start, length)])
        at = 0
        while at < len(data):
            n = self._rnd.choice([1, 27, 28, 29, SEG - 1, SEG + OVERHEAD, 3 * SEG + 7])
            yield data[at : at + n]
            at += n


async def test_streamed_reads_open_segments_across_any_block_boundaries(tmp_path: Path) -> None:
    local = LocalObjectStore(tmp_path / "o")
    store = EncryptedObjectStore(Rechunked(local), KeyRing.from_specs([K1]), segment_size=SEG)
    await store.open()
    size = 6 * SEG + 33
    data = plaintext(size, seed=4)
    await store.put_stream("g.bin", blocks(data, 5000), size=size, content_type="a", metadata={})
    for _ in range(3):
        assert await read_all(store, "g.bin") == data
    for start, n in ((0, 1), (SEG - 2, 4), (2 * SEG + 1, 3 * SEG), (size - 33, 100), (5, None)):
        want = data[start:] if n is None else data[start : start + n]
        assert await read_all(store, "g.bin", start, n) == want, (start, n)


def test_no_plaintext_file_path_is_offered(tmp_path: Path) -> None:
    # The pipeline's local fast paths read files directly; they must see plaintext only
    # through read(), so the encrypted store does not claim LocalFileAccess.
    from storage_backends.base import LocalFileAccess

    assert not isinstance(chunks(tmp_path, K1), LocalFileAccess)


# --- CLI -----------------------------------------------------------------------------------


def test_cli_generate_and_rotate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from tusserver import cli
    from tusserver.cli import main

    # In-process: the CLI must not point the worker's logging at pytest's captured stderr.
    monkeypatch.setattr(cli, "configure_logging", lambda **_kw: None)

    assert main(["keys", "generate", "k3"]) == 0
    kid, key = parse_key_spec(capsys.readouterr().out.strip())
    assert kid == "k3" and len(key) == 32
    assert main(["keys", "generate", "bad id"]) == 2

    data_dir = tmp_path / "data"
    payload = plaintext(3 * SEG + 1)

    async def seed() -> None:
        obj = EncryptedObjectStore(
            LocalObjectStore(data_dir / "objects"), KeyRing.from_specs([K1]), segment_size=SEG
        )
        await obj.open()
        await obj.put_stream(
            "a/b.bin", blocks(payload), size=len(payload), content_type="x/y", metadata={}
        )
        up = EncryptedChunkStore(data_dir / "uploads", KeyRing.from_specs([K1]), segment_size=SEG)
        await up.open()
        await up.create("inprogress")
        await up.write("inprogress", 0, blocks(payload[:100]))

    asyncio.run(seed())
    cfg = tmp_path / "tusserver.toml"
    cfg.write_text(
        f'encryption = "envelope"\nencryption_keys = ["{K2}", "{K1}"]\ndata_dir = "{data_dir}"\n'
    )
    assert main(["--config", str(cfg), "keys", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "uploads in progress: 1 re-wrapped under 'k2'" in out
    assert "objects: 1 re-wrapped under 'k2'" in out

    async def read_back() -> tuple[bytes, bytes]:
        obj = EncryptedObjectStore(
            LocalObjectStore(data_dir / "objects"), KeyRing.from_specs([K2]), segment_size=SEG
        )
        await obj.open()
        up = EncryptedChunkStore(data_dir / "uploads", KeyRing.from_specs([K2]), segment_size=SEG)
        await up.open()
        return await read_all(obj, "a/b.bin"), b"".join(
            [b async for b in up.read("inprogress", 0, 100)]
        )

    assert asyncio.run(read_back()) == (payload, payload[:100])


# --- client-side encryption on S3 ----------------------------------------------------------


@pytest.mark.s3
async def test_client_side_encryption_on_s3_and_rotation(s3_server: Any) -> None:
    from minio import Minio

    from storage_backends.s3 import S3ObjectStore, S3Settings

    bucket = f"enc-{secrets.token_hex(6)}"  # its own bucket: rotation walks every key
    settings = S3Settings(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=bucket,
        region=s3_server.region,
        secure=False,
        part_size=5 * 1024 * 1024,
        parallel_parts=2,
    )

    def store(*specs: str) -> EncryptedObjectStore:
        return EncryptedObjectStore(
            S3ObjectStore(settings), KeyRing.from_specs(specs), segment_size=SEG
        )

    first = store(K1)
    await first.open()
    contents = {f"o/{i}.bin": plaintext(i * 3000 + 5, seed=i) for i in range(3)}
    for key, data in contents.items():
        await first.put_stream(
            key, blocks(data), size=len(data), content_type="x/y", metadata={"k": key}
        )
    raw_client = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
    )
    for key in contents:
        resp = raw_client.get_object(bucket, key)
        try:
            raw = resp.read()
        finally:
            resp.close()
            resp.release_conn()
        assert MARKER not in raw  # the bucket holds ciphertext only
    await first.close()

    rotating = store(K2, K1)
    await rotating.open()
    report = await rotating.rotate()
    assert report.rewrapped == 3
    await rotating.close()
    after = store(K2)
    await after.open()
    for key, data in contents.items():
        assert await read_all(after, key) == data
        assert await read_all(after, key, SEG - 3, 10) == data[SEG - 3 : SEG + 7]
        info = await after.stat(key)
        assert info is not None and info.content_type == "x/y" and info.metadata == {"k": key}
    await after.close()
