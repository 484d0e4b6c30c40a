"""The gateway: who is calling (bearer token or session cookie + CSRF) and how often.

Handlers call :meth:`Gateway.principal` on every request that needs an identity (all but
OPTIONS, health and login), and :meth:`Gateway.limit` where a route class has a rate limit;
:meth:`Gateway.slot` bounds how many requests of one kind a caller has going at once.
Users are cached in the ``user`` namespace of the server's cache (tusserver.cache) for at
most ``revocation_check_interval`` seconds. Every change of a user (disable, role, password,
logout) invalidates the entry when it commits, on every instance sharing the PostgreSQL
database; the interval bounds only what an invalidation cannot reach (another process on the
same SQLite file, such as ``tusserver user disable``).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn, Protocol

import structlog
from aiohttp import web

from tusserver.cache import USERS, Cache, Namespace
from tusserver.errors import CsrfRejected, TooManyRequests, Unauthorized

from .principal import UNAUTHENTICATED_OPERATOR, Principal
from .ratelimit import RateLimiter
from .signals import NoSignals, SecuritySignals
from .tokens import ExpiredToken, InvalidToken, TokenService
from .users import AuditLog, User, UserRepository

_log = structlog.get_logger("tusserver.auth")

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "CsrfRejected",
    "Gateway",
    "TooManyRequests",
]

SESSION_COOKIE = "tus_session"
CSRF_COOKIE = "tus_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_INVALID = {"WWW-Authenticate": 'Bearer realm="tusserver", error="invalid_token"'}
_PRINCIPAL = web.RequestKey("tusserver_principal", Principal)


#: How an embedding application tells the handlers who is calling.
PrincipalResolver = Callable[[web.Request], Awaitable[Principal]]


class Gate(Protocol):
    """What handlers ask of the gateway: an identity, and permission to proceed."""

    async def principal(self, request: web.Request) -> Principal: ...

    async def limit(
        self,
        request: web.Request,
        kind: str,
        *,
        who: str | None = None,
        cost: float = 1.0,
        require: float | None = None,
    ) -> None: ...

    async def charge(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> None: ...

    async def pace(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> float: ...

    def slot(
        self, request: web.Request, kind: str, *, who: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]: ...

    def audit(
        self, request: web.Request, action: str, *, actor: str | None, target: str | None
    ) -> None: ...


#: A place that is always free (no cap): one shared, stateless context manager.
_NO_CAP: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class OpenGate:
    """No authentication and no limits (auth = "none", or tests)."""

    async def principal(self, request: web.Request) -> Principal:
        return UNAUTHENTICATED_OPERATOR

    async def limit(
        self,
        request: web.Request,
        kind: str,
        *,
        who: str | None = None,
        cost: float = 1.0,
        require: float | None = None,
    ) -> None:
        return None

    async def charge(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> None:
        return None

    async def pace(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> float:
        return 0.0

    def slot(
        self, request: web.Request, kind: str, *, who: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return _NO_CAP

    def audit(
        self, request: web.Request, action: str, *, actor: str | None, target: str | None
    ) -> None:
        return None


class ResolverGate(OpenGate):
    """Identity from an embedding application's own resolver; no limits of ours."""

    def __init__(self, resolver: PrincipalResolver) -> None:
        self._resolver = resolver

    async def principal(self, request: web.Request) -> Principal:
        return await self._resolver(request)


class _Who:
    """The default actor of a limit's audit entry: the bucket's ``who``."""


_WHO = _Who()


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float
    burst: float


class Gateway:
    def __init__(
        self,
        *,
        enabled: bool,
        tokens: TokenService | None,
        users: UserRepository,
        audit: AuditLog,
        limiter: RateLimiter,
        limits: dict[str, Limit],
        revocation_check_interval: float,
        caps: Mapping[str, int] | None = None,
        trust_forwarded: bool = False,
        cache: Cache | None = None,
        signals: SecuritySignals | None = None,
    ) -> None:
        self._trust_forwarded = trust_forwarded
        self.signals: SecuritySignals = signals if signals is not None else NoSignals()
        self.enabled = enabled
        self.tokens = tokens
        self.users = users
        self.audit_log = audit
        self.limiter = limiter
        self._limits = limits
        #: Places per caller of each capped kind (:meth:`slot`), and those held now, by
        #: ``kind:who`` (a key goes when its last place is given back).
        self._caps: Mapping[str, int] = caps or {}
        self._held: dict[str, int] = {}
        # Without the server's cache (a gateway built on its own): a private one.
        self._cache = cache if cache is not None else Cache(max_entries=50_000)
        self._user_ns: Namespace[User | None] = Namespace(USERS, revocation_check_interval)

    async def principal(self, request: web.Request) -> Principal:
        if not self.enabled:
            return UNAUTHENTICATED_OPERATOR
        if _PRINCIPAL in request:
            return request[_PRINCIPAL]
        # Every log line and audit entry of this request carries the caller's address.
        structlog.contextvars.bind_contextvars(client_ip=self.client_ip(request))
        token, via_cookie = _token_of(request)
        if token is None:
            raise Unauthorized(
                "authentication required", headers={"WWW-Authenticate": 'Bearer realm="tusserver"'}
            )
        assert self.tokens is not None
        try:
            claims = await self.tokens.verify(token)
        except InvalidToken as exc:
            self.signals.token_rejected("expired" if isinstance(exc, ExpiredToken) else "invalid")
            raise Unauthorized(
                f"invalid token: {exc}",
                headers={"WWW-Authenticate": 'Bearer realm="tusserver", error="invalid_token"'},
            ) from None
        if self.tokens.local:
            # Local tokens, including on an instance that only verifies them (RS256/ES256
            # with the public key alone): the catalog says who may use them, and as what.
            user = await self._user(claims.subject)
            if user is None or user.disabled:
                self.signals.token_rejected("disabled")
                self._audit_token(request, claims.subject, "disabled")
                raise Unauthorized("the account is disabled or gone", headers=_INVALID)
            if user.tokens_valid_after and claims.issued_at <= user.tokens_valid_after:
                self.signals.token_rejected("revoked")
                self._audit_token(request, user.id, "revoked")
                raise Unauthorized("the token was revoked; sign in again", headers=_INVALID)
            principal = Principal(user_id=user.id, is_admin=user.is_admin)
        else:
            # Tokens of an external identity provider: its subject is the owner.
            principal = Principal(user_id=claims.subject[:64], is_admin=claims.role == "admin")
        override = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
        method = override or request.method
        if via_cookie and (request.method not in _SAFE_METHODS or method not in _SAFE_METHODS):
            _check_csrf(request)
        request[_PRINCIPAL] = principal
        return principal

    def _audit_token(self, request: web.Request, user_id: str, reason: str) -> None:
        self.audit_log.record_soon(
            "auth.token",
            actor=user_id[:64],
            outcome="denied",
            ip=self.client_ip(request),
            detail={"reason": reason},
        )

    async def cached_user(self, user_id: str) -> User | None:
        """The user as cached for at most ``revocation_check_interval`` seconds."""
        return await self._user(user_id)

    async def _user(self, user_id: str) -> User | None:
        return await self._cache.fetch(self._user_ns, user_id, lambda: self.users.get(user_id))

    def audit(
        self, request: web.Request, action: str, *, actor: str | None, target: str | None
    ) -> None:
        """Queue an audit entry for a frequent action (written in batches)."""
        self.audit_log.record_soon(action, actor=actor, target=target, ip=self.client_ip(request))

    def client_ip(self, request: web.Request) -> str:
        """The client's address; behind a trusted proxy, the one the proxy saw."""
        if self._trust_forwarded:
            # Every line: a proxy may append a line of its own rather than extend the
            # client's (HAProxy's option forwardfor).
            forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
            if forwarded:
                # The rightmost entry is the one our proxy appended; the rest is hearsay.
                last = forwarded.split(",")[-1].strip()
                if last and len(last) <= 64:
                    return last
        return client_ip(request)

    def forget_user(self, user_id: str) -> None:
        """Drop a cached user (UserRepository's writes already do, on every instance)."""
        self._cache.invalidate(self._user_ns, user_id)

    async def limit(
        self,
        request: web.Request,
        kind: str,
        *,
        who: str | None = None,
        cost: float = 1.0,
        require: float | None = None,
        actor: str | _Who | None = _WHO,
        target: str | None = None,
    ) -> None:
        """Apply the rate limit of a route class; 429 with Retry-After when exceeded.

        The check and the charge are one atomic step of the limiter, so concurrent requests
        cannot all pass on the same token. ``require`` tokens must be available even when
        fewer (``cost``) are taken. With auth off there are no limits either: every request
        then comes through a front gateway that authenticates (and usually shares one IP),
        so it must do the limiting.

        A refusal is counted (``throttled``, by ``kind``) and audited: ``actor`` (default
        ``who``) and ``target`` say whom it concerns.
        """
        if not self.enabled:
            return
        lim = self._limits.get(kind)
        if lim is None or lim.rate <= 0:
            return
        key = f"{kind}:{who or self.client_ip(request)}"
        decision = await self.limiter.take(
            key, rate=lim.rate, burst=lim.burst, cost=cost, require=require
        )
        if not decision.allowed:
            wait = max(1, int(decision.retry_after + 0.999))
            self._throttle(
                request,
                kind,
                actor=who if isinstance(actor, _Who) else actor,
                target=target,
                message="too many requests; slow down",
                retry_after=min(wait, 3600),
            )

    def _throttle(
        self,
        request: web.Request,
        kind: str,
        *,
        actor: str | None,
        target: str | None,
        message: str,
        retry_after: int,
    ) -> NoReturn:
        """Refuse a request over a limit or a cap: counted, audited, 429 with Retry-After."""
        self.signals.throttled(kind)
        self.audit_log.record_soon(
            "rate_limit",
            actor=actor,
            target=target,
            outcome="throttled",
            ip=self.client_ip(request),
            detail={"limit": kind},
        )
        raise TooManyRequests(message, headers={"Retry-After": str(retry_after)})

    def slot(
        self, request: web.Request, kind: str, *, who: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the places ``kind``'s cap allows each caller (``who``, else the client's
        address), held for the ``async with`` block: entering it when all are taken is a 429
        with Retry-After, counted and audited like a rate limit's refusal (``throttled``,
        ``rate_limit``). Bounds what a caller holds at once (connections, locks, buffers),
        which rate limits do not. The counts are this instance's, in memory: a place is
        held by a running request, and a request never outlives its process. With auth off
        there is no cap, as there are no rate limits (see :meth:`limit`).
        """
        if not self.enabled:
            return _NO_CAP
        cap = self._caps.get(kind, 0)
        if cap <= 0:
            return _NO_CAP
        return _Place(self, request, kind, who, cap)

    def slots_held(self, kind: str, who: str) -> int:
        """How many of ``kind``'s places ``who`` holds now (monitoring, tests)."""
        return self._held.get(f"{kind}:{who}", 0)

    async def refund(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float = 1.0
    ) -> None:
        """Give back tokens taken by :meth:`limit` (a sign-in that turned out right)."""
        await self.charge(request, kind, who=who, cost=-cost)

    async def charge(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> None:
        """Take ``cost`` tokens after the fact, into debt if need be: for costs known only
        once the work is done (a body without Content-Length). Later requests wait.

        Never raises: the request's own answer (or error) matters more than the bookkeeping.
        """
        if not self.enabled or cost == 0:
            return
        lim = self._limits.get(kind)
        if lim is None or lim.rate <= 0:
            return
        key = f"{kind}:{who or self.client_ip(request)}"
        try:
            await self.limiter.take(key, rate=lim.rate, burst=lim.burst, cost=cost, force=True)
        except Exception:
            _log.exception("could not charge a rate limit after the fact", kind=kind, cost=cost)

    async def pace(
        self, request: web.Request, kind: str, *, who: str | None = None, cost: float
    ) -> float:
        """Take ``cost`` tokens before the work they pay for once the budget is at least half
        full and holds them (full, for a cost above the burst: into debt then), and return
        0; or take nothing and return how long to wait before asking again. For work that
        goes on as long as the client sends (a body without Content-Length, a block at a
        time): it goes at the budget's pace, and bodies sent side by side share the budget
        instead of each starting on it. What was taken
        and not used is given back with :meth:`charge` (a negative cost).

        Never raises: a limiter that fails does not stop the body (0 then).
        """
        if not self.enabled:
            return 0.0
        lim = self._limits.get(kind)
        if lim is None or lim.rate <= 0:
            return 0.0
        key = f"{kind}:{who or self.client_ip(request)}"
        try:
            # Granted only while the budget is at least half full (and holds the cost, up
            # to all it can hold): the caller's other requests, which need their whole cost
            # at once, keep the other half instead of being starved by a body that would take
            # every token as it comes back.
            taken = await self.limiter.take(
                key,
                rate=lim.rate,
                burst=lim.burst,
                cost=cost,
                require=min(lim.burst, max(cost, lim.burst / 2)),
                overdraw=True,
            )
        except Exception:
            _log.exception("could not pace a rate limit", kind=kind, cost=cost)
            return 0.0
        return 0.0 if taken.allowed else max(taken.retry_after, 0.001)


class _Place:
    """A request's hold on one of its caller's places of a capped kind (:meth:`Gateway.slot`):
    a dict lookup and an increment to take it, the same to give it back."""

    __slots__ = ("_cap", "_gateway", "_key", "_kind", "_request", "_who")

    def __init__(
        self, gateway: Gateway, request: web.Request, kind: str, who: str | None, cap: int
    ) -> None:
        self._gateway = gateway
        self._request = request
        self._kind = kind
        self._who = who
        self._key = f"{kind}:{who or gateway.client_ip(request)}"
        self._cap = cap

    async def __aenter__(self) -> None:
        held = self._gateway._held
        count = held.get(self._key, 0)
        if count >= self._cap:
            self._gateway._throttle(
                self._request,
                self._kind,
                actor=self._who,
                target=None,
                message=(
                    f"too many requests of yours in progress at once ({self._kind}: at most "
                    f"{self._cap}); try again when one of them has ended"
                ),
                retry_after=_PLACE_RETRY_AFTER,
            )
        held[self._key] = count + 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # No await here: a cancellation cannot come between the block's end and this.
        held = self._gateway._held
        left = held[self._key] - 1
        if left:
            held[self._key] = left
        else:
            del held[self._key]


#: Retry-After of a request refused for want of a place: one is free when another of the
#: caller's requests ends, which nobody can foresee.
_PLACE_RETRY_AFTER = 5


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def _token_of(request: web.Request) -> tuple[str | None, bool]:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized(
                "Authorization must be 'Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="tusserver", error="invalid_request"'},
            )
        return value.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, True
    return None, False


def _check_csrf(request: web.Request) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        raise CsrfRejected("missing or wrong CSRF token")
