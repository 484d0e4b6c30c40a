"""Handing an outcome computed elsewhere (a thread, a group of units) to an awaiting caller."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["settle"]


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """On the future's loop: ``value`` as its result (``ok``) or its exception, unless the
    caller gave up (cancelled) meanwhile."""
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
