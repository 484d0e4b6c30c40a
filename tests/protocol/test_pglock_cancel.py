"""A request cancelled while its lock-break request (NOTIFY) is on its way must not end the
instance's shared lock session: every other upload lock of the instance would be dropped
and its holders told to stop while they still write."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tusserver.errors import LockTimeout
from tusserver.uploads.pglocks import PostgresLocker


def _dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.mark.postgres
async def test_a_cancelled_lock_break_request_keeps_the_instance_s_other_locks(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = PostgresLocker(_dsn(pg_url), timeout=5)
    b = PostgresLocker(_dsn(pg_url), timeout=0.3)
    await a.open()
    await b.open()
    try:
        real_execute = asyncpg.Connection.execute
        notifying = asyncio.Event()

        async def slow_notify(conn: asyncpg.Connection, query: str, *args: Any) -> Any:
            if conn is a._conn and "pg_notify" in query:
                notifying.set()
                await asyncio.sleep(0.5)  # a round trip that takes a while (a busy server)
            return await real_execute(conn, query, *args)

        monkeypatch.setattr(asyncpg.Connection, "execute", slow_notify)

        released = asyncio.Event()
        b_holds = asyncio.Event()
        b_done = asyncio.Event()

        async def other_instance_holds() -> None:
            async with b.lock("held-by-b"):
                b_holds.set()
                await b_done.wait()

        holder_b = asyncio.create_task(other_instance_holds())
        await b_holds.wait()

        async with a.lock("unrelated-upload", on_release=released.set):
            # Another request on instance A wants the upload B holds; its client goes away
            # (aiohttp cancels the handler) while the NOTIFY is out.
            async def impatient() -> None:
                async with a.lock("held-by-b"):
                    pass

            req = asyncio.create_task(impatient())
            await asyncio.wait_for(notifying.wait(), 5)
            req.cancel()
            with pytest.raises(asyncio.CancelledError):
                await req
            await asyncio.sleep(0.2)
            # The unrelated upload's writer was told to stop, and its lock is gone:
            assert not released.is_set(), "holder of an unrelated upload was interrupted"
            with pytest.raises(LockTimeout):  # A still holds it
                async with b.lock("unrelated-upload"):
                    pass
        b_done.set()
        await holder_b
    finally:
        await a.close()
        await b.close()
