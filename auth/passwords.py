"""Password hashing with scrypt (memory-hard, standard library), per-user random salt.

Stored form: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so parameters can grow later
and old hashes still verify. Verification runs in a thread (scrypt is deliberately slow) and
compares in constant time. Unknown users are checked against a dummy hash, so a login for a
user who does not exist takes as long as one with a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets

__all__ = ["hash_password", "verify_password", "verify_password_or_dummy"]

_LOG_N, _R, _P = 14, 8, 1
_DKLEN = 32
_MAXMEM = 64 * 1024 * 1024
MAX_PASSWORD_BYTES = 1024


def _derive(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8")[:MAX_PASSWORD_BYTES],
        salt=salt,
        n=2**log_n,
        r=r,
        p=p,
        maxmem=_MAXMEM,
        dklen=_DKLEN,
    )


def _hash_sync(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _derive(password, salt, _LOG_N, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${_LOG_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def _verify_sync(password: str, stored: str) -> bool:
    try:
        scheme, log_n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(hash_b64)
        actual = _derive(password, salt, int(log_n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hash_sync, password)


async def verify_password(password: str, stored: str) -> bool:
    return await asyncio.to_thread(_verify_sync, password, stored)


@functools.cache
def _dummy() -> str:
    """The hash unknown users are checked against: made on first use, not at import."""
    return _hash_sync(secrets.token_urlsafe(16))


async def verify_password_or_dummy(password: str, stored: str | None) -> bool:
    """Verify, spending the same work when there is no user (no timing oracle)."""
    if stored is None:
        dummy = await asyncio.to_thread(_dummy)
    ok = await verify_password(password, stored if stored is not None else dummy)
    return ok and stored is not None
