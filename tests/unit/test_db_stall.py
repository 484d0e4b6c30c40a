"""A PostgreSQL that stops answering (tests/stalling.py: connections stay open, nothing comes
back): units of work of the catalog, the upload locker and the cache bus each fail within
their deadline, their connections are terminated (never reused), and once the server answers
again they work again, on new connections. Migrations are not bounded by the deadline.

Every test runs twice (the ``stalling_postgres`` fixture): with what was sent during the stall
held back and delivered afterwards (a partition that heals, a host that resumes), and with
it dropped (a connection used during the stall can never be used again)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection

from tests.stalling import StalledPostgres
from tusserver.cache import Cache, PostgresBus
from tusserver.catalog.db import Database, create_database
from tusserver.catalog.migrate import _migrate
from tusserver.errors import CatalogUnavailable
from tusserver.uploads.pglocks import PostgresLocker

pytestmark = pytest.mark.postgres

#: The deadline of these tests, and what an answer may take beyond it on a loaded machine.
DEADLINE = 1.0
MARGIN = 2.0


def _select(conn: Connection) -> int:
    return int(conn.execute(text("SELECT 1")).scalar_one())


def _kinds(db: Database) -> dict[str, Callable[[], Awaitable[int]]]:
    """A unit of each way the runner runs them: quick reads (autocommit), reads, quick
    writes (grouped), writes."""
    return {
        "quick read": lambda: db.read(_select, quick=True),
        "read": lambda: db.read(_select),
        "quick write": lambda: db.write(_select, quick=True),
        "write": lambda: db.write(_select),
    }


async def _timed(call: Awaitable[Any]) -> tuple[Any, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result: Any = await asyncio.wait_for(call, 60)
    except Exception as exc:
        result = exc
    return result, loop.time() - started


async def test_units_past_their_deadline_fail_and_leave_no_poisoned_connection(
    stalling_postgres: StalledPostgres,
) -> None:
    db = create_database(stalling_postgres.url, timeout=DEADLINE, pool_size=3)
    try:
        kinds = _kinds(db)
        # Warm: connections kept idle of both kinds, and some in the pool.
        for _ in range(3):
            assert await asyncio.gather(*(k() for k in kinds.values())) == [1] * 4

        stalling_postgres.proxy.stalled = True
        try:
            # More units than the pool holds (2 x 3): some wait for a connection.
            calls = [k() for k in kinds.values() for _ in range(5)]
            outcomes = await asyncio.gather(*(_timed(c) for c in calls))
        finally:
            stalling_postgres.proxy.stalled = False
        for failure, took in outcomes:
            assert isinstance(failure, CatalogUnavailable), failure
            assert failure.status == 503 and failure.headers["Retry-After"].isdigit()
            assert took < DEADLINE + MARGIN

        # Answered again: unit after unit, each at once (a connection left over from the
        # stall would hold one for the deadline, or answer it with another's reply).
        for _ in range(10):
            for name, kind in kinds.items():
                result, took = await _timed(kind())
                assert result == 1, (name, result)
                assert took < DEADLINE, name
        assert await asyncio.gather(*(k() for k in kinds.values() for _ in range(10))) == [1] * 40
    finally:
        await db.dispose()


async def test_a_unit_cancelled_from_outside_ends_at_once(
    stalling_postgres: StalledPostgres,
) -> None:
    """A caller's own bound (the readiness probe's, say) cancels a unit waiting on a silent
    server: it ends then, not when the catalog's deadline passes (its connection is
    terminated, not left waiting for the answer to a cancel request)."""
    db = create_database(stalling_postgres.url, timeout=60)
    try:
        assert await db.read(_select) == 1
        assert await db.read(_select, quick=True) == 1
        stalling_postgres.proxy.stalled = True
        try:
            for kind in _kinds(db)["read"], _kinds(db)["quick read"]:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await kind()
                assert loop.time() - started < 0.5 + MARGIN
        finally:
            stalling_postgres.proxy.stalled = False
        for _ in range(5):
            assert await asyncio.wait_for(db.read(_select), DEADLINE) == 1
            assert await asyncio.wait_for(db.read(_select, quick=True), DEADLINE) == 1
    finally:
        await db.dispose()


async def test_a_shorter_bound_of_its_own_ends_a_unit_sooner(
    stalling_postgres: StalledPostgres,
) -> None:
    """A unit may ask for its own bound (the readiness probe does): one shorter than the
    catalog's, started while units under the catalog's are waiting, ends at its own."""
    db = create_database(stalling_postgres.url, timeout=30)
    try:
        assert await db.read(_select) == 1
        stalling_postgres.proxy.stalled = True
        try:
            waiting = asyncio.ensure_future(db.read(_select))  # under the catalog's 30 s
            await asyncio.sleep(0.1)
            failure, took = await _timed(db.read(_select, bound=0.5))
            assert isinstance(failure, CatalogUnavailable), failure
            assert 0.5 <= took < 0.5 + MARGIN
            assert not waiting.done()
        finally:
            stalling_postgres.proxy.stalled = False
        if stalling_postgres.proxy_holds:
            assert await asyncio.wait_for(waiting, 10) == 1  # its answer came late, not lost
        else:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
        assert await asyncio.wait_for(db.read(_select), DEADLINE) == 1
    finally:
        await db.dispose()


async def test_a_migration_is_not_bounded_by_the_deadline(pg_url: str) -> None:
    """A migration step may run longer than database_timeout (a table rewrite); any other
    unit that does fails."""
    db = create_database(pg_url, timeout=0.5)
    try:
        with pytest.raises(CatalogUnavailable):
            await db.write(lambda conn: conn.execute(text("SELECT pg_sleep(1.5)")))

        def long_step(conn: Connection) -> None:
            conn.execute(text("SELECT pg_sleep(1.5)"))

        await _migrate(db, long_step)
        assert await db.read(_select) == 1
    finally:
        await db.dispose()


async def test_the_upload_locker_fails_within_its_deadline_and_reconnects(
    stalling_postgres: StalledPostgres, pg_url: str
) -> None:
    """A lock the lock database does not answer fails with 503 in time; the session is
    ended, so the holders are asked to let go (their locks go with it), and leaving a lock
    does not wait for the silent server. Once it answers, locks work again."""
    locker = PostgresLocker(stalling_postgres.dsn, timeout=5, database_timeout=DEADLINE)
    other = PostgresLocker(pg_url.replace("+asyncpg", ""), timeout=10)
    await locker.open()
    await other.open()
    released = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with locker.lock("stall-held", on_release=released.set):
            stalling_postgres.proxy.stalled = True
            try:
                started = loop.time()
                with pytest.raises(CatalogUnavailable) as failed:
                    async with locker.lock("stall-other"):
                        pass
                assert loop.time() - started < DEADLINE + MARGIN
                assert failed.value.headers["Retry-After"].isdigit()
                await asyncio.wait_for(released.wait(), MARGIN)  # the session was ended
                started = loop.time()
            finally:
                stalling_postgres.proxy.stalled = False
        assert loop.time() - started < DEADLINE + MARGIN  # (the unlock's wait included)

        for i in range(5):
            async with asyncio.timeout(DEADLINE), locker.lock(f"stall-after-{i}"):
                pass
        # The ended session's locks are free (once the server has seen it closed).
        async with other.lock("stall-held"), other.lock("stall-other"):
            pass
    finally:
        await locker.close()
        await other.close()


async def test_the_cache_bus_suspends_the_cache_and_listens_again(
    stalling_postgres: StalledPostgres,
) -> None:
    """The listener that stops being answered is dropped within its health timeout (the cache
    is bypassed meanwhile) and connects again once the server answers; stopping the bus
    during a stall, a health check waiting, ends within its deadline."""
    cache = Cache()
    bus = PostgresBus(
        cache,
        stalling_postgres.dsn,
        timeout=DEADLINE,
        health_interval=0.2,
        health_timeout=0.5,
        reconnect_delay=0.05,
        max_reconnect_delay=0.2,
    )
    await bus.start()
    loop = asyncio.get_running_loop()
    try:
        assert bus.listening and cache.active
        stalling_postgres.proxy.stalled = True
        try:
            started = loop.time()
            assert await bus.sync() is False
            assert loop.time() - started < 0.5 + MARGIN
            assert (bus.listening, cache.active) == (False, False)
        finally:
            stalling_postgres.proxy.stalled = False
        async with asyncio.timeout(10):
            while not (bus.listening and await bus.sync()):
                await asyncio.sleep(0.05)
        assert cache.active

        stalling_postgres.proxy.stalled = True
        probe = asyncio.create_task(bus.sync())  # a query out on the listener connection
        await asyncio.sleep(0.1)
        started = loop.time()
        await asyncio.wait_for(bus.stop(), 30)
        assert loop.time() - started < DEADLINE + MARGIN
        assert await probe is False
    finally:
        stalling_postgres.proxy.stalled = False
        await bus.stop()
