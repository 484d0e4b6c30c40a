"""Auth API: register, login, refresh, logout, password change, who am I.

Tokens come back in the JSON body (for tus-js-client, Uppy, scripts). With ``"cookie": true``
the login also sets an HttpOnly session cookie plus a readable CSRF cookie for the web UI;
state-changing cookie-authenticated requests must echo the CSRF cookie in X-CSRF-Token.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import structlog
from aiohttp import web

from auth.gateway import CSRF_COOKIE, SESSION_COOKIE, Gateway
from auth.passwords import hash_password, needs_rehash, verify_password_or_dummy
from auth.users import User, UserExists, fold_username, valid_username

from ..catalog.usage import quota_limit
from ..errors import BadRequest, Forbidden, Unauthorized, UsernameTaken
from ..settings import AuthSettings
from .common import read_json, string_field

_log = structlog.get_logger("tusserver.api.auth")

__all__ = ["AuthApi"]

MIN_PASSWORD = 8


class AuthApi:
    def __init__(self, *, config: AuthSettings, gateway: Gateway) -> None:
        self._config = config
        self._gw = gateway

    def routes(self, prefix: str = "/api/v1/auth") -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/register", self.register),
            web.post(f"{prefix}/login", self.login),
            web.post(f"{prefix}/refresh", self.refresh),
            web.post(f"{prefix}/logout", self.logout),
            web.post(f"{prefix}/password", self.change_password),
            web.get(f"{prefix}/me", self.me),
            web.get(f"{prefix}/session", self.session),
        ]

    def _require_local_tokens(self) -> None:
        if not self._gw.enabled or self._gw.tokens is None or not self._gw.tokens.can_issue:
            raise Forbidden("this server does not issue tokens (auth is off or external)")

    async def register(self, request: web.Request) -> web.Response:
        self._require_local_tokens()
        if not self._config.registration_enabled:
            raise Forbidden("registration is closed")
        await self._gw.limit(request, "creations")
        data = await read_json(request)
        username = string_field(data, "username", max_len=64)
        password = string_field(data, "password", max_len=1024)
        if not valid_username(username):
            raise BadRequest("username: letters, digits and . _ @ - only, at most 64")
        if len(password) < MIN_PASSWORD:
            raise BadRequest(f"password: at least {MIN_PASSWORD} characters")
        # The address's budget of new accounts (each may get `default_quota`): taken before
        # the password is hashed and the account made, in one atomic step, so sign-ups sent
        # side by side cannot all pass; given back when no account was made.
        await self._gw.limit(request, "registrations")
        try:
            user = await self._gw.users.create(username, await hash_password(password), quota=None)
        except Exception as exc:
            with contextlib.suppress(Exception):  # (the error that matters is exc)
                await self._gw.refund(request, "registrations")
            if isinstance(exc, UserExists):
                # Also a name that differs from a taken one only in case: the same answer,
                # so registration tells no more about existing names than it did.
                raise UsernameTaken("that username is taken") from None
            raise
        await self._gw.audit_log.record(
            "user.register", actor=user.id, ip=self._gw.client_ip(request)
        )
        return web.json_response(_user_json(user), status=201)

    async def _throttle_sign_in(self, request: web.Request, username: str) -> list[str]:
        """Charge one attempt to every sign-in bucket of ``username`` from this address,
        BEFORE the password is checked: each charge is one atomic step of the limiter, so a
        burst of concurrent guesses checks at most the burst size, and a request over budget
        is refused (429) whatever its password. Returns the buckets charged (a right password
        gets them back; so do the buckets charged before one that refuses).

        Buckets: the (username, address) pair, which slows a guesser down; the username from
        every address and the address for every username, larger, which bound a guesser with
        many addresses or many usernames. One address alone never locks the owner out.
        """
        ip = self._gw.client_ip(request)
        # One name whatever its case, as the account it signs in to (fold_username).
        name = fold_username(username)
        # The address's first: an address over its budget is refused before any bucket of
        # the (made-up) username it sends is made.
        buckets = [
            ("logins_wide", f"ip:{ip}"),
            ("logins", f"user:{name}|ip:{ip}"),
            ("logins_wide", f"user:{name}"),
        ]
        charged: list[str] = []
        try:
            for kind, who in buckets:
                await self._gw.limit(request, kind, who=who, actor=None, target=username[:64])
                charged.append(f"{kind}\n{who}")
        except BaseException:
            # Refused by one bucket, no password was checked: the others are given back.
            try:
                await self._refund_sign_in(request, charged)
            except Exception:  # never hide the refusal
                _log.warning("sign-in charges not refunded", exc_info=True)
            raise
        return charged

    async def _refund_sign_in(self, request: web.Request, charged: list[str]) -> None:
        for entry in charged:
            kind, _, who = entry.partition("\n")
            await self._gw.refund(request, kind, who=who)

    async def login(self, request: web.Request) -> web.Response:
        self._require_local_tokens()
        data = await read_json(request)
        username = string_field(data, "username", max_len=64)
        password = string_field(data, "password", max_len=1024)
        cookie = data.get("cookie", False)
        if not isinstance(cookie, bool):  # "false" as a string is not false
            raise BadRequest("'cookie' must be true or false")
        ip = self._gw.client_ip(request)
        charged = await self._throttle_sign_in(request, username)
        # Found whatever the case the name is typed in (UserRepository.by_name).
        user = await self._gw.users.by_name(username) if valid_username(username) else None
        ok = await verify_password_or_dummy(password, user.password_hash if user else None)
        if not ok or user is None or user.disabled:
            reason = "unknown_user" if user is None else "wrong_password" if not ok else "disabled"
            self._gw.signals.signin_failed(reason)
            await self._gw.audit_log.record(
                "auth.login",
                actor=None,
                outcome="denied",
                target=username[:64],
                ip=ip,
                detail={"reason": reason},
            )
            raise Unauthorized("wrong username or password")
        await self._refund_sign_in(request, charged)
        if needs_rehash(user.password_hash):
            # Parameters older than today's: the password is known now, store a new hash.
            await self._gw.users.update(user.id, password_hash=await hash_password(password))
        await self._gw.audit_log.record("auth.login", actor=user.id, ip=ip)
        return await self._tokens_response(user, cookie=cookie)

    async def _tokens_response(
        self, user: User, *, cookie: bool, rotate: str | None = None, ip: str | None = None
    ) -> web.Response:
        """New tokens for ``user``; ``rotate``: the jti of the refresh token they replace
        (401 if it cannot be used: see :meth:`UserRepository.rotate_refresh`)."""
        tokens = self._gw.tokens
        assert tokens is not None
        access, _, _ = tokens.issue(subject=user.id, token_type="access", role=user.role)
        refresh, jti, exp = tokens.issue(subject=user.id, token_type="refresh", role=user.role)
        if rotate is None:
            await self._gw.users.store_refresh(jti, user.id, exp)
        else:
            outcome = await self._gw.users.rotate_refresh(rotate, user.id, jti, exp)
            if outcome != "ok":
                reason = "refresh_reused" if outcome == "reused" else "refresh_invalid"
                self._gw.signals.signin_failed(reason)
                await self._gw.audit_log.record(
                    "auth.refresh",
                    actor=user.id,
                    outcome="denied",
                    ip=ip,
                    detail={"reason": reason},
                )
                raise Unauthorized("invalid refresh token")
        body: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(tokens.access_ttl),
            "user": _user_json(user),
        }
        csrf = secrets.token_urlsafe(24) if cookie else None
        if csrf is not None:
            body["csrf_token"] = csrf
        resp = web.json_response(body, headers={"Cache-Control": "no-store"})
        if csrf is not None:
            secure = self._config.cookie_secure
            resp.set_cookie(
                SESSION_COOKIE,
                access,
                httponly=True,
                secure=secure,
                samesite="Strict",
                max_age=int(tokens.access_ttl),
                path="/",
            )
            resp.set_cookie(
                CSRF_COOKIE, csrf, httponly=False, secure=secure, samesite="Strict", path="/"
            )
        return resp

    async def refresh(self, request: web.Request) -> web.Response:
        self._require_local_tokens()
        data = await read_json(request)
        token = string_field(data, "refresh_token", max_len=8192)
        assert self._gw.tokens is not None
        try:
            claims = await self._gw.tokens.verify(token, token_type="refresh")
        except Exception:
            self._gw.signals.signin_failed("refresh_invalid")
            raise Unauthorized("invalid refresh token") from None
        user = await self._gw.users.get(claims.subject)
        if user is None or user.disabled:
            self._gw.signals.signin_failed("refresh_invalid")
            await self._gw.audit_log.record(
                "auth.refresh",
                actor=claims.subject[:64],
                outcome="denied",
                ip=self._gw.client_ip(request),
                detail={"reason": "disabled"},
            )
            raise Unauthorized("invalid refresh token")
        response = await self._tokens_response(
            user, cookie=bool(data.get("cookie")), rotate=claims.jti, ip=self._gw.client_ip(request)
        )
        await self._gw.audit_log.record(
            "auth.refresh", actor=user.id, ip=self._gw.client_ip(request)
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        principal = await self._gw.principal(request)
        if principal.user_id is not None:
            await self._gw.users.revoke_tokens(principal.user_id)
            self._gw.forget_user(principal.user_id)
            await self._gw.audit_log.record("auth.logout", actor=principal.user_id)
        resp = web.json_response({"status": "signed out"})
        resp.del_cookie(SESSION_COOKIE, path="/")
        resp.del_cookie(CSRF_COOKIE, path="/")
        return resp

    async def change_password(self, request: web.Request) -> web.Response:
        principal = await self._gw.principal(request)
        data = await read_json(request)
        old = string_field(data, "old_password")
        new = string_field(data, "new_password")
        if len(new) < MIN_PASSWORD:
            raise BadRequest(f"new_password: at least {MIN_PASSWORD} characters")
        user = await self._gw.users.get(principal.user_id or "")
        if user is None:
            raise Unauthorized("the current password is wrong")
        # Throttled like a login (same buckets): a stolen access token cannot guess the
        # password, and over budget even the right one is refused.
        charged = await self._throttle_sign_in(request, user.username)
        if not await verify_password_or_dummy(old, user.password_hash):
            self._gw.signals.signin_failed("wrong_password")
            await self._gw.audit_log.record(
                "user.password",
                actor=user.id,
                outcome="denied",
                ip=self._gw.client_ip(request),
                detail={"reason": "wrong_password"},
            )
            raise Unauthorized("the current password is wrong")
        await self._refund_sign_in(request, charged)
        await self._gw.users.update(user.id, password_hash=await hash_password(new))
        await self._gw.users.revoke_tokens(user.id)
        self._gw.forget_user(user.id)
        await self._gw.audit_log.record(
            "user.password", actor=user.id, ip=self._gw.client_ip(request)
        )
        return web.json_response({"status": "password changed; sign in again"})

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response(await self._me(request))

    async def session(self, request: web.Request) -> web.Response:
        """Whether the caller is signed in: 200 either way (the web UI asks at every load,
        and not being signed in yet is no error). ``user`` is what ``/me`` answers."""
        try:
            user = await self._me(request)
        except Unauthorized:
            body: dict[str, Any] = {"authenticated": False}
        else:
            body = {"authenticated": True, "user": user}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _me(self, request: web.Request) -> dict[str, Any]:
        principal = await self._gw.principal(request)
        if principal.user_id is None:
            return {"id": None, "username": None, "role": "admin"}
        user = await self._gw.users.get(principal.user_id)
        if user is None:
            return {"id": principal.user_id, "role": "admin" if principal.is_admin else "user"}
        info = _user_json(user)
        info["usage_bytes"] = await self._gw.users.usage_bytes(user.id)
        info["quota_bytes"] = quota_limit(
            role=user.role, quota_bytes=user.quota_bytes, default=self._config.default_quota
        )
        return info


def _user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
    }
