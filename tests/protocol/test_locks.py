"""One writer per upload, lock breaking, bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.app_fixtures import OCTET, TUS, MakeClient, get_committed
from tests.pipeline.helpers import runtime
from tusserver import TusServerConfig, create_app
from tusserver.protocol.errors import LockTimeout, ServiceUnavailable
from tusserver.uploads.locks import InProcessLocker
from tusserver.uploads.pglocks import PostgresLocker, advisory_key

from .test_core import create, head, patch

Client = TestClient[Any, Any]


async def _server_read(client: Client, count: int) -> None:
    """Until the body being received has had ``count`` bytes read by the server (a fixed
    sleep was not always enough on a loaded machine)."""
    receiving = runtime(client).uploads._receiving
    for _ in range(500):
        if any(reader.received >= count for reader in receiving):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server did not read {count} bytes of the body")


async def test_a_stalled_patch_is_broken_by_a_head(client: Client) -> None:
    path = await create(client, 1024 * 1024)
    sent = asyncio.Event()
    never = asyncio.Event()

    async def stalled_body() -> Any:
        yield b"a" * 100_000
        sent.set()
        await never.wait()
        yield b"b"

    stalled = asyncio.ensure_future(
        client.patch(path, data=stalled_body(), headers={**TUS, **OCTET, "Upload-Offset": "0"})
    )
    await sent.wait()
    await _server_read(client, 100_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await head(client, path)
    assert loop.time() - started < 2.5  # well under the lock timeout
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "100000"
    r = await patch(client, path, 100_000, b"c" * 10)
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "100010"
    never.set()
    stalled_resp = await stalled
    assert stalled_resp.status == 400  # told it was taken over
    assert stalled_resp.headers["Upload-Offset"] == "100000"


async def test_concurrent_patches_never_interleave(client: Client) -> None:
    path = await create(client, 200_000)

    async def body(ch: bytes) -> Any:
        for _ in range(10):
            yield ch * 10_000
            await asyncio.sleep(0)

    results = await asyncio.gather(
        *(
            client.patch(path, data=body(ch), headers={**TUS, **OCTET, "Upload-Offset": "0"})
            for ch in (b"x", b"y")
        )
    )
    statuses = sorted(r.status for r in results)
    assert statuses[0] in (204, 400)
    data_offset = int((await head(client, path)).headers["Upload-Offset"])
    # Whatever was kept is a prefix of exactly one writer's bytes.
    got = await _read_prefix(client, path, data_offset)
    assert got in (b"x" * data_offset, b"y" * data_offset)
    assert any(r.status in (409, 400, 204) for r in results)


async def _read_prefix(client: Client, path: str, n: int) -> bytes:
    # Finish the upload with filler so it can be read back.
    if n < 200_000:
        assert (await patch(client, path, n, b"z" * (200_000 - n))).status == 204
    data = await (await get_committed(client, path)).read()
    return data[:n]


async def test_lock_wait_is_bounded() -> None:
    locker = InProcessLocker(timeout=0.2)
    released_asked = asyncio.Event()
    async with locker.lock("u", on_release=released_asked.set):
        try:
            async with locker.lock("u"):
                raise AssertionError("got a lock that was held")
        except LockTimeout as exc:
            assert exc.status == 423
            assert exc.headers["Retry-After"] == "1"
        assert released_asked.is_set()
    async with locker.lock("u"):
        pass


async def test_waiters_get_the_lock_in_turn() -> None:
    locker = InProcessLocker(timeout=5)
    order: list[int] = []

    async def worker(i: int) -> None:
        async with locker.lock("u"):
            order.append(i)
            await asyncio.sleep(0.01)
            order.append(i)

    await asyncio.gather(*(worker(i) for i in range(5)))
    assert all(order[k] == order[k + 1] for k in range(0, len(order), 2))
    assert not locker.is_locked("u")


@pytest.mark.postgres
async def test_lock_breaking_across_instances(
    aiohttp_client: Any, pg_url: str, tmp_path: Path
) -> None:
    """A HEAD on instance B breaks a stalled PATCH held by instance A (advisory lock + NOTIFY)."""

    async def instance() -> Client:
        config = TusServerConfig(
            data_dir=tmp_path, database_url=pg_url, auth="none", sweep_interval=0
        )
        client: Client = await aiohttp_client(create_app(config))
        return client

    a = await instance()
    b = await instance()
    path = await create(a, 1024 * 1024)
    sent = asyncio.Event()
    never = asyncio.Event()

    async def stalled_body() -> Any:
        yield b"a" * 50_000
        sent.set()
        await never.wait()
        yield b"b"

    stalled = asyncio.ensure_future(
        a.patch(path, data=stalled_body(), headers={**TUS, **OCTET, "Upload-Offset": "0"})
    )
    await sent.wait()
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await head(b, path)
    assert loop.time() - started < 2.5
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "50000"
    r = await patch(b, path, 50_000, b"c" * 10)
    assert r.status == 204
    never.set()
    assert (await stalled).status == 400


async def test_a_head_on_a_finished_upload_needs_no_shared_lock(make_client: MakeClient) -> None:
    """With a locker shared between processes (a lock and its release are calls to it), a
    finished upload is answered from the read that checks who asks: its state is final, no
    writer can hold it. An upload still receiving is locked as before (a stale writer is
    broken)."""
    client = await make_client(locker="file")
    uploads = runtime(client).uploads
    assert uploads.locker is not uploads._local_locker
    taken: list[str] = []
    lock = uploads.locker.lock

    def counted(upload_id: str, **kwargs: Any) -> Any:
        taken.append(upload_id)
        return lock(upload_id, **kwargs)

    uploads.locker.lock = counted  # type: ignore[method-assign]
    receiving = await create(client, 20)
    assert (await patch(client, receiving, 0, b"x" * 5)).status == 204
    finished = await create(client, 10)
    assert (await patch(client, finished, 0, b"y" * 10)).status == 204
    taken.clear()
    resp = await head(client, finished)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "10" and resp.headers["Upload-Length"] == "10"
    assert taken == []
    resp = await head(client, receiving)
    assert resp.status == 200 and resp.headers["Upload-Offset"] == "5"
    assert taken == [receiving.rsplit("/", 1)[-1]]
    # Someone else's finished upload still reads as missing.
    other = await head(client, finished.rsplit("/", 1)[0] + "/" + "0" * 32)
    assert other.status == 404


def _lock_dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


Lockers = tuple[PostgresLocker, PostgresLocker]


@pytest.fixture
async def lockers(pg_url: str) -> AsyncIterator[Lockers]:
    """Two instances' lockers on one database (the second one waits 0.3 s at most)."""
    a = PostgresLocker(_lock_dsn(pg_url), timeout=5)
    b = PostgresLocker(_lock_dsn(pg_url), timeout=0.3)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


def _record_fetches(
    monkeypatch: pytest.MonkeyPatch, locker: PostgresLocker, after: Any = None
) -> list[list[bool]]:
    """The lock (True) and unlock (False) calls of each round trip of ``locker``;
    ``after(conn)``, if given, runs once each has returned."""
    sent: list[list[bool]] = []
    real_fetch = asyncpg.Connection.fetch

    async def recorded(conn: asyncpg.Connection, query: str, *args: Any) -> Any:
        if conn is not locker._conn:
            return await real_fetch(conn, query, *args)
        sent.append(list(args[1]))
        rows = await real_fetch(conn, query, *args)
        if after is not None:
            after(conn)
        return rows

    monkeypatch.setattr(asyncpg.Connection, "fetch", recorded)
    return sent


@pytest.mark.postgres
async def test_lock_calls_of_concurrent_requests_share_round_trips(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock connection carries one statement at a time: the lock and unlock calls made
    while one is out go together in the next, each still answered on its own."""
    a, b = lockers
    sent = _record_fetches(monkeypatch, a)
    held = asyncio.Event()
    go = asyncio.Event()
    ids = [f"grouped-{i}" for i in range(20)]
    entered = 0

    async def request(upload_id: str) -> None:
        nonlocal entered
        async with a.lock(upload_id):
            entered += 1
            if entered == len(ids):
                held.set()
            await go.wait()

    tasks = [asyncio.create_task(request(u)) for u in ids]
    await asyncio.wait_for(held.wait(), 10)
    # Every one of them is held across instances: the other instance cannot take it.
    for upload_id in (ids[0], ids[-1]):
        with pytest.raises(LockTimeout):
            async with b.lock(upload_id):
                pass
    go.set()
    await asyncio.gather(*tasks)
    calls = [take for trip in sent for take in trip]
    assert calls.count(True) == calls.count(False) == len(ids)  # every call, once
    assert len(sent) < 2 * len(ids), sent  # in fewer round trips
    async with b.lock(ids[0]), b.lock(ids[-1]):  # released
        pass


@pytest.mark.postgres
async def test_a_lock_granted_after_its_request_gave_up_is_released(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = lockers
    sent = _record_fetches(monkeypatch, a)
    # The call is on its way when its request is cancelled.
    waiter = asyncio.create_task(a._try_lock(advisory_key("given-up")))
    await asyncio.sleep(0)
    assert a._sender is not None
    sender = a._sender
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.wait_for(sender, 5)  # (the unlock that follows is sent by it too)
    assert waiter.cancelled()
    assert sent == [[True], [False]]  # granted, then released
    async with asyncio.timeout(2), b.lock("given-up"):
        pass


@pytest.mark.postgres
async def test_calls_of_one_round_trip_are_made_and_answered_in_order(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Advisory locks count: an unlock of a key not held is False, a second lock of a key
    held by the same session is True and needs a second unlock."""
    a, b = lockers
    sent = _record_fetches(monkeypatch, a)
    key = advisory_key("ordered")
    calls = [a._call(False, key), a._call(True, key), a._call(True, key)]
    calls += [a._call(False, key), a._call(False, key), a._call(False, key)]
    assert [await c for c in calls] == [False, True, True, True, True, False]
    assert sent == [[False, True, True, False, False, False]]  # one round trip
    async with b.lock("ordered"):  # nothing left held
        pass


@pytest.mark.postgres
async def test_a_lock_whose_request_gave_up_before_it_was_sent_is_not_taken(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = lockers
    sent = _record_fetches(monkeypatch, a)
    gone = asyncio.create_task(a._try_lock(advisory_key("never-sent")))
    kept = asyncio.create_task(a._try_lock(advisory_key("sent")))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await kept is True
    assert gone.cancelled()
    assert sent == [[True]]
    async with b.lock("never-sent"):
        pass
    await a._unlock(advisory_key("sent"))


@pytest.mark.postgres
async def test_a_lock_answered_as_its_request_was_cancelled_is_released(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer (granted) is in, but the request is cancelled before it runs again (a
    timeout expiring at that moment): the lock is given back, not left to the session."""
    a, b = lockers
    waiter: asyncio.Task[bool] | None = None

    def cancel_when_answered(_conn: Any) -> None:
        assert waiter is not None
        asyncio.get_running_loop().call_soon(waiter.cancel)

    sent = _record_fetches(monkeypatch, a, after=cancel_when_answered)
    waiter = asyncio.create_task(a._try_lock(advisory_key("answered")))
    with pytest.raises(asyncio.CancelledError):
        await waiter
    while a._sender is not None:
        await asyncio.wait_for(asyncio.shield(a._sender), 5)
    assert sent == [[True], [False]]
    async with b.lock("answered"):
        pass


@pytest.mark.postgres
async def test_a_failed_round_trip_ends_the_session_and_tells_the_holders(
    lockers: Lockers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls of a statement that failed may have taken effect before it failed: the lock
    session is ended (all its locks released), the holders are asked to let go, and the
    callers are told the lock database failed."""
    a, b = lockers
    released = asyncio.Event()
    failing = False

    def fail(_conn: Any) -> None:
        if failing:
            raise asyncpg.exceptions.OutOfMemoryError("out of shared memory")

    _record_fetches(monkeypatch, a, after=fail)
    async with a.lock("held", on_release=released.set):
        failing = True
        with pytest.raises(ServiceUnavailable):
            async with a.lock("next"):
                pass
        await asyncio.wait_for(released.wait(), 5)
        async with b.lock("held"), b.lock("next"):  # the session's locks are gone
            pass


async def test_file_lockers_with_the_same_pid_still_break_each_others_locks(
    tmp_path: Path,
) -> None:
    """Two processes sharing a data directory may have the same PID (containers on one
    volume are all PID 1): each keeps its own lock-breaking socket, so a request on one still
    asks the holder on the other to let go instead of waiting for the lock timeout."""
    from tusserver.uploads.filelocks import FileLocker

    first = FileLocker(tmp_path / "locks", timeout=10)
    second = FileLocker(tmp_path / "locks", timeout=10)
    await first.open()
    await second.open()
    try:
        asked = asyncio.Event()
        holding = asyncio.Event()

        async def holder() -> None:
            async with first.lock("up", on_release=asked.set):
                holding.set()
                await asyncio.wait_for(asked.wait(), 10)

        held = asyncio.create_task(holder())
        await holding.wait()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with second.lock("up"):
            waited = loop.time() - started
        await held
        assert asked.is_set()
        assert waited < 5, f"waited {waited:.1f} s: the holder was never asked to let go"
    finally:
        await first.close()
        await second.close()


@pytest.mark.postgres
async def test_a_release_asked_while_the_lock_is_being_granted_is_not_lost(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests on two instances want one upload at once: A's lock is granted, and B,
    finding it taken, asks A to let go before A has recorded its holder (the grant's answer
    and B's notification reach A close together). The request must still be asked: B gets
    the upload well within its lock_timeout, instead of a 423 after it while A's writer
    goes on (2 in 40 simultaneous PATCHes on two instances did so)."""
    a = PostgresLocker(_lock_dsn(pg_url), timeout=5)
    b = PostgresLocker(_lock_dsn(pg_url), timeout=4)
    await a.open()
    await b.open()
    granted = asyncio.Event()
    go_on = asyncio.Event()
    real_try_lock = a._try_lock

    async def slow_grant(key: int) -> bool:
        ok = await real_try_lock(key)
        if ok:
            granted.set()
            await go_on.wait()  # granted, its holder not recorded yet
        return ok

    monkeypatch.setattr(a, "_try_lock", slow_grant)
    notified = asyncio.Event()
    real_send_notify = b._send_notify

    async def send_notify(upload_id: str) -> None:
        await real_send_notify(upload_id)
        notified.set()

    monkeypatch.setattr(b, "_send_notify", send_notify)
    released = asyncio.Event()

    async def holder() -> None:
        async with a.lock("u", on_release=released.set):
            await asyncio.wait_for(released.wait(), 10)  # a writer lets go once asked

    loop = asyncio.get_running_loop()

    async def newcomer() -> float:
        async with b.lock("u"):
            return loop.time()

    try:
        held = asyncio.create_task(holder())
        await asyncio.wait_for(granted.wait(), 5)
        wanted = asyncio.create_task(newcomer())
        await asyncio.wait_for(notified.wait(), 5)
        await asyncio.sleep(0.3)  # the notification has reached A (and found no holder)
        started = loop.time()
        go_on.set()
        took = await wanted
        assert took - started < 2.0, "the holder was not asked to let go"
        assert released.is_set()
        await held
    finally:
        await a.close()
        await b.close()
