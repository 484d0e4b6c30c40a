"""Authentication, tokens, sign-up, quotas and rate limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import ConfigError, check_non_negative_numbers, check_not_negative, doc

__all__ = ["AuthSettings"]


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """What the gateway, the token service and the auth API need.

    The key files are checked to be readable by the start-up step, not here.
    """

    auth: str = field(
        default="jwt",
        metadata=doc(
            "`jwt` (every request needs a token) or `none` (only behind a gateway that already "
            "authenticates; logged as a warning)."
        ),
    )
    production: bool = field(
        default=False,
        metadata=doc(
            "Refuse to start without explicit secrets (no generated JWT secret) and with "
            "insecure cookies."
        ),
    )
    jwt_secret: str = field(
        default="",
        metadata=doc(
            "HS256 signing secret. Empty (not in production): generated once and kept in "
            "`<data_dir>/jwt_secret`.",
            secret=True,
        ),
    )
    jwt_algorithm: str = field(
        default="HS256", metadata=doc("HS256, RS256 or ES256 (the only algorithm accepted).")
    )
    jwt_private_key_file: str = field(
        default="", metadata=doc("PEM private key for RS256/ES256 (to issue tokens).")
    )
    jwt_public_key_file: str = field(
        default="", metadata=doc("PEM public key for RS256/ES256 (to verify tokens).")
    )
    jwks_url: str = field(
        default="",
        metadata=doc(
            "JWKS URL of an external identity provider: tokens are verified with its keys and "
            "the server issues none (login is then disabled)."
        ),
    )
    jwt_issuer: str = field(default="tusserver", metadata=doc("`iss` issued and required."))
    jwt_audience: str = field(default="tusserver", metadata=doc("`aud` issued and required."))
    jwt_leeway: float = field(default=30.0, metadata=doc("Clock skew tolerated, in seconds."))
    access_token_ttl: float = field(
        default=900.0, metadata=doc("Lifetime of access tokens in seconds.")
    )
    refresh_token_ttl: float = field(
        default=30 * 24 * 3600.0, metadata=doc("Lifetime of refresh tokens in seconds.")
    )
    revocation_check_interval: float = field(
        default=5.0,
        metadata=doc(
            "Seconds a user's disabled/logged-out state may be cached: the bound on how late "
            "a revoked access token is still accepted."
        ),
    )
    registration_enabled: bool = field(
        default=True, metadata=doc("Allow anyone to sign up through the API.")
    )
    default_quota: int = field(
        default=0, metadata=doc("Bytes of storage per user unless set on the user (0: none).")
    )
    cookie_secure: bool = field(
        default=False, metadata=doc("Mark the session cookie Secure (required in production).")
    )
    rate_limit_creations: float = field(
        default=10.0,
        metadata=doc("Uploads a user (or IP) may create per second, sustained (0: no limit)."),
    )
    rate_limit_creations_burst: int = field(
        default=100, metadata=doc("Burst of upload creations allowed at once.")
    )
    rate_limit_registrations: float = field(
        default=0.005,
        metadata=doc(
            "Accounts one client address may register per second, sustained (the default is "
            "18 an hour; 0: no limit). Bounds an address signing up many accounts, each with "
            "`default_quota`. Only registrations that create an account count."
        ),
    )
    rate_limit_registrations_burst: int = field(
        default=10, metadata=doc("Registrations per client address allowed in a burst.")
    )
    rate_limit_api: float = field(
        default=50.0, metadata=doc("API requests per second per user or IP (0: no limit).")
    )
    rate_limit_api_burst: int = field(default=200, metadata=doc("Burst of API requests."))
    rate_limit_logins: float = field(
        default=0.2,
        metadata=doc(
            "Failed sign-ins (login, password change) per second per username and client "
            "address together, sustained. Every attempt is charged before the password is "
            "checked; a right password gets its charge back."
        ),
    )
    rate_limit_logins_burst: int = field(
        default=10,
        metadata=doc("Failed sign-ins per username and address allowed in a burst."),
    )
    rate_limit_logins_wide: float = field(
        default=1.0,
        metadata=doc(
            "Failed sign-ins per second per username (from every address) and per address "
            "(for every username), sustained: bounds a guesser with many addresses or "
            "usernames without letting one address lock an owner out."
        ),
    )
    rate_limit_logins_wide_burst: int = field(
        default=100,
        metadata=doc("Failed sign-ins per username, or per address, allowed in a burst."),
    )
    rate_limit_patch_bytes: int = field(
        default=0,
        metadata=doc(
            "PATCH bytes per second per user, sustained, with a minute's worth as burst; a "
            "PATCH over budget gets 429 with Retry-After (0: no limit)."
        ),
    )
    max_bodies_per_user: int = field(
        default=32,
        metadata=doc(
            "Request bodies one user may be sending at once to one server process (tus "
            "PATCHes and creations with upload, IETF draft content, each file of "
            "`POST /upload`); one more is refused with 429 and Retry-After before any of it "
            "is read. Bounds the connections, upload locks and buffers a user can hold with "
            "bodies sent just fast enough to stay under `body_idle_timeout`, which rate "
            'limits do not (0: no cap; none with `auth = "none"`, like the rate limits).'
        ),
    )

    def __post_init__(self) -> None:
        check_not_negative(
            self,
            "max_bodies_per_user",
            "default_quota",
            "rate_limit_creations_burst",
            "rate_limit_registrations_burst",
            "rate_limit_api_burst",
            "rate_limit_logins_burst",
            "rate_limit_logins_wide_burst",
            "rate_limit_patch_bytes",
        )
        check_non_negative_numbers(
            self,
            "jwt_leeway",
            "access_token_ttl",
            "refresh_token_ttl",
            "revocation_check_interval",
            "rate_limit_creations",
            "rate_limit_registrations",
            "rate_limit_api",
            "rate_limit_logins",
            "rate_limit_logins_wide",
        )
        if self.auth not in ("jwt", "none"):
            raise ConfigError("auth: must be 'jwt' or 'none'")
        if self.jwt_algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError("jwt_algorithm: must be HS256, RS256 or ES256")
        if self.auth == "jwt" and self.production:
            if self.jwt_algorithm == "HS256" and not self.jwks_url and len(self.jwt_secret) < 32:
                raise ConfigError("jwt_secret: production needs a secret of at least 32 chars")
            if not self.cookie_secure:
                raise ConfigError("cookie_secure: must be true in production")
        if self.jwt_algorithm != "HS256" and not self.jwks_url and not self.jwt_public_key_file:
            raise ConfigError(f"jwt_public_key_file: required for {self.jwt_algorithm}")
