"""Users, refresh tokens and the audit log in the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Select, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from tusserver.cache import USERS, Invalidator, NotifyOnly
from tusserver.catalog import fastsql
from tusserver.catalog.db import Database
from tusserver.catalog.schema import audit_log, refresh_tokens, users
from tusserver.catalog.usage import used_bytes

__all__ = [
    "AuditLog",
    "User",
    "UserExists",
    "UserRepository",
    "fold_username",
    "valid_username",
]

_log = structlog.get_logger("tusserver.audit")
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: Built once: fastsql keeps its compiled form by statement.
_INSERT_AUDIT = insert(audit_log)


def valid_username(name: str) -> bool:
    return _USERNAME.fullmatch(name) is not None


def fold_username(name: str) -> str:
    """A username without regard to case: what makes two names the same account name.

    Unique in the catalog (``users.username_folded``), looked up at sign-in, and the key of
    the sign-in rate-limit buckets, so ``Alice`` and ``alice`` are one name everywhere.
    Valid usernames are ASCII, where this is ``lower()``; the buckets also fold names that
    are not valid (any string a client sends), hence Unicode case folding.
    """
    return name.casefold()


class UserExists(Exception):
    """The username, or one that differs from it only in case, is taken."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    password_hash: str
    role: str
    disabled: bool
    quota_bytes: int | None
    created_at: dt.datetime
    tokens_valid_after: dt.datetime | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        role=row["role"],
        disabled=row["disabled"],
        quota_bytes=row["quota_bytes"],
        created_at=row["created_at"],
        tokens_valid_after=row["tokens_valid_after"],
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UserRepository:
    """Users in the catalog. A change to a user (disabled, role, password, revocation) goes
    through the invalidator: every instance's cached copy is dropped when it commits (on
    PostgreSQL also for a process without a cache of its own, such as the CLI)."""

    def __init__(self, db: Database, *, invalidator: Invalidator | None = None) -> None:
        self._db = db
        self.invalidator: Invalidator = invalidator or NotifyOnly()

    async def create(
        self, username: str, password_hash: str, *, role: str = "user", quota: int | None = None
    ) -> User:
        uid = secrets.token_hex(16)
        stmt = insert(users).values(
            id=uid,
            username=username,
            # Its unique index refuses a name that differs from a taken one only in case,
            # also when two such registrations race.
            username_folded=fold_username(username),
            password_hash=password_hash,
            role=role,
            disabled=False,
            quota_bytes=quota,
            created_at=_now(),
        )
        try:
            await self._db.write(lambda conn: conn.execute(stmt))
        except IntegrityError:
            raise UserExists(username) from None
        user = await self.get(uid)
        assert user is not None
        return user

    async def get(self, user_id: str) -> User | None:
        return await self._one(select(users).where(users.c.id == user_id))

    async def by_name(self, username: str) -> User | None:
        """The user of that name, without regard to case; the exact spelling first.

        Two accounts may differ only in case when both date from before migration 0013:
        the older one holds the folded name (and answers to any case), the other one only
        to its exact spelling.
        """
        query = select(users).where(
            or_(users.c.username == username, users.c.username_folded == fold_username(username))
        )

        def work(conn: Connection) -> User | None:
            found = [_user(row) for row in conn.execute(query).mappings()]
            exact = [u for u in found if u.username == username]
            return next(iter(exact or found), None)

        return await self._db.read(work, quick=True)

    async def _one(self, query: Select[Any]) -> User | None:
        def work(conn: Connection) -> User | None:
            row = conn.execute(query).mappings().first()
            return None if row is None else _user(row)

        return await self._db.read(work, quick=True)

    async def list(self) -> list[User]:
        query = select(users).order_by(users.c.username)
        return await self._db.read(lambda conn: [_user(r) for r in conn.execute(query).mappings()])

    async def update(self, user_id: str, **values: Any) -> None:
        stmt = update(users).where(users.c.id == user_id).values(**values)
        await self.invalidator.run(self._db, lambda conn: conn.execute(stmt), (USERS, user_id))

    async def revoke_tokens(self, user_id: str) -> None:
        """Refuse every token issued so far and revoke the refresh tokens."""
        stop_tokens = update(users).where(users.c.id == user_id).values(tokens_valid_after=_now())
        revoke = (
            update(refresh_tokens).where(refresh_tokens.c.user_id == user_id).values(revoked=True)
        )

        def work(conn: Connection) -> None:
            conn.execute(stop_tokens)
            conn.execute(revoke)

        await self.invalidator.run(self._db, work, (USERS, user_id))

    async def usage_bytes(self, user_id: str) -> int:
        """Bytes the service holds for the user: the catalog's one accounting query."""
        return await self._db.read(lambda conn: used_bytes(conn, user_id))

    # --- refresh tokens ---------------------------------------------------------------------

    async def store_refresh(
        self, jti: str, user_id: str, expires_at: dt.datetime, *, family: str | None = None
    ) -> None:
        """Keep a refresh token a login issued: it starts a family (a session) of its own."""
        stmt = insert(refresh_tokens).values(
            jti=jti,
            user_id=user_id,
            expires_at=expires_at,
            revoked=False,
            created_at=_now(),
            family=family or jti,
        )
        await self._db.write(lambda conn: conn.execute(stmt))

    async def rotate_refresh(
        self, jti: str, user_id: str, new_jti: str, new_expires_at: dt.datetime
    ) -> str:
        """Use the refresh token ``jti`` of ``user_id`` once, replacing it with ``new_jti``.

        Returns ``"ok"`` (the new token is stored, in the same family), ``"reused"`` (the
        token was already rotated: someone holds a copy, so the whole family is revoked,
        the token it was rotated into included) or ``"invalid"`` (unknown, revoked,
        expired or someone else's). Consuming the old token and storing the new one is one
        transaction: a reuse that revokes the family cannot miss the new token.
        """

        def use(conn: Connection) -> tuple[str, str | None]:
            row = conn.execute(select(refresh_tokens).where(refresh_tokens.c.jti == jti))
            found = row.mappings().first()
            if found is None or found["user_id"] != user_id:
                return "invalid", None
            family = str(found["family"] or found["jti"])
            if not found["revoked"] and found["expires_at"] >= _now():
                used = conn.execute(
                    update(refresh_tokens)
                    .where(refresh_tokens.c.jti == jti, refresh_tokens.c.revoked.is_(False))
                    .values(revoked=True, replaced_by=new_jti)
                )
                if used.rowcount == 1:
                    conn.execute(
                        insert(refresh_tokens).values(
                            jti=new_jti,
                            user_id=user_id,
                            expires_at=new_expires_at,
                            revoked=False,
                            created_at=_now(),
                            family=family,
                        )
                    )
                    return "ok", family
                return "reused", family  # a concurrent use of the same token won
            if found["replaced_by"] is None:
                return "invalid", None  # expired, or revoked by a sign-out: no theft signal
            return "reused", family

        outcome, family = await self._db.write(use)
        if outcome == "reused":
            # One of the two holders is not the owner: revoke the session, in a transaction
            # of its own, after the winner of a race has committed its new token.
            revoke = update(refresh_tokens).where(refresh_tokens.c.family == family)
            await self._db.write(lambda conn: conn.execute(revoke.values(revoked=True)))
        return outcome

    async def revoke_refresh(self, jti: str) -> None:
        stmt = update(refresh_tokens).where(refresh_tokens.c.jti == jti).values(revoked=True)
        await self._db.write(lambda conn: conn.execute(stmt))


class AuditLog:
    """Append-only record of security-relevant actions (never passwords or tokens).

    ``record`` writes at once (logins, deletions, admin actions); ``record_soon`` queues
    frequent, low-stakes entries (upload creations) that a background task writes in batches,
    so the upload hot path pays no extra transaction. Every entry is also a log line.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                await self.flush()
            except Exception:
                _log.exception("audit flush failed")

    async def flush(self) -> None:
        """Write the queued entries; returns once they (and any batch being written by the
        background task meanwhile) are in the table."""
        async with self._flushing:
            if not self._queue:
                return
            batch, self._queue = self._queue, []
            await self._db.write(lambda conn: fastsql.execute_many(conn, _INSERT_AUDIT, batch))

    def record_soon(self, action: str, *, actor: str | None, **kw: Any) -> None:
        entry = self._entry(action, actor=actor, **kw)
        _log.info("audit", **{k: v for k, v in entry.items() if k != "at"})
        self._queue.append(entry)

    @staticmethod
    def _entry(
        action: str,
        *,
        actor: str | None,
        outcome: str = "ok",
        target: str | None = None,
        ip: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        def clean(v: str | None, size: int) -> str | None:
            return None if v is None else v.replace("\x00", "\\x00")[:size]

        if ip is None:
            # Decided below the HTTP layer (the lifecycle): the address the gateway bound.
            bound = structlog.contextvars.get_contextvars().get("client_ip")
            ip = bound if isinstance(bound, str) else None
        return {
            "at": _now(),
            "actor": clean(actor, 64),
            "action": action,
            "target": clean(target, 255),
            "outcome": outcome,
            "ip": clean(ip, 64),
            "detail": dict(detail or {}),
        }

    async def record(
        self,
        action: str,
        *,
        actor: str | None,
        outcome: str = "ok",
        target: str | None = None,
        ip: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        entry = self._entry(
            action, actor=actor, outcome=outcome, target=target, ip=ip, detail=detail
        )
        _log.info("audit", **{k: v for k, v in entry.items() if k != "at"})
        await self._db.write(lambda conn: conn.execute(_INSERT_AUDIT, entry))

    async def search(
        self,
        *,
        users: Sequence[str] = (),
        action: str | None = None,
        outcome: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        ip: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Entries matching every filter given, the newest ``limit`` of them, oldest first.

        ``users``: ids or names; an entry matches when one is its actor or its target (a
        failed login names the user it tried as target). ``action``: exact, or a prefix
        ending in ``*`` (``auth.*``).
        """
        query = select(audit_log)
        if users:
            query = query.where(
                or_(audit_log.c.actor.in_(list(users)), audit_log.c.target.in_(list(users)))
            )
        if action:
            if action.endswith("*"):
                prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                query = query.where(audit_log.c.action.like(prefix + "%", escape="\\"))
            else:
                query = query.where(audit_log.c.action == action)
        if outcome:
            query = query.where(audit_log.c.outcome == outcome)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        if until is not None:
            query = query.where(audit_log.c.at < until)
        if ip:
            query = query.where(audit_log.c.ip == ip)
        query = query.order_by(audit_log.c.id.desc()).limit(limit)
        rows = await self._db.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])
        rows.reverse()
        return rows

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        return await self._db.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])
