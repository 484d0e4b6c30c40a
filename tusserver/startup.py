"""The start-up step: read and check what the configuration points at, once, before serving.

A :class:`~tusserver.config.TusServerConfig` holds values only, checked when it is built. The
files its settings name are read here: the master keys of envelope encryption (and their key
file), the JWT key files, and the TLS files are checked to be readable. :func:`resolve` raises
:class:`~tusserver.config.ConfigError` naming the setting; the CLI calls it before anything
else, and :func:`tusserver.app.build_runtime` (so ``create_app``) calls it for the embedded
server.

The generated HS256 secret (``<data_dir>/jwt_secret``) is not read here: it is state of the
data directory, created by the runtime, and a refused configuration must not create it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storage_backends.encryption import EncryptionKeyError, KeyRing

from .config import TusServerConfig
from .settings import AuthSettings, ConfigError, EncryptionSettings

__all__ = ["Resolved", "load_key_ring", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """What the start-up step read for one configuration."""

    #: The master keys of envelope encryption; None when encryption is off.
    key_ring: KeyRing | None = None
    #: PEM text of ``jwt_private_key_file`` / ``jwt_public_key_file`` (None when not set).
    jwt_private_key: str | None = None
    jwt_public_key: str | None = None


def resolve(config: TusServerConfig) -> Resolved:
    """Read the key files ``config`` names and check the files it serves; ConfigError if not."""
    sections = config.sections
    key_ring = load_key_ring(sections.encryption) if sections.encryption.enabled else None
    for name in ("tls_cert_file", "tls_key_file"):
        _check_readable(name, getattr(sections.web, name))
    private, public = _jwt_keys(sections.auth)
    return Resolved(key_ring=key_ring, jwt_private_key=private, jwt_public_key=public)


def load_key_ring(settings: EncryptionSettings) -> KeyRing:
    """The master keys of envelope encryption (raises ConfigError naming the setting)."""
    try:
        return KeyRing.from_specs(
            settings.encryption_keys,
            key_file=Path(settings.encryption_key_file) if settings.encryption_key_file else None,
            active=settings.encryption_active_key,
        )
    except EncryptionKeyError as exc:
        name = "encryption_key_file" if "key file" in str(exc) else "encryption_keys"
        if "active" in str(exc):
            name = "encryption_active_key"
        raise ConfigError(f"{name}: {exc}") from None


def _jwt_keys(auth: AuthSettings) -> tuple[str | None, str | None]:
    """The PEM keys of RS256/ES256 (read only when tokens use them; checked whenever set)."""
    used = auth.auth == "jwt" and auth.jwt_algorithm != "HS256"
    keys: list[str | None] = []
    for name in ("jwt_private_key_file", "jwt_public_key_file"):
        path: str = getattr(auth, name)
        _check_readable(name, path)
        keys.append(_read(name, path) if path and used else None)
    return keys[0], keys[1]


def _check_readable(name: str, value: str) -> None:
    if value and not os.access(value, os.R_OK):
        raise ConfigError(f"{name}: {value} is not a readable file")


def _read(name: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: {path} is not a readable file ({exc})") from None
