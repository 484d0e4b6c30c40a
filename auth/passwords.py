"""Password hashing: argon2id at OWASP's recommendation, per-user random salt.

New hashes are argon2id with m = 19 MiB, t = 2, p = 1 (OWASP Password Storage Cheat Sheet,
2025), in the PHC string form ``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`` that carries
its own parameters. Hashes of earlier versions (``scrypt$<log2 n>$<r>$<p>$<salt>$<hash>``)
still verify; :func:`needs_rehash` tells the caller to store a new hash after the next
successful sign-in, and so does an argon2id hash with parameters older than today's.

Hashing and verification run in a thread (both are deliberately slow; argon2-cffi and
hashlib release the GIL), never on the event loop, and compare in constant time. Unknown
users are checked against a dummy hash of the same kind, so a login for a user who does not
exist takes as long as one with a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "hash_password",
    "needs_rehash",
    "verify_password",
    "verify_password_or_dummy",
]

#: OWASP's argon2id configuration (19 MiB, 2 iterations, 1 lane).
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
MAX_PASSWORD_BYTES = 1024

# Immutable parameters, not state: one hasher serves every call and thread.
_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)
# A hash of a random password nobody knows (made once with the parameters above): what a
# login for an unknown user is checked against. Its password was thrown away.
_DUMMY = (
    "$argon2id$v=19$m=19456,t=2,p=1$8NS/KXZETKnlDN2BALqOZg"
    "$M1AZRJLtzCZBATo1AlHwLKQtDa3NazwFPhHE1w4HxkI"
)
# Legacy scrypt hashes: at most this much memory for one check.
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def _secret(password: str) -> bytes:
    return password.encode("utf-8", "surrogatepass")[:MAX_PASSWORD_BYTES]


def _hash_sync(password: str) -> str:
    return _HASHER.hash(_secret(password))


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        scheme, log_n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt" or not (1 <= int(log_n) <= 20):
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(hash_b64)
        actual = hashlib.scrypt(
            _secret(password),
            salt=salt,
            n=2 ** int(log_n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


def _verify_sync(password: str, stored: str) -> bool:
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored)
    try:
        return _HASHER.verify(stored, _secret(password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (a cheap parse)."""
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except (InvalidHashError, ValueError):
        return True


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hash_sync, password)


async def verify_password(password: str, stored: str) -> bool:
    return await asyncio.to_thread(_verify_sync, password, stored)


async def verify_password_or_dummy(password: str, stored: str | None) -> bool:
    """Verify, spending the same work when there is no user (no timing oracle)."""
    ok = await verify_password(password, stored if stored is not None else _DUMMY)
    return ok and stored is not None
