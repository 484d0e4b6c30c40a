"""Envelope encryption at rest: AES-256-GCM in fixed-size segments, one data key per file.

An encrypted file (an upload in progress or a finished object) is a run of segments, each
``nonce (12) || ciphertext || tag (16)``; segment ``i`` holds plaintext bytes
``[i * S, (i + 1) * S)``. The associated data of a segment binds its index (segments cannot be
reordered) and, in finished objects, whether it is the last one (an object cut at a segment
boundary is detected; an empty object still has one, empty, final segment). A Range read
decrypts only the segments it touches, so memory stays bounded by one segment.

Each file gets a random 256-bit data key, wrapped with AES-256-GCM by a master key named by an
id, and bound to the file's name so envelopes cannot be swapped between files. The envelope
(key id, wrapped key, segment size, size) lives beside the data: in the object's metadata, or
in a sidecar for an upload in progress. Rotating the master key rewrites envelopes, never data.

:class:`EncryptedObjectStore` wraps any :class:`ObjectStore` (local disk, or S3 as client-side
encryption); :class:`EncryptedChunkStore` is the local chunk store with encryption (appending
to an upload re-seals its last, partial segment; when the upload has all its bytes, its last
segment is re-sealed as final, and the sealed file is then already a finished object).

Cost: AES-GCM runs at about 10 GB/s per core, so what costs is moving bytes and handing work
between threads. Segments are sealed and opened from memoryview slices of the blocks that
carry them (only a segment split between two blocks is assembled), into pooled buffers. An
upload's blocks are sealed and written as they arrive, on the event loop (see _seal_into:
cryptography releases the GIL while it works, and the hand-offs that a worker thread costs
outweigh the cipher); on local disk, reads are preads of whole sealed segments, about 1 MiB
per trip to a worker thread; and a commit from the encrypted chunk store into the encrypted
local object store is a rename of the sealed file (:meth:`EncryptedChunkStore.finish`,
:meth:`EncryptedChunkStore.copy_into`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import struct
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .base import (
    ChunkSource,
    Lifecycle,
    ObjectInfo,
    ObjectStore,
    StorageError,
    StoreCapabilities,
    UploadDataMissing,
)
from .local import _INLINE_WRITE, LocalChunkStore, LocalObjectStore, _copy_range, _write_atomic

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "EncryptedChunkStore",
    "EncryptedObjectStore",
    "EncryptionKeyError",
    "Envelope",
    "IntegrityError",
    "KeyRing",
    "MetadataRewriter",
    "RotationReport",
    "SegmentCipher",
    "parse_key_spec",
]

DEFAULT_SEGMENT_SIZE = 256 * 1024
NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_META_PREFIX = "tusenc-"
_CHECK_PLAINTEXT = b"tusserver master key check v1"
_CHECK_NAME = ".tusserver-encryption.json"
#: Plaintext read or sealed per step (one trip to a worker thread): whole segments, about
#: this much (at least one).
_BATCH = 1024 * 1024
#: Buffers per pwritev call (Linux IOV_MAX is 1024).
_IOV_MAX = 512

_Bytes = bytes | bytearray | memoryview
_T = TypeVar("_T")
#: cryptography >= 44 seals into a caller's buffer; older versions return a new bytes.
_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")


class EncryptionKeyError(StorageError):
    """A master key is missing, malformed or does not open what it should: fix the config."""


class IntegrityError(StorageError):
    """Stored ciphertext failed authentication: it was tampered with or damaged."""


# --- master keys ---------------------------------------------------------------------------


def parse_key_spec(spec: str) -> tuple[str, bytes]:
    """``"id:base64"`` -> (id, 32-byte key), with errors that say what is wrong."""
    kid, sep, b64 = spec.strip().partition(":")
    if not sep or not _KEY_ID.fullmatch(kid):
        raise EncryptionKeyError(
            "a master key must be written 'id:base64-of-32-bytes' with an id of letters, "
            "digits, '.', '_' or '-'"
        )
    try:
        key = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"master key {kid!r} is not valid base64") from None
    if len(key) != 32:
        raise EncryptionKeyError(f"master key {kid!r} must be 32 bytes, not {len(key)}")
    return kid, key


def generate_key_spec(kid: str) -> str:
    if not _KEY_ID.fullmatch(kid):
        raise EncryptionKeyError(f"invalid key id {kid!r}")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What is needed, with a master key, to decrypt one file."""

    key_id: str
    wrapped_key: bytes
    segment_size: int
    #: Plaintext size of a finished object (None for an upload in progress).
    size: int | None = None

    def to_metadata(self) -> dict[str, str]:
        meta = {
            f"{_META_PREFIX}kid": self.key_id,
            f"{_META_PREFIX}key": base64.b64encode(self.wrapped_key).decode(),
            f"{_META_PREFIX}seg": str(self.segment_size),
        }
        if self.size is not None:
            meta[f"{_META_PREFIX}size"] = str(self.size)
        return meta

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> Envelope | None:
        """The envelope in an object's metadata; None for an object stored in plaintext."""
        lowered = {k.lower(): v for k, v in meta.items()}
        if f"{_META_PREFIX}key" not in lowered:
            return None
        try:
            size = lowered.get(f"{_META_PREFIX}size")
            env = cls(
                key_id=lowered[f"{_META_PREFIX}kid"],
                wrapped_key=base64.b64decode(lowered[f"{_META_PREFIX}key"], validate=True),
                segment_size=int(lowered[f"{_META_PREFIX}seg"]),
                size=int(size) if size is not None else None,
            )
        except (KeyError, ValueError, binascii.Error):
            raise IntegrityError("the object's encryption envelope is malformed") from None
        if env.segment_size < 1 or (env.size is not None and env.size < 0):
            raise IntegrityError("the object's encryption envelope is malformed")
        return env


def _strip_envelope(meta: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if not k.lower().startswith(_META_PREFIX)}


class KeyRing:
    """Master keys by id; new data keys are wrapped by the active one."""

    def __init__(self, keys: Mapping[str, bytes], active: str | None = None) -> None:
        if not keys:
            raise EncryptionKeyError("encryption is on but no master key is configured")
        self._keys = dict(keys)
        self.active_id = active or next(iter(self._keys))
        if self.active_id not in self._keys:
            raise EncryptionKeyError(f"the active master key {self.active_id!r} is not configured")

    @classmethod
    def from_specs(
        cls, specs: Iterable[str], *, key_file: Path | None = None, active: str = ""
    ) -> KeyRing:
        """Keys from ``id:base64`` strings and/or a key file (one per line, ``#`` comments)."""
        lines = [s for s in specs if s.strip()]
        if key_file is not None:
            try:
                text = key_file.read_text()
            except OSError as exc:
                raise EncryptionKeyError(f"cannot read the key file {key_file}: {exc}") from None
            lines += [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        keys: dict[str, bytes] = {}
        for line in lines:
            kid, key = parse_key_spec(line)
            if kid in keys:
                raise EncryptionKeyError(f"master key {kid!r} is configured twice")
            keys[kid] = key
        return cls(keys, active or None)

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def _master(self, kid: str) -> AESGCM:
        try:
            return AESGCM(self._keys[kid])
        except KeyError:
            raise EncryptionKeyError(
                f"data is encrypted under master key {kid!r}, which is not configured"
            ) from None

    @staticmethod
    def _aad(kid: str, context: str) -> bytes:
        return f"tusserver-dek\x00{kid}\x00{context}".encode()

    def wrap(self, data_key: bytes, context: str, kid: str | None = None) -> bytes:
        kid = kid or self.active_id
        nonce = secrets.token_bytes(NONCE)
        return nonce + self._master(kid).encrypt(nonce, data_key, self._aad(kid, context))

    def unwrap(self, env: Envelope, context: str) -> bytes:
        master = self._master(env.key_id)
        w = env.wrapped_key
        try:
            key = master.decrypt(w[:NONCE], w[NONCE:], self._aad(env.key_id, context))
        except InvalidTag:
            raise EncryptionKeyError(
                f"cannot unwrap the data key of {context!r} with master key {env.key_id!r}: "
                "wrong master key, or a damaged envelope"
            ) from None
        if len(key) != 32:
            raise IntegrityError(f"the data key of {context!r} is malformed")
        return key

    def new_envelope(
        self, context: str, segment_size: int, size: int | None = None
    ) -> tuple[bytes, Envelope]:
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = self.wrap(data_key, context)
        return data_key, Envelope(self.active_id, wrapped, segment_size, size)

    def rewrap(self, env: Envelope, context: str) -> Envelope:
        """The same data key under the active master key."""
        data_key = self.unwrap(env, context)
        return Envelope(self.active_id, self.wrap(data_key, context), env.segment_size, env.size)

    # A store remembers which master keys sealed its data, so a wrong or missing key is
    # reported when the server starts rather than on the first download.
    def check_record(self, kid: str) -> str:
        nonce = secrets.token_bytes(NONCE)
        sealed = nonce + self._master(kid).encrypt(nonce, _CHECK_PLAINTEXT, kid.encode())
        return base64.b64encode(sealed).decode()

    def verify_records(self, records: Mapping[str, str], where: str) -> None:
        for kid, b64 in records.items():
            if kid not in self._keys:
                raise EncryptionKeyError(
                    f"{where} holds data encrypted under master key {kid!r}, which is not "
                    f"configured (configured: {', '.join(self._keys)})"
                )
            try:
                sealed = base64.b64decode(b64, validate=True)
                self._master(kid).decrypt(sealed[:NONCE], sealed[NONCE:], kid.encode())
            except (InvalidTag, binascii.Error, ValueError):
                raise EncryptionKeyError(
                    f"master key {kid!r} is not the key that encrypted {where}"
                ) from None


# --- segments ------------------------------------------------------------------------------


class SegmentCipher:
    """Seals and opens the segments of one file."""

    __slots__ = ("_aead", "segment_size")

    def __init__(self, data_key: bytes, segment_size: int) -> None:
        self._aead = AESGCM(data_key)
        self.segment_size = segment_size

    @staticmethod
    def _aad(index: int, final: bool) -> bytes:
        return b"tusenc1" + struct.pack(">QB", index, final)

    def seal_parts(self, index: int, plain: _Bytes, *, final: bool = False) -> tuple[bytes, bytes]:
        """(nonce, ciphertext || tag): written one after the other, they are the segment."""
        nonce = secrets.token_bytes(NONCE)
        return nonce, self._aead.encrypt(nonce, plain, self._aad(index, final))

    def seal(self, index: int, plain: _Bytes, *, final: bool = False) -> bytes:
        nonce, body = self.seal_parts(index, plain, final=final)
        return nonce + body

    def seal_into(
        self,
        index: int,
        plain: _Bytes,
        out: memoryview,
        *,
        final: bool = False,
        nonce: bytes | None = None,
    ) -> int:
        """Seal into ``out[:len(plain) + OVERHEAD]`` (no allocation); returns that length.

        ``nonce``: 12 fresh random bytes, when the caller drew several at once.
        """
        n = len(plain) + OVERHEAD
        if nonce is None:
            nonce = secrets.token_bytes(NONCE)
        elif len(nonce) != NONCE:
            raise ValueError("a nonce is 12 bytes")
        out[:NONCE] = nonce
        if _ENCRYPT_INTO:
            self._aead.encrypt_into(nonce, plain, self._aad(index, final), out[NONCE:n])
        else:  # pragma: no cover - older cryptography
            out[NONCE:n] = self._aead.encrypt(nonce, plain, self._aad(index, final))
        return n

    def open(self, index: int, sealed: _Bytes, *, final: bool = False) -> bytes:
        """The plaintext of a sealed segment; ``sealed`` may be a view into a larger buffer."""
        if len(sealed) < OVERHEAD:
            raise IntegrityError(f"segment {index} is truncated")
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE], view[NONCE:], self._aad(index, final))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None

    def open_into(self, index: int, sealed: _Bytes, out: bytearray, *, final: bool = False) -> int:
        """Open a sealed segment into ``out`` (at least its plaintext's size); returns the
        plaintext's size. ``out`` is left undefined if the segment fails authentication."""
        n = len(sealed) - OVERHEAD
        if n < 0:
            raise IntegrityError(f"segment {index} is truncated")
        view = memoryview(sealed)
        try:
            if _ENCRYPT_INTO:
                self._aead.decrypt_into(
                    view[:NONCE], view[NONCE:], self._aad(index, final), memoryview(out)[:n]
                )
            else:  # pragma: no cover - older cryptography
                out[:n] = self._aead.decrypt(view[:NONCE], view[NONCE:], self._aad(index, final))
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
        return n

    def open_last(self, index: int, sealed: _Bytes) -> tuple[bytes, bool]:
        """(plaintext, whether it is sealed as final) of the last segment of an upload, which
        is final once the upload has all its bytes (:meth:`EncryptedChunkStore.finish`) and
        not before. Either way it must authenticate, with its own index."""
        try:
            return self.open(index, sealed), False
        except IntegrityError:
            if len(sealed) < OVERHEAD:
                raise
        return self.open(index, sealed, final=True), True


def segment_count(size: int, segment_size: int, *, finished: bool) -> int:
    """Segments holding ``size`` plaintext bytes; a finished object has at least one."""
    n = -(-size // segment_size)
    return max(n, 1) if finished else n


def sealed_size(size: int, segment_size: int, *, finished: bool) -> int:
    return size + OVERHEAD * segment_count(size, segment_size, finished=finished)


# --- object store --------------------------------------------------------------------------


@runtime_checkable
class MetadataRewriter(Protocol):
    """Optional capability of an object store, used by key rotation."""

    async def replace_metadata(self, key: str, metadata: Mapping[str, str]) -> None:
        """Replace the object's metadata without touching its bytes."""

    def list_keys(self) -> AsyncIterator[str]:
        """Every object key in the store."""


@dataclass(slots=True)
class RotationReport:
    rewrapped: int = 0
    already_current: int = 0
    plaintext: int = 0


class EncryptedObjectStore:
    """Any object store, with every object sealed before it leaves the process.

    Objects written before encryption was turned on (no envelope) are still read as they are.
    Presigned URLs are never handed out: the client could not decrypt what it fetched.
    """

    def __init__(
        self,
        inner: ObjectStore,
        keys: KeyRing,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        check_key: str = _CHECK_NAME,
    ) -> None:
        self._inner = inner
        self._keys = keys
        self._segment = segment_size
        self._check_key = check_key
        self.kind = inner.kind

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @property
    def segment_size(self) -> int:
        """Plaintext bytes per segment of the objects this store writes."""
        return self._segment

    async def open(self) -> None:
        await self._inner.open()
        records = await self._read_check()
        self._keys.verify_records(records, f"the {self.kind} object store")
        if self._keys.active_id not in records:
            records[self._keys.active_id] = self._keys.check_record(self._keys.active_id)
            await self._write_check(records)

    async def close(self) -> None:
        if isinstance(self._inner, Lifecycle):
            await self._inner.close()

    async def _read_check(self) -> dict[str, str]:
        if await self._inner.stat(self._check_key) is None:
            return {}
        raw = b"".join([b async for b in self._inner.get(self._check_key)])
        try:
            doc = json.loads(raw)
        except ValueError:
            raise EncryptionKeyError("the store's key check record is damaged") from None
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    async def _write_check(self, records: Mapping[str, str]) -> None:
        data = json.dumps(dict(records)).encode()

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._inner.put_stream(
            self._check_key,
            one(),
            size=len(data),
            content_type="application/json",
            metadata={},
        )

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        size = (await asyncio.to_thread(os.stat, path)).st_size
        await self.put_stream(
            key, _file_blocks(path), size=size, content_type=content_type, metadata=metadata
        )
        if consume:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, path)

    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        data_key, env = self._keys.new_envelope(key, self._segment, size)
        cipher = SegmentCipher(data_key, self._segment)
        await self._inner.put_stream(
            key,
            _seal_stream(cipher, source, size),
            size=sealed_size(size, self._segment, finished=True),
            content_type=content_type,
            metadata={**_strip_envelope(metadata), **env.to_metadata()},
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        info = await self._inner.stat(key)
        if info is None:
            return None
        env = Envelope.from_metadata(info.metadata)
        if env is None:
            return info
        return ObjectInfo(
            key=key,
            size=env.size if env.size is not None else 0,
            content_type=info.content_type,
            metadata=_strip_envelope(info.metadata),
        )

    async def get(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        inner = self._inner
        blocks = (
            self._get_local(inner, key, start, length)
            if isinstance(inner, LocalObjectStore)
            else self._get_generic(key, start, length)
        )
        async with _closing(blocks):
            async for block in blocks:
                yield block

    def _opener(self, key: str, env: Envelope, stored_size: int) -> tuple[SegmentCipher, int]:
        """(cipher, plaintext size) of an object, once its envelope is checked."""
        if env.size is None:
            raise IntegrityError(f"object {key} has no recorded size")
        if stored_size != sealed_size(env.size, env.segment_size, finished=True):
            raise IntegrityError(f"object {key} has the wrong length for its envelope")
        return SegmentCipher(self._keys.unwrap(env, key), env.segment_size), env.size

    async def _get_local(
        self, inner: LocalObjectStore, key: str, start: int, length: int | None
    ) -> AsyncIterator[bytes]:
        """The object's file itself, read in whole sealed segments (see _open_file).

        The open, fstat and sidecar read (the envelope) are inline, as storage_backends.local
        does metadata calls: a Range request costs one trip to a worker thread, for the read.
        """
        path = inner.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StorageError(f"object {key} is missing") from None
        try:
            stored = os.fstat(fd).st_size
            env = Envelope.from_metadata(inner.read_sidecar(key)[1])
            if env is not None:
                cipher, size = self._opener(key, env, stored)
                end = size if length is None else min(size, start + length)
                final = segment_count(size, cipher.segment_size, finished=True) - 1
                async with _closing(_open_file(fd, cipher, start, end, stored, final)) as blocks:
                    async for block in blocks:
                        yield block
                return
        finally:
            os.close(fd)
        async with _closing(inner.get(key, start, length)) as plain:  # from before encryption
            async for block in plain:
                yield block

    async def _get_generic(self, key: str, start: int, length: int | None) -> AsyncIterator[bytes]:
        info = await self._inner.stat(key)
        if info is None:
            raise StorageError(f"object {key} is missing")
        env = Envelope.from_metadata(info.metadata)
        if env is None:
            async with _closing(self._inner.get(key, start, length)) as plain:
                async for block in plain:
                    yield block
            return
        cipher, size = self._opener(key, env, info.size)

        def fetch(at: int, n: int) -> AsyncIterator[bytes]:
            return self._inner.get(key, at, n)

        async with _closing(_open_range(cipher, size, start, length, fetch)) as blocks:
            async for block in blocks:
                yield block

    async def delete(self, key: str) -> None:
        await self._inner.delete(key)

    async def presign_get(
        self, key: str, *, expires: dt.timedelta, filename: str | None
    ) -> str | None:
        return None

    async def rotate(self) -> RotationReport:
        """Re-wrap every object's data key under the active master key (idempotent)."""
        inner = self._inner
        if not isinstance(inner, MetadataRewriter):
            raise StorageError(f"the {self.kind} object store cannot rewrite metadata")
        report = RotationReport()
        async for key in inner.list_keys():
            if key == self._check_key:
                continue
            info = await inner.stat(key)
            env = Envelope.from_metadata(info.metadata) if info is not None else None
            if info is None or env is None:
                report.plaintext += info is not None
                continue
            if env.key_id == self._keys.active_id:
                report.already_current += 1
                continue
            new = self._keys.rewrap(env, key)
            await inner.replace_metadata(
                key, {**_strip_envelope(info.metadata), **new.to_metadata()}
            )
            report.rewrapped += 1
        await self._write_check(
            {self._keys.active_id: self._keys.check_record(self._keys.active_id)}
        )
        return report


async def _file_blocks(path: Path, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        pos = 0
        while data := await asyncio.to_thread(os.pread, fd, block, pos):
            pos += len(data)
            yield data
    finally:
        await asyncio.to_thread(os.close, fd)


class _Cutter:
    """Cuts plaintext arriving in blocks of any size into segments, copying almost nothing.

    Whole segments inside a block are memoryview slices of it. The partial tail of a block
    is kept as a view too, and a segment split between blocks is assembled once, by one
    join, when it is complete. The blocks must not change once handed over (they are
    ``bytes``); a segment handed out is never touched again, so it may be sealed in another
    thread while the next block is cut.
    """

    __slots__ = ("_have", "_pieces", "_seg")

    def __init__(self, segment_size: int, prefix: bytes = b"") -> None:
        self._seg = segment_size
        self._pieces: list[_Bytes] = [prefix] if prefix else []
        self._have = len(prefix)

    def cut(self, block: _Bytes) -> list[_Bytes]:
        """The segments this block completes (possibly none)."""
        seg = self._seg
        view = memoryview(block)
        parts: list[_Bytes] = []
        if self._have:
            take = min(seg - self._have, len(view))
            if take:
                self._pieces.append(view[:take])
                self._have += take
            if self._have < seg:
                return parts
            parts.append(b"".join(self._pieces))
            self._pieces, self._have = [], 0
            view = view[take:]
        whole = len(view) - len(view) % seg
        parts.extend(view[at : at + seg] for at in range(0, whole, seg))
        if whole < len(view):
            self._pieces, self._have = [view[whole:]], len(view) - whole
        return parts

    def rest(self) -> bytes | None:
        """The partial segment after the last whole one, if any (and forget it)."""
        if not self._have:
            return None
        out = b"".join(self._pieces)
        self._pieces, self._have = [], 0
        return out


async def _seal_stream(
    cipher: SegmentCipher, source: AsyncIterable[bytes], size: int
) -> AsyncIterator[bytes]:
    """Plaintext blocks of any size -> sealed segments; the last one is marked final.

    Segments are sealed from views of the source's blocks (see _Cutter) and handed out about
    ``_BATCH`` bytes at a time, joined once.
    """
    seg = cipher.segment_size
    final = segment_count(size, seg, finished=True) - 1
    batch = max(1, _BATCH // seg)
    parts: list[_Bytes] = []
    cutter = _Cutter(seg)
    index = 0
    seen = 0

    def sealed(parts: list[_Bytes]) -> bytes:
        nonlocal index
        out: list[bytes] = []
        for plain in parts:
            out += cipher.seal_parts(index, plain, final=index == final)
            index += 1
        return b"".join(out)

    async for block in source:
        seen += len(block)
        if seen > size:
            raise StorageError(f"expected {size} bytes, got more")
        parts += cutter.cut(block)
        if len(parts) >= batch:
            yield sealed(parts)
            parts = []
    if seen != size:
        raise StorageError(f"expected {size} bytes, got {seen}")
    rest = cutter.rest()
    if rest is not None or index + len(parts) == final:  # a partial last one, or the empty one
        parts.append(rest or b"")
    if parts:
        yield sealed(parts)


async def _open_range(
    cipher: SegmentCipher,
    size: int,
    start: int,
    length: int | None,
    fetch: Callable[[int, int], AsyncIterator[bytes]],
) -> AsyncIterator[bytes]:
    """Plaintext ``[start, start+length)`` of a finished object, touching only its segments.

    For stores read as a stream (S3): segments are opened from views of the fetched blocks;
    only a segment split between two blocks is assembled in a buffer.
    """
    end = size if length is None else min(size, start + length)
    if start >= end:
        return
    seg = cipher.segment_size
    unit = seg + OVERHEAD
    last_of_file = segment_count(size, seg, finished=True) - 1
    first, last = start // seg, (end - 1) // seg

    def sealed_len(i: int) -> int:
        return unit if i < last_of_file else size - i * seg + OVERHEAD

    def cut(plain: bytes, i: int) -> bytes:
        lo = start - i * seg if i == first else 0
        hi = end - i * seg if i == last else len(plain)
        return plain if lo == 0 and hi == len(plain) else plain[lo:hi]

    want = (last - first) * unit + sealed_len(last)
    carry = bytearray()
    index = first
    fetched = fetch(first * unit, want)
    async with _closing(fetched):
        async for block in fetched:
            view = memoryview(block)
            if carry:
                take = sealed_len(index) - len(carry)
                carry += view[:take]
                view = view[take:]
                if len(carry) < sealed_len(index):
                    continue
                yield cut(cipher.open(index, carry, final=index == last_of_file), index)
                carry = bytearray()
                index += 1
            while index <= last and len(view) >= (n := sealed_len(index)):
                plain = cipher.open(index, view[:n], final=index == last_of_file)
                view = view[n:]
                yield cut(plain, index)
                index += 1
            if index <= last:
                carry += view
    if index <= last:
        raise IntegrityError("the object is shorter than its envelope says")


@contextlib.asynccontextmanager
async def _closing(blocks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Close an inner generator with the outer one: its files now, not when collected."""
    try:
        yield blocks
    finally:
        aclose = getattr(blocks, "aclose", None)
        if aclose is not None:
            await aclose()


class _BufferPool:
    """Spare buffers for sealed segments being read or written, by size, kept up to a total
    size (a fresh buffer of a megabyte is an mmap, zeroed and faulted in at every use).

    A buffer is in one reader's or writer's hands at a time, from take to give, including
    while a worker thread reads or writes with it; what a reader hands out is never a view
    of one.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept = 0
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()  # event loops of other threads may read too

    def take(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                self._kept -= size
                return free.pop()
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        size = len(buf)
        with self._lock:
            if self._kept + size <= self._limit:
                self._free.setdefault(size, []).append(buf)
                self._kept += size


#: At most this much stays allocated between reads and writes: the buffers of about eight
#: uploads (two each) and eight downloads (one each) at once.
_POOL = _BufferPool(24 * 1024 * 1024)


async def _in_worker(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in the default executor (no context copy, unlike asyncio.to_thread).

    If the caller is cancelled, it still waits for ``fn`` to finish before the cancellation
    propagates: the caller then closes the file descriptors ``fn`` is using.
    """
    job = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(job)
    except BaseException:
        while not job.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait([job])
        raise


def _read_into(fd: int, view: memoryview, at: int) -> int:
    """Fill ``view`` with the file's bytes from ``at``; fewer only where the file ends."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], at + got)
        if n <= 0:
            break
        got += n
    return got


async def _open_file(
    fd: int,
    cipher: SegmentCipher,
    start: int,
    end: int,
    stored: int,
    final: int,
    *,
    upload: bool = False,
) -> AsyncIterator[bytes]:
    """Plaintext ``[start, end)`` of the sealed file open at ``fd`` (``stored`` bytes long);
    segment ``final`` is the last of a finished object, or with ``upload`` the last of an
    upload, which may or may not be sealed as final (see SegmentCipher.open_last).

    A worker thread reads whole sealed segments, about ``_BATCH`` bytes per trip, aligned on
    the file's layout, into a buffer taken from a small pool (a fresh megabyte per Range
    request is an mmap, zeroed and faulted in: most of a Range request's cost). Each segment
    is opened from a view of that buffer; a whole one is handed out as its plaintext, and one
    cut by the range is opened into a pooled scratch buffer, from which only the bytes asked
    for are copied out. Segments are opened here rather than in the worker: plaintext
    allocated in worker threads comes from glibc's per-thread arenas, which give memory back
    and fault it in again all the time (measured: twice the CPU of a download), and
    cryptography releases the GIL while it opens anyway.
    """
    if start >= end:
        return
    seg = cipher.segment_size
    unit = seg + OVERHEAD
    first, last = start // seg, (end - 1) // seg
    batch = max(1, _BATCH // seg)
    buf = _POOL.take(batch * unit)
    scratch: bytearray | None = None
    try:
        whole = memoryview(buf)
        index = first
        while index <= last:
            count = min(batch, last - index + 1)
            at = index * unit
            want = max(0, min(count * unit, stored - at))
            if await _in_worker(_read_into, fd, whole[:want], at) < want:
                raise StorageError("the file is shorter than expected")
            for i in range(count):
                sealed = whole[i * unit : min((i + 1) * unit, want)]
                lo = start - index * seg if index == first else 0
                hi = end - index * seg if index == last else seg
                if len(sealed) - OVERHEAD < hi:
                    raise StorageError("the file is shorter than expected")
                cut = lo > 0 or hi < len(sealed) - OVERHEAD
                if upload and index == final:
                    plain = cipher.open_last(index, sealed)[0]
                    if cut:
                        plain = plain[lo:hi]
                elif not cut:
                    plain = cipher.open(index, sealed, final=index == final)
                else:  # cut by the range: only the bytes asked for are copied out
                    if scratch is None:
                        scratch = _POOL.take(seg)
                    cipher.open_into(index, sealed, scratch, final=index == final)
                    plain = bytes(memoryview(scratch)[lo:hi])
                index += 1
                yield plain
    finally:
        _POOL.give(buf)
        if scratch is not None:
            _POOL.give(scratch)


# --- chunk store ---------------------------------------------------------------------------


class EncryptedChunkStore:
    """Uploads in progress on local disk, sealed in segments; the envelope in a sidecar.

    Appending at an offset inside a segment re-seals that segment with the new bytes (a fresh
    nonce each time). If the process dies while re-sealing, that last segment fails
    authentication and :meth:`get_offset` reports the offset before it: the client re-sends
    those bytes, and nothing unauthenticated is ever counted or read. When the upload has all
    its bytes, :meth:`finish` re-seals its last segment as final (the same way, with the same
    guarantee), which makes the sealed file a finished object: the commit renames it.
    It deliberately offers no ``local_path``: the plaintext exists only in memory.
    """

    #: A Finisher that can still read an upload back before it is finished (S3's chunk store
    #: cannot): the IETF handler relies on it to check Repr-Digest on a resumed upload.
    reads_unfinished: Literal[True] = True

    def __init__(
        self,
        root: Path,
        keys: KeyRing,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_size: int | None = None,
        fsync: bool | None = None,
    ) -> None:
        self._files = LocalChunkStore(root, max_size=max_size)
        self._keys = keys
        self._segment = segment_size
        #: Whether :meth:`finish` syncs its re-seal to disk; None: as the writes were asked
        #: to (the service passes its fsync setting to each), and yes before any write.
        self._fsync = fsync
        self._writes_fsync: bool | None = None
        self.capabilities: StoreCapabilities = self._files.capabilities

    @property
    def root(self) -> Path:
        return self._files.root

    async def open(self) -> None:
        await self._files.open()
        check = self.root / _CHECK_NAME
        try:
            records = json.loads(await asyncio.to_thread(check.read_bytes))
        except FileNotFoundError:
            records = {}
        except ValueError:
            raise EncryptionKeyError(f"{check} is damaged") from None
        self._keys.verify_records(records, f"the chunk store {self.root}")
        if self._keys.active_id not in records:
            records[self._keys.active_id] = self._keys.check_record(self._keys.active_id)
            await asyncio.to_thread(_write_atomic, check, json.dumps(records).encode())

    async def close(self) -> None:
        await self._files.close()

    def _key_path(self, upload_id: str) -> Path:
        return self._files.path(upload_id).with_name(upload_id + ".key")

    def _envelope(self, upload_id: str) -> Envelope:
        # Inline: the sidecar is a few hundred bytes (see storage_backends.local).
        try:
            raw = _read_small(self._key_path(upload_id))
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None
        return _envelope_from_json(raw, upload_id)

    def _cipher(self, upload_id: str) -> SegmentCipher:
        env = self._envelope(upload_id)
        return SegmentCipher(self._keys.unwrap(env, upload_id), env.segment_size)

    def _open_fd(self, upload_id: str, flags: int) -> int:
        try:
            return os.open(self._files.path(upload_id), flags)  # inline: a metadata call
        except FileNotFoundError:
            raise UploadDataMissing(upload_id) from None

    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        _, env = self._keys.new_envelope(upload_id, self._segment)
        # The sidecar first: data never exists without the key that opens it. Inline: a
        # small write into the page cache, without fsync (see storage_backends.local).
        _write_atomic(self._key_path(upload_id), _envelope_to_json(env))
        await self._files.create(upload_id, length=length)

    async def get_offset(self, upload_id: str) -> int:
        cipher = self._cipher(upload_id)
        fd = self._open_fd(upload_id, os.O_RDONLY)
        try:
            # Only the last segment is read (and authenticated): inline when it is small.
            unit = cipher.segment_size + OVERHEAD
            stored = os.fstat(fd).st_size
            if stored - max(stored - 1, 0) // unit * unit <= _INLINE_WRITE:
                return _verified_length(fd, cipher)
            return await _in_worker(_verified_length, fd, cipher)
        finally:
            os.close(fd)

    async def write(
        self,
        upload_id: str,
        offset: int,
        source: ChunkSource,
        *,
        verify: Callable[[], None] | None = None,
        fsync: bool = False,
    ) -> int:
        cipher = self._cipher(upload_id)
        path = self._files.path(upload_id)
        seg = cipher.segment_size
        unit = seg + OVERHEAD
        index, partial = divmod(offset, seg)
        self._writes_fsync = fsync
        fd = self._open_fd(upload_id, os.O_RDWR)
        try:
            prefix = b""
            if partial:
                # The partial last segment is re-sealed with the new bytes after it (not as
                # final, even if it was: an upload is final only once it has all its bytes).
                n = partial + OVERHEAD
                if partial <= _INLINE_WRITE:
                    prefix, _ = _read_last(fd, cipher, index, n)
                else:
                    prefix, _ = await _in_worker(_read_last, fd, cipher, index, n)
                if len(prefix) != partial:
                    raise IntegrityError(f"upload {upload_id} does not hold {offset} bytes")
            if verify is None:
                return await _seal_into(fd, index * unit, cipher, index, prefix, source, fsync)
            stage = path.with_name(upload_id + ".stage")
            sfd = os.open(stage, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                written = await _seal_into(sfd, 0, cipher, index, prefix, source, False)
                verify()
                staged = os.fstat(sfd).st_size
                await _in_worker(_splice, sfd, fd, index * unit, staged, fsync)
                return written
            finally:
                os.close(sfd)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stage)
        finally:
            os.close(fd)

    async def finish(self, upload_id: str) -> None:
        """The upload has all its bytes: re-seal its last segment as final (idempotent).

        Its sealed file is then what the object's must be (the same data key, each segment's
        index in the associated data, the last one marked final), so :meth:`copy_into` commits
        it by a rename. Nothing is appended to an upload after this (the service accepts no
        more bytes once the length is reached); reads and appends accept a last segment sealed
        either way. An error (a damaged last segment) leaves the upload unfinished.
        """
        cipher = self._cipher(upload_id)
        fsync = self._fsync if self._fsync is not None else self._writes_fsync is not False
        fd = self._open_fd(upload_id, os.O_RDWR)
        try:
            if not fsync and os.fstat(fd).st_size <= _INLINE_WRITE:
                _seal_last_as_final(fd, cipher, upload_id, fsync)  # a small file: inline
            else:
                await _in_worker(_seal_last_as_final, fd, cipher, upload_id, fsync)
        finally:
            os.close(fd)

    async def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        cipher = self._cipher(upload_id)
        fd = self._open_fd(upload_id, os.O_RDONLY)
        try:
            stored = os.fstat(fd).st_size
            unit = cipher.segment_size + OVERHEAD
            whole, rest = divmod(stored, unit)
            held = whole * cipher.segment_size + max(rest - OVERHEAD, 0)
            if start + length > held:
                raise StorageError(f"upload {upload_id} is shorter than expected")
            last = (stored - 1) // unit if stored else -1
            blocks = _open_file(fd, cipher, start, start + length, stored, last, upload=True)
            async with _closing(blocks):
                async for block in blocks:
                    yield block
        finally:
            os.close(fd)

    async def copy_into(
        self,
        upload_id: str,
        objects: object,
        key: str,
        *,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        """Commit into an encrypted local object store without re-encrypting the file.

        An upload's segments are already what the object's segments must be (same data key,
        same index in the associated data), except the last one, which an object marks final.
        The data key is wrapped again, bound to the object key, and:

        - a finished upload (:meth:`finish`: its last segment is final) is the object: its
          file is renamed into place after the metadata with the envelope, as
          LocalObjectStore.put_file does for a plaintext upload (a copy where the rename
          crosses filesystems). A crash leaves either the upload or the object, whole;
        - otherwise (an empty upload, or one finished before the store re-sealed at finish)
          the sealed file is copied in the kernel (copy_file_range) into a temporary file
          beside the destination, its last segment re-sealed there as final (the last full
          one when the size is a multiple of the segment size; one empty segment for an
          empty file), then the metadata and the rename; the upload's file is left as it is.

        The pipeline deletes what is left of the upload once the commit is recorded.
        False (the caller then streams the bytes) unless ``objects`` is an
        EncryptedObjectStore on local disk writing segments of this upload's size.
        """
        if not isinstance(objects, EncryptedObjectStore):
            return False
        inner = objects.inner
        if not isinstance(inner, LocalObjectStore):
            return False
        env = self._envelope(upload_id)
        if env.segment_size != objects.segment_size:
            return False
        data_key = self._keys.unwrap(env, upload_id)
        cipher = SegmentCipher(data_key, env.segment_size)
        src = self._open_fd(upload_id, os.O_RDONLY)
        try:
            if os.fstat(src).st_size <= _INLINE_WRITE:  # a small file: checked inline
                size, final = _whole_upload(src, cipher, upload_id)
            else:
                size, final = await _in_worker(_whole_upload, src, cipher, upload_id)
            sealed = Envelope(
                objects.keys.active_id,
                objects.keys.wrap(data_key, key),
                env.segment_size,
                size,
            )
            meta = {**_strip_envelope(metadata), **sealed.to_metadata()}
            if final and size:
                await inner.put_file(
                    key,
                    self._files.path(upload_id),
                    content_type=content_type,
                    metadata=meta,
                    consume=True,
                )
                return True
            last = (await _in_worker(_final_segment, src, cipher, upload_id))[1]
            await inner.put_built(
                key,
                lambda dst: _build_object(src, dst, cipher, size, last),
                content_type=content_type,
                metadata=meta,
            )
        finally:
            os.close(src)
        return True

    async def delete(self, upload_id: str) -> None:
        await self._files.delete(upload_id)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, self._key_path(upload_id))

    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        key_path = self._key_path(upload_id)
        if not await asyncio.to_thread(key_path.exists):
            _, env = self._keys.new_envelope(upload_id, self._segment)
            await asyncio.to_thread(_write_atomic, key_path, _envelope_to_json(env))
        await asyncio.to_thread(_touch, self._files.path(upload_id))
        total = 0
        for part in parts:
            size = await self.get_offset(part)
            total += await self.write(upload_id, total, self.read(part, 0, size), fsync=fsync)
        return total

    async def rotate(self) -> RotationReport:
        """Re-wrap the data key of every upload in progress under the active master key."""
        report = RotationReport()
        for sidecar in sorted(self.root.glob("*.key")):
            upload_id = sidecar.name.removesuffix(".key")
            try:
                env = _envelope_from_json(await asyncio.to_thread(sidecar.read_bytes), upload_id)
            except FileNotFoundError:
                continue  # finished and removed meanwhile
            if env.key_id == self._keys.active_id:
                report.already_current += 1
                continue
            new = self._keys.rewrap(env, upload_id)
            await asyncio.to_thread(_write_atomic, sidecar, _envelope_to_json(new))
            report.rewrapped += 1
        records = {self._keys.active_id: self._keys.check_record(self._keys.active_id)}
        await asyncio.to_thread(
            _write_atomic, self.root / _CHECK_NAME, json.dumps(records).encode()
        )
        return report


def _envelope_to_json(env: Envelope) -> bytes:
    return json.dumps(env.to_metadata()).encode()


def _envelope_from_json(raw: bytes, upload_id: str) -> Envelope:
    try:
        doc: Any = json.loads(raw)
        env = Envelope.from_metadata(doc) if isinstance(doc, dict) else None
    except ValueError:
        env = None
    if env is None:
        raise IntegrityError(f"the key sidecar of upload {upload_id} is damaged")
    return env


def _touch(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _read_last(
    fd: int, cipher: SegmentCipher, index: int, n: int | None = None
) -> tuple[bytes, bool]:
    """(plaintext, sealed as final) of segment ``index`` of an upload, its last one (reading
    ``n`` sealed bytes, or a whole segment's worth); empty if the file ends before it."""
    unit = cipher.segment_size + OVERHEAD
    sealed = os.pread(fd, unit if n is None else n, index * unit)
    if not sealed:
        return b"", False
    return cipher.open_last(index, sealed)


def _upload_state(fd: int, cipher: SegmentCipher) -> tuple[int, bool]:
    """(plaintext bytes held, whether the last segment is sealed as final): whole segments
    plus a last one that authenticates."""
    unit = cipher.segment_size + OVERHEAD
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, False
    last = (size - 1) // unit
    try:
        plain, final = _read_last(fd, cipher, last)
    except IntegrityError:
        # A re-seal interrupted by a crash: count only the segments before it.
        return last * cipher.segment_size, False
    return last * cipher.segment_size + len(plain), final


def _verified_length(fd: int, cipher: SegmentCipher) -> int:
    return _upload_state(fd, cipher)[0]


def _whole_upload(fd: int, cipher: SegmentCipher, upload_id: str) -> tuple[int, bool]:
    """(plaintext size, last segment final) of an upload that must be whole: no damaged
    last segment."""
    size, final = _upload_state(fd, cipher)
    if os.fstat(fd).st_size != sealed_size(size, cipher.segment_size, finished=False):
        raise IntegrityError(f"upload {upload_id} ends with a damaged segment")
    return size, final


def _final_segment(
    fd: int, cipher: SegmentCipher, upload_id: str
) -> tuple[int, tuple[bytes, bytes]]:
    """(plaintext size, the object's last segment) of a finished upload: its last segment
    (the last full one if the size is a multiple of the segment size, an empty one if the
    upload is empty) opened and sealed again as final."""
    seg = cipher.segment_size
    size, _ = _whole_upload(fd, cipher, upload_id)
    last = segment_count(size, seg, finished=True) - 1
    plain = _read_last(fd, cipher, last)[0] if size else b""
    if len(plain) != size - last * seg:
        raise IntegrityError(f"upload {upload_id} does not hold {size} bytes")
    return size, cipher.seal_parts(last, plain, final=True)


def _seal_last_as_final(fd: int, cipher: SegmentCipher, upload_id: str, fsync: bool) -> None:
    """Re-seal the last segment of a whole upload as final, in place (same length, a fresh
    nonce); nothing if it already is, or if the upload is empty (an object's empty final
    segment is written at the commit). A crash during the write leaves a last segment that
    authenticates neither way: it is not counted (_upload_state), and the client re-sends
    it, as after a torn append."""
    size, final = _whole_upload(fd, cipher, upload_id)
    if final or size == 0:
        return
    seg = cipher.segment_size
    last = (size - 1) // seg
    plain = _read_last(fd, cipher, last)[0]
    out = memoryview(bytearray(len(plain) + OVERHEAD))
    cipher.seal_into(last, plain, out, final=True)
    _pwritev_all(fd, [out], last * (seg + OVERHEAD))
    if fsync:
        os.fsync(fd)


def _build_object(
    src: int, dst: int, cipher: SegmentCipher, size: int, final: tuple[bytes, bytes]
) -> None:
    """The object's file: the upload's sealed segments but the last, copied in the kernel,
    then its final last segment."""
    unit = cipher.segment_size + OVERHEAD
    last = segment_count(size, cipher.segment_size, finished=True) - 1
    if last:
        _copy_range(src, dst, 0, 0, last * unit)
    _pwritev_all(dst, list(final), last * unit)


async def _seal_into(
    fd: int,
    pos: int,
    cipher: SegmentCipher,
    index: int,
    prefix: bytes,
    source: ChunkSource,
    fsync: bool,
) -> int:
    """Seal ``prefix`` + the source's bytes as segments from ``index``, written from ``pos``.

    Whole segments are sealed straight from views of the source's blocks; only a segment
    split between blocks (or the last, partial one) is assembled (see _Cutter). Each block's
    segments are sealed on the event loop as soon as it arrives, while its bytes are still
    in the CPU's caches, into a staging buffer; a full buffer (about ``_BATCH``) goes to a
    worker thread for one pwritev while the next blocks are sealed into a second one. A small
    write without fsync goes straight to the page cache (see storage_backends.local).

    Measured (8 uploads of 64 MiB at once, 2 cores; docs/encryption.md): every trip to a
    worker costs GIL hand-offs, and sealing in the worker costs one more (cryptography
    releases the GIL while it works, and the worker must take it back to write), so sealing
    and writing each block in a worker cost a third more server CPU than uploads without
    encryption; sealing and writing on the event loop, 0-5 % (but the loop, which also parses
    HTTP, then limits throughput); sealing there and writing 1 MiB at a time from a worker,
    about 6 %, at nearly the throughput of plaintext uploads. Holding the blocks themselves to
    seal them in bigger batches cost more: their bytes had left the caches.

    The nonces are drawn many per getrandom call. Bytes received before a failing source are
    kept (sealed as a last, partial segment) and the failure propagates. The file is cut
    after the last segment written (a re-seal of a damaged last segment may be shorter than
    it). Returns the source's byte count. Memory per upload: the block being sealed and two
    staging buffers of about ``_BATCH`` (pooled), one filling while the other is written.
    """
    loop = asyncio.get_running_loop()
    unit = cipher.segment_size + OVERHEAD
    size = max(1, _BATCH // cipher.segment_size) * unit
    cutter = _Cutter(cipher.segment_size, prefix)
    nonces = _Nonces()
    received = 0
    taken: list[bytearray] = []  # staging buffers from the pool, given back at the end
    stage: memoryview | None = None  # the buffer being filled ...
    filled = 0  # ... with this many sealed bytes, to be written at pos - filled
    spare: memoryview | None = None  # the other buffer, free once ``pending`` is done
    pending: asyncio.Future[int] | None = None

    async def settle() -> None:
        """Wait for the write in flight. Writes go to the file in order, never two at once:
        a later segment is never on disk while an earlier one is still being written (after
        a crash, only the last segment may be damaged, and _upload_state checks that one)."""
        nonlocal pending
        if pending is not None:
            await asyncio.shield(pending)
            pending = None

    async def submit() -> None:
        """Hand the staged bytes to a worker (after the previous write is done)."""
        nonlocal stage, filled, spare, pending
        await settle()
        assert stage is not None
        bufs: list[_Bytes] = [stage[:filled]]
        pending = loop.run_in_executor(None, _pwritev_all, fd, bufs, pos - filled)
        stage, spare, filled = spare, stage, 0

    async def seal(parts: list[_Bytes]) -> None:
        nonlocal stage, filled, pos, index
        sealed = sum(map(len, parts)) + OVERHEAD * len(parts)
        drawn = nonces.take(len(parts))
        if stage is None and sealed <= _INLINE_WRITE and not fsync:
            # A small write (a small upload, or small blocks): into the page cache, here.
            await settle()
            buf = memoryview(bytearray(sealed))
            n = 0
            for i, plain in enumerate(parts):
                nonce = drawn[i * NONCE : (i + 1) * NONCE]
                n += cipher.seal_into(index + i, plain, buf[n:], nonce=nonce)
            _pwritev_all(fd, [buf], pos)
            pos += sealed
            index += len(parts)
            return
        for i, plain in enumerate(parts):
            if stage is not None and filled + len(plain) + OVERHEAD > len(stage):
                await submit()
            if stage is None:
                taken.append(_POOL.take(size))
                stage = memoryview(taken[-1])
            n = cipher.seal_into(
                index, plain, stage[filled:], nonce=drawn[i * NONCE : (i + 1) * NONCE]
            )
            filled += n
            pos += n
            index += 1
            if len(stage) - filled < unit:  # full: no room for another whole segment
                await submit()

    try:
        try:
            async for block in source:
                received += len(block)
                parts = cutter.cut(block)
                if parts:
                    await seal(parts)
        finally:
            rest = cutter.rest()
            if rest is not None:
                await seal([rest])
            if filled:
                if filled <= _INLINE_WRITE and not fsync:
                    await settle()
                    assert stage is not None
                    _pwritev_all(fd, [stage[:filled]], pos - filled)
                    filled = 0
                else:
                    await submit()
            await settle()
            if fsync:
                await _in_worker(_finish_file, fd, pos, fsync)
            else:
                _finish_file(fd, pos, fsync)  # metadata calls only
    except BaseException:
        if pending is not None:  # never leave a write behind us, nor its buffer in use
            while not pending.done():
                with contextlib.suppress(BaseException):
                    await asyncio.wait([pending])
        raise
    finally:
        for buf in taken:
            _POOL.give(buf)
    return received


class _Nonces:
    """Random nonces for the segments of one write, from getrandom, many per call."""

    __slots__ = ("_at", "_buf")

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        need = count * NONCE
        if len(self._buf) - self._at < need:
            # The first draw is exact (a small upload needs one); then 64 at a time.
            self._buf = secrets.token_bytes(need if not self._buf else max(need, 64 * NONCE))
            self._at = 0
        drawn = self._buf[self._at : self._at + need]
        self._at += need
        return drawn


def _pwritev_all(fd: int, bufs: list[_Bytes], pos: int) -> int:
    """Write the buffers one after the other from ``pos``, resuming after short writes."""
    total = 0
    for at in range(0, len(bufs), _IOV_MAX):
        group = bufs[at : at + _IOV_MAX]
        left = sum(map(len, group))
        while left:
            n = os.pwritev(fd, group, pos + total)
            if n <= 0:
                raise StorageError("short write")
            total += n
            left -= n
            while group and n >= len(group[0]):
                n -= len(group[0])
                group = group[1:]
            if n:
                group[0] = memoryview(group[0])[n:]
    return total


def _finish_file(fd: int, end: int, fsync: bool) -> None:
    if os.fstat(fd).st_size > end:
        os.ftruncate(fd, end)  # a shorter re-seal of a damaged last segment
    if fsync:
        os.fsync(fd)


def _splice(src: int, dst: int, pos: int, count: int, fsync: bool) -> None:
    _copy_range(src, dst, 0, pos, count)
    _finish_file(dst, pos + count, fsync)
