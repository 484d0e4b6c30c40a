"""Deadlines on calls to a PostgreSQL server that may stop answering.

A PostgreSQL that stops answering without closing its connections (a network partition, a
frozen host, a stopped process) leaves every call on them waiting: TCP says nothing is wrong.
So each call is bounded here, and what happens when its bound passes matters as much:

- the connection is **terminated** (its socket closed at once, every call on it failed), never
  used again and never closed gracefully. Cancelling the call instead is not enough: asyncpg
  then sends a cancel request over a new connection and keeps the old one waiting for the
  server to acknowledge it, and its next statement, or a graceful close (a Terminate message
  it waits to see answered), waits for a server that says nothing.
- the caller gets :class:`NoAnswer` at once (the statement fails as soon as its socket is
  closed), and a new connection is made for the next call: once the server answers again the
  service recovers by itself.

What a call may have done before its bound passed is unknown (a COMMIT sent, its answer lost):
callers treat it as failed and tell their own callers so, never as done.

These helpers serve the asyncpg connections held outside the catalog's pool (the upload
locker's, the cache bus's); the catalog's units of work have their own deadline on the same
principle (:class:`tusserver.catalog.db.PostgresRunner`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

__all__ = ["NoAnswer", "Terminable", "close_within", "terminate", "within"]

T = TypeVar("T")


class Terminable(Protocol):
    """What is needed of a connection (an ``asyncpg.Connection``) to end it at once."""

    def is_closed(self) -> bool: ...

    def terminate(self) -> None: ...


class NoAnswer(TimeoutError):
    """The server did not answer within the deadline; the connection was terminated."""


def terminate(conn: Terminable | None) -> None:
    """Close ``conn``'s socket now, without a word to the server: every call waiting on it
    fails at once, and the server ends the session (releasing its locks) when it sees the
    socket closed."""
    if conn is not None and not conn.is_closed():
        conn.terminate()


async def within(seconds: float, call: Awaitable[T], conn: Terminable) -> T:
    """``call`` (one call on ``conn``), if it completes within ``seconds``.

    Otherwise ``conn`` is terminated, which fails the call at once, and :class:`NoAnswer` is
    raised. A caller cancelled while it waits terminates ``conn`` too (asyncpg would
    otherwise send a cancel request and keep the connection waiting for its answer).
    """
    loop = asyncio.get_running_loop()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        terminate(conn)

    timer = loop.call_later(max(0.0, seconds), expire)
    try:
        return await call
    except asyncio.CancelledError:
        terminate(conn)
        raise
    except Exception as exc:
        if expired:
            raise NoAnswer(f"no answer from the database within {seconds:g} s") from exc
        raise
    finally:
        timer.cancel()


async def close_within(
    conn: Terminable, close: Callable[[], Awaitable[None]], seconds: float, *, busy: bool
) -> None:
    """End ``conn``: gracefully with ``close`` (its ``close``) within ``seconds``, else, or
    when a call is in flight on it (``busy``), by terminating it. Never raises for the
    connection's sake: what closing is for (the socket released, the session and its locks
    ended) is done either way.

    A busy connection is never closed gracefully: asyncpg's ``close()`` would first send a
    cancel request for the call in flight and wait, without bound, for the server's answer,
    and a connection that has begun closing can no longer be aborted, so the call in flight
    would never fail either."""
    if not busy:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(seconds):
                await close()
    terminate(conn)
