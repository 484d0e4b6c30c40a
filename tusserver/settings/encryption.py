"""Envelope encryption at rest: the master keys (read at start, see ``tusserver.startup``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import ConfigError, doc

__all__ = ["EncryptionSettings"]


@dataclass(frozen=True, kw_only=True)
class EncryptionSettings:
    """Whether files are encrypted at rest, and where the master keys are.

    The keys themselves are parsed (and the key file read) by the start-up step, which
    raises :class:`ConfigError` naming the setting; this section only checks the values.
    """

    encryption: str = field(
        default="none",
        metadata=doc(
            "`none`, or `envelope`: AES-256-GCM in segments with a data key per file, wrapped "
            "by a master key, for the local chunk store and the object store (local, or S3 as "
            "client-side encryption). Files stored before it was turned on are refused "
            "unless `encryption_allow_plaintext` is on."
        ),
    )
    encryption_keys: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Master keys as `id:base64-of-32-bytes` (comma-separated in the environment); "
            "`tusserver keys generate ID` makes one. Keep old keys until `keys rotate` ends.",
            secret=True,
        ),
    )
    encryption_key_file: str = field(
        default="",
        metadata=doc("File with more master keys, one `id:base64` per line (`#` comments)."),
    )
    encryption_active_key: str = field(
        default="",
        metadata=doc("Id of the master key that wraps new data keys (empty: the first one)."),
    )
    encryption_segment_size: int = field(
        default=256 * 1024,
        metadata=doc(
            "Plaintext bytes per encrypted segment (4 KiB to 16 MiB): the unit a Range read "
            "decrypts; recorded per file, so changing it is safe."
        ),
    )
    encryption_allow_plaintext: bool = field(
        default=False,
        metadata=doc(
            "With `encryption = envelope`, serve objects that have no encryption envelope "
            "(stored before encryption was turned on) as they are. Off: such an object is an "
            "integrity error (logged, 500), since whoever can write to the store could "
            "otherwise substitute a file. Turn on only while migrating old files."
        ),
    )

    def __post_init__(self) -> None:
        if self.encryption not in ("none", "envelope"):
            raise ConfigError("encryption: must be 'none' or 'envelope'")
        if not 4096 <= self.encryption_segment_size <= 16 * 1024 * 1024:
            raise ConfigError("encryption_segment_size: must be between 4096 and 16777216")
        if self.enabled and not self.encryption_keys and not self.encryption_key_file:
            raise ConfigError("encryption_keys: encryption is on but no master key is configured")

    @property
    def enabled(self) -> bool:
        return self.encryption == "envelope"
