"""What the access layer tells monitoring: counters an operator can alert on.

The gateway and the auth API decide who gets in and how often; each refusal is reported
here once, with a reason from a short fixed set and never an identity (those go to the
audit log). ``tusserver.metrics.Metrics`` implements this with Prometheus counters.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NoSignals", "SecuritySignals"]


class SecuritySignals(Protocol):
    def signin_failed(self, reason: str) -> None:
        """A sign-in (login, refresh, password check) refused: ``wrong_password``,
        ``unknown_user``, ``disabled``, ``refresh_invalid``, ``refresh_reused``."""

    def throttled(self, limit: str) -> None:
        """A request refused by the rate limit ``limit`` (``logins``, ``api``, ...)."""

    def token_rejected(self, reason: str) -> None:
        """A request with a bad token: ``expired``, ``invalid``, ``revoked``, ``disabled``."""


class NoSignals:
    """Signals nobody listens to (a gateway built without metrics)."""

    def signin_failed(self, reason: str) -> None:
        return None

    def throttled(self, limit: str) -> None:
        return None

    def token_rejected(self, reason: str) -> None:
        return None
