"""The caller of a request, as the services see it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """``user_id`` None is the operator-trusted caller of a server without auth."""

    user_id: str | None
    is_admin: bool = False

    def may_access(self, owner: str | None) -> bool:
        """Owners see their own uploads; admins and the no-auth caller see everything."""
        return self.is_admin or self.user_id is None or self.user_id == owner


#: The caller of every request when auth is off (``auth = "none"``).
UNAUTHENTICATED_OPERATOR = Principal(user_id=None, is_admin=True)
