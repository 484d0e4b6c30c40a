"""Master keys and envelopes: the keys that wrap each file's data key.

Each file gets a random 256-bit data key, wrapped with AES-256-GCM by a master key named by an
id, and bound to the file's name so envelopes cannot be swapped between files. The envelope
(key id, wrapped key, segment size, size) lives beside the data: in the object's metadata, or
in a sidecar for an upload in progress. Rotating the master key rewrites envelopes, never data.
A store remembers which master keys sealed its data (a check record), so a wrong or missing
key is reported when the server starts rather than on the first download.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..base import IntegrityError, StorageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CHECK_NAME",
    "NONCE",
    "EncryptionKeyError",
    "Envelope",
    "IntegrityError",
    "KeyRing",
    "RotationReport",
    "generate_key_spec",
    "parse_key_spec",
    "strip_envelope",
]

#: Bytes of an AES-GCM nonce (data keys are wrapped, and segments sealed, with AES-GCM).
NONCE = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_META_PREFIX = "tusenc-"
_CHECK_PLAINTEXT = b"tusserver master key check v1"
#: Where a store keeps the check records of its master keys.
CHECK_NAME = ".tusserver-encryption.json"


class EncryptionKeyError(StorageError):
    """A master key is missing, malformed or does not open what it should: fix the config."""


@dataclass(slots=True)
class RotationReport:
    rewrapped: int = 0
    already_current: int = 0
    plaintext: int = 0


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


def strip_envelope(meta: Mapping[str, str]) -> dict[str, str]:
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
        # cryptography is imported by the first use of a key, not by importing this module:
        # the error types above are needed by every server, the cipher only with encryption
        # on (loading cryptography costs about 6 MiB of resident memory).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
        from cryptography.exceptions import InvalidTag

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
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
        from cryptography.exceptions import InvalidTag

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
