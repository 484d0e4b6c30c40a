"""JWT access and refresh tokens (pyjwt).

Exactly one algorithm is accepted, the configured one, so ``alg: none`` and algorithm
confusion (an HS256 token signed with a public RSA key, say) are refused by construction.
Issuer, audience, expiry (with leeway) and the token type are checked on every token.

Verified access tokens are remembered (bounded, per service) until they expire or for at
most a minute: a client sends the same token on every PATCH and HEAD, and pyjwt's checks
cost more than the rest of a HEAD. A token's signature does not change; a revoked user or
token is caught by the gateway's per-request user check, not here. With a JWKS issuer, a key
it withdraws stops being accepted within that minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["Claims", "ExpiredToken", "InvalidToken", "TokenService"]

MAX_TOKEN_LENGTH = 8192
_REMEMBER_FOR = 60.0
_REMEMBER_MAX = 10_000
#: A JWKS key set is fetched again at most this often (seconds), whatever the tokens ask for,
#: and at the latest after ``_JWKS_LIFESPAN`` (keys an issuer withdraws stop working then).
JWKS_REFETCH_INTERVAL = 60.0
_JWKS_LIFESPAN = 300.0


class InvalidToken(Exception):
    """The token is malformed, forged, expired or of the wrong kind."""


class ExpiredToken(InvalidToken):
    """The token was good but its time is over."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    token_type: str
    issued_at: dt.datetime
    jti: str
    role: str | None
    raw: dict[str, Any]


class TokenService:
    def __init__(
        self,
        *,
        algorithm: str,
        secret: str = "",
        private_key: str | None = None,
        public_key: str | None = None,
        jwks_url: str | None = None,
        issuer: str,
        audience: str,
        leeway: float,
        access_ttl: float,
        refresh_ttl: float,
    ) -> None:
        self.algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        # pyjwt (and the cryptography it loads, about 9 MiB of resident memory together) is
        # imported where tokens are made or checked: a server with auth off never loads it.
        import jwt

        self._jwks = jwt.PyJWKClient(jwks_url, cache_jwk_set=False) if jwks_url else None
        #: The issuer's keys by kid, when they were last fetched (or tried), one fetch at a time.
        self._jwks_keys: dict[str | None, Any] = {}
        self._jwks_fetched: float | None = None
        self._jwks_lock = asyncio.Lock()
        #: How often the key set was fetched (tests and operators: a flood shows here).
        self.jwks_fetches = 0
        #: access token -> (its claims, monotonic time until which they may be reused)
        self._verified: OrderedDict[str, tuple[Claims, float]] = OrderedDict()
        if algorithm == "HS256":
            if not secret and self._jwks is None:
                raise ValueError("HS256 needs a secret")
            self._sign_key: Any = secret or None
            self._verify_key: Any = secret or None
        else:
            self._sign_key = private_key
            self._verify_key = public_key

    @property
    def can_issue(self) -> bool:
        return self._jwks is None and self._sign_key is not None

    @property
    def local(self) -> bool:
        """Whether the tokens are this deployment's own (its catalog's users: checked there,
        revocable), whether or not this instance can sign them; False for an external
        identity provider's (``jwks_url``)."""
        return self._jwks is None

    def issue(self, *, subject: str, token_type: str, role: str) -> tuple[str, str, dt.datetime]:
        """A signed token; returns (token, jti, expiry)."""
        import jwt

        if not self.can_issue:
            raise InvalidToken("this server only verifies tokens of an external issuer")
        now = dt.datetime.now(dt.UTC)
        ttl = self.access_ttl if token_type == "access" else self.refresh_ttl
        exp = now + dt.timedelta(seconds=ttl)
        jti = secrets.token_hex(16)
        payload = {
            "sub": subject,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now.timestamp(),  # sub-second: revocation compares against it exactly
            "nbf": int(now.timestamp()),
            "exp": exp,
            "jti": jti,
            "typ": token_type,
            "role": role,
        }
        token = jwt.encode(payload, self._sign_key, algorithm=self.algorithm)
        return token, jti, exp

    async def verify(self, token: str, *, token_type: str = "access") -> Claims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        if token_type == "access":
            known = self._verified.get(token)
            if known is not None:
                if time.monotonic() < known[1]:
                    return known[0]
                del self._verified[token]
        claims = await self._verify(token, token_type)
        if token_type == "access":
            exp = claims.raw.get("exp")
            if isinstance(exp, int | float):
                now = time.monotonic()
                left = exp + self._leeway - time.time()
                self._verified[token] = (claims, now + min(left, _REMEMBER_FOR))
                while len(self._verified) > _REMEMBER_MAX:
                    self._verified.popitem(last=False)
        return claims

    async def _jwks_key(self, token: str) -> Any:
        """The issuer's key for this token's ``kid``. An unknown kid (a rotated key, or a
        forged token) fetches the set again only if the last fetch is a minute old: a flood
        of made-up kids costs the issuer one request a minute, not one per token."""
        import jwt

        kid = jwt.get_unverified_header(token).get("kid")
        if not isinstance(kid, str | None):
            raise InvalidToken("kid must be a string")
        if self._jwks_due(kid):
            async with self._jwks_lock:
                if self._jwks_due(kid):  # another request may have fetched meanwhile
                    await self._fetch_jwks()
        keys = self._jwks_keys
        found = keys.get(kid)
        if found is None and kid is None and len(keys) == 1:
            found = next(iter(keys.values()))
        if found is None:
            raise InvalidToken(f"no key of the issuer has kid {kid!r}")
        return found.key

    def _jwks_due(self, kid: str | None) -> bool:
        if self._jwks_fetched is None:
            return True
        age = time.monotonic() - self._jwks_fetched
        return age >= _JWKS_LIFESPAN or (
            kid not in self._jwks_keys and age >= JWKS_REFETCH_INTERVAL
        )

    async def _fetch_jwks(self) -> None:
        import jwt

        assert self._jwks is not None
        # Counted before it runs: a failing issuer is not asked again within the interval.
        self._jwks_fetched = time.monotonic()
        self.jwks_fetches += 1
        try:
            jwk_set = await asyncio.to_thread(self._jwks.get_jwk_set, True)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the issuer's keys are unavailable: {exc}") from None
        self._jwks_keys = {k.key_id: k for k in jwk_set.keys if k.public_key_use in ("sig", None)}

    async def _verify(self, token: str, token_type: str) -> Claims:
        import jwt

        try:
            key = self._verify_key
            if self._jwks is not None:
                key = await self._jwks_key(token)
            payload = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise ExpiredToken(str(exc) or "token expired") from None
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from None
        typ = payload.get("typ", "access")
        if self._jwks is not None and token_type == "access" and _provider_access_type(typ):
            typ = "access"  # an identity provider's word for it (Keycloak: "Bearer")
        if typ != token_type:
            raise InvalidToken(f"expected an {token_type} token, got {typ!r}")
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub:
            raise InvalidToken("token has no subject")
        iat = payload.get("iat")
        if not isinstance(iat, int | float):
            raise InvalidToken("token has no valid iat")
        try:
            issued_at = dt.datetime.fromtimestamp(iat, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidToken("token has no valid iat") from None
        role = payload.get("role")
        return Claims(
            subject=sub,
            token_type=typ,
            issued_at=issued_at,
            jti=str(payload.get("jti", "")),
            role=role if isinstance(role, str) else None,
            raw=payload,
        )


def _provider_access_type(typ: object) -> bool:
    """Whether an external provider's ``typ`` claim names an access token (Keycloak writes
    ``Bearer``; RFC 9068's ``at+jwt`` is a header value some providers copy): its ID and
    refresh tokens (``ID``, ``Refresh``) are not accepted as access tokens."""
    return isinstance(typ, str) and typ.lower() in ("access", "bearer", "at+jwt")
