"""The cap on request bodies one user sends at once (``max_bodies_per_user``).

Every entry path takes its place in ``UploadService.receive``, under the upload's lock: one
body more than the cap is refused with 429 and Retry-After before any of it is read, a place
is given back however the body ends, and a client resuming its own stalled upload is not
refused because of the request it left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from auth import Principal
from auth.gateway import Gateway, OpenGate
from auth.ratelimit import MemoryRateLimiter
from tests.app_fixtures import OCTET, TUS, MakeClient
from tusserver.errors import TooManyRequests
from tusserver.http_io import caller_of

from .helpers import Client, auth_client, bearer, create_upload, make_users, patch, runtime
from .test_signin_hardening import audit_entries, metric

DRAFT = {"Upload-Draft-Interop-Version": "8"}
BOUNDARY = "cap-boundary-5d1e"
#: What a held body sends before it stalls, and what it sends when told to go on.
FIRST, REST = b"h" * 1000, b"t" * 1000
SIZE = len(FIRST) + len(REST)


def _held(client: Client, user_id: str) -> int:
    return runtime(client).gateway.slots_held("bodies", user_id)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


def _path(location: str) -> str:
    return location[location.index("/uploads/") :]


class Trickle:
    """A body that sends ``FIRST``, then nothing until :meth:`go_on` (then ``REST``); a form
    wraps it in its part's headers and closing boundary."""

    def __init__(self) -> None:
        self._go = asyncio.Event()
        self.ended = False

    async def body(self, head: bytes = b"", tail: bytes = b"") -> AsyncIterator[bytes]:
        yield head + FIRST
        await self._go.wait()
        yield REST + tail
        self.ended = True

    def go_on(self) -> None:
        self._go.set()


# --- the entry paths: each sends a body and says which upload it went to ----------------------

Sent = tuple[aiohttp.ClientResponse, str | None]


async def _tus_patch(client: Client, token: str, body: Trickle) -> Sent:
    path = await create_upload(client, token, SIZE)
    resp = await client.patch(
        path, data=body.body(), headers={**TUS, **OCTET, **bearer(token), "Upload-Offset": "0"}
    )
    return resp, path


async def _tus_creation(client: Client, token: str, body: Trickle) -> Sent:
    resp = await client.post(
        "/uploads/",
        data=body.body(),
        headers={**TUS, **OCTET, **bearer(token), "Upload-Length": str(SIZE)},
    )
    return resp, _path(resp.headers["Location"]) if "Location" in resp.headers else None


async def _ietf_append(client: Client, token: str, body: Trickle) -> Sent:
    resp = await client.post(
        "/uploads/", data=b"", headers={**DRAFT, **bearer(token), "Upload-Complete": "?0"}
    )
    assert resp.status == 201, await resp.text()
    path = _path(resp.headers["Location"])
    resp = await client.patch(
        path,
        data=body.body(),
        headers={
            **DRAFT,
            **bearer(token),
            "Content-Type": "application/partial-upload",
            "Upload-Offset": "0",
            "Upload-Complete": "?0",
        },
    )
    return resp, path


async def _ietf_creation(client: Client, token: str, body: Trickle) -> Sent:
    resp = await client.post(
        "/uploads/",
        data=body.body(),
        headers={**DRAFT, **bearer(token), "Upload-Complete": "?0"},
    )
    return resp, _path(resp.headers["Location"]) if "Location" in resp.headers else None


async def _form(client: Client, token: str, body: Trickle) -> Sent:
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="held.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    resp = await client.post(
        "/api/v1/upload",
        data=body.body(head, f"\r\n--{BOUNDARY}--\r\n".encode()),
        headers={**bearer(token), "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    return resp, None


async def _raw(client: Client, token: str, body: Trickle) -> Sent:
    resp = await client.post(
        "/api/v1/upload?filename=held.bin",
        data=body.body(),
        headers={**bearer(token), "Content-Type": "application/octet-stream"},
    )
    return resp, None


PATHS: dict[str, Callable[[Client, str, Trickle], Awaitable[Sent]]] = {
    "tus-patch": _tus_patch,
    "tus-creation-with-upload": _tus_creation,
    "ietf-append": _ietf_append,
    "ietf-creation-with-content": _ietf_creation,
    "form-upload": _form,
    "raw-upload": _raw,
}
NAMES = list(PATHS)


async def _offset(client: Client, token: str, path: str) -> int:
    resp = await client.head(path, headers={**TUS, **bearer(token)})
    assert resp.status == 200, resp.status
    return int(resp.headers["Upload-Offset"])


async def _refused(resp: aiohttp.ClientResponse, name: str) -> None:
    """A 429 with Retry-After: for a form, the file's entry (the form answers 400 when no
    file was taken) and the answer's Retry-After."""
    assert 1 <= int(resp.headers["Retry-After"]) <= 60, resp.headers
    if name == "form-upload":
        assert resp.status == 400, await resp.text()
        (entry,) = (await resp.json())["files"]
        assert (entry["status_code"], entry["error"]) == (429, "rate_limited"), entry
        return
    assert resp.status == 429, await resp.text()
    assert "at once" in await resp.text()


@contextlib.asynccontextmanager
async def _holding(
    client: Client, token: str, user_id: str, count: int, send: Any = _tus_patch
) -> AsyncIterator[list[Trickle]]:
    """``count`` bodies of ``user_id`` being received (each stalled after its first bytes);
    at the end they go on and are checked to succeed."""
    bodies = [Trickle() for _ in range(count)]
    tasks = []
    for i, body in enumerate(bodies):
        tasks.append(asyncio.ensure_future(send(client, token, body)))
        await _until(lambda n=i + 1: _held(client, user_id) == n, f"{i + 1} bodies held")
    try:
        yield bodies
    finally:
        for body in bodies:
            body.go_on()
        for task in tasks:
            resp, _ = await asyncio.wait_for(task, 20)
            assert resp.status < 300, await resp.text()


# --- the cap ----------------------------------------------------------------------------------


async def test_a_body_over_the_cap_is_refused_before_it_is_read(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_bodies_per_user=2)
    users = await make_users(client, owner="user", other="user")
    owner, other = users["owner"], users["other"]
    before = await metric(client, "tusserver_throttled_requests_total", limit="bodies")
    async with _holding(client, owner.access, owner.id, 2):
        third = Trickle()
        # Answered while its body is still waiting to be sent: nothing of it was read.
        resp, path = await asyncio.wait_for(_tus_patch(client, owner.access, third), 10)
        await _refused(resp, "tus-patch")
        assert not third.ended
        third.go_on()
        assert path is not None and await _offset(client, owner.access, path) == 0
        assert _held(client, owner.id) == 2
        # Someone else's bodies have places of their own.
        async with _holding(client, other.access, other.id, 2):
            assert _held(client, owner.id) == 2
        path = await create_upload(client, other.access, 3)
        assert (await patch(client, other.access, path, 0, b"abc")).status == 204
    assert _held(client, owner.id) == 0 and _held(client, other.id) == 0
    # Counted and audited like a rate limit's refusal.
    after = await metric(client, "tusserver_throttled_requests_total", limit="bodies")
    assert after == before + 1
    throttled = [e for e in await audit_entries(client, "rate_limit") if e["actor"] == owner.id]
    assert [e["detail"] for e in throttled] == [{"limit": "bodies"}]
    # Every body ended: the owner's places are free again.
    path = await create_upload(client, owner.access, 3)
    assert (await patch(client, owner.access, path, 0, b"abc")).status == 204


@pytest.mark.parametrize("name", NAMES)
async def test_every_entry_path_takes_a_place_of_the_same_cap(
    make_client: MakeClient, name: str
) -> None:
    """Each entry path is refused when the cap is held by another one (the next in the list),
    and holds a place that refuses the next one: one cap, whatever the path."""
    client = await auth_client(make_client, max_bodies_per_user=1)
    owner = (await make_users(client, owner="user"))["owner"]
    holder = PATHS[NAMES[(NAMES.index(name) + 1) % len(NAMES)]]
    async with _holding(client, owner.access, owner.id, 1, send=holder):
        body = Trickle()
        resp, path = await asyncio.wait_for(PATHS[name](client, owner.access, body), 10)
        await _refused(resp, name)
        assert not body.ended
        body.go_on()
        if path is not None:
            assert await _offset(client, owner.access, path) == 0
        if name == "form-upload":
            # The form's file was dropped: nothing of it is kept.
            (entry,) = (await resp.json())["files"]
            dropped = f"/uploads/{entry['upload_id']}"
            gone = await client.head(dropped, headers={**TUS, **bearer(owner.access)})
            assert gone.status in (404, 410)
    # ... and once that body ended, this path holds a place itself.
    async with _holding(client, owner.access, owner.id, 1, send=PATHS[name]):
        resp, _ = await asyncio.wait_for(_tus_patch(client, owner.access, Trickle()), 10)
        await _refused(resp, "tus-patch")


async def test_without_authentication_there_is_no_cap(make_client: MakeClient) -> None:
    """auth = "none": every request comes from the front gateway, as one caller; the cap (like
    the rate limits) is the gateway's business."""
    client = await make_client(max_bodies_per_user=1)
    bodies = [Trickle() for _ in range(3)]
    tasks = [asyncio.ensure_future(_tus_patch(client, "", b)) for b in bodies]
    service = runtime(client).uploads
    await _until(lambda: sum(r.received > 0 for r in service._receiving) == 3, "3 bodies read")
    for body in bodies:
        body.go_on()
    for task in tasks:
        resp, _ = await asyncio.wait_for(task, 20)
        assert resp.status == 204, await resp.text()


# --- a place is given back however the body ends ------------------------------------------------


async def _one_more_goes_through(client: Client, token: str) -> None:
    path = await create_upload(client, token, 3)
    resp = await patch(client, token, path, 0, b"abc")
    assert resp.status == 204, await resp.text()


async def test_a_place_is_free_again_after_a_refused_body(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_bodies_per_user=1)
    owner = (await make_users(client, owner="user"))["owner"]
    token = owner.access
    path = await create_upload(client, token, 10)
    assert (await patch(client, token, path, 5, b"abc")).status == 409  # a wrong offset
    assert _held(client, owner.id) == 0
    resp = await client.patch(
        path,
        data=b"abc",
        headers={
            **TUS,
            **OCTET,
            **bearer(token),
            "Upload-Offset": "0",
            "Upload-Checksum": "sha1 " + "A" * 27 + "=",
        },
    )
    assert resp.status == 460, await resp.text()  # a checksum that does not match
    assert _held(client, owner.id) == 0
    big = b"x" * 11
    assert (await patch(client, token, path, 0, big)).status == 413  # past the length
    assert _held(client, owner.id) == 0
    await _one_more_goes_through(client, token)


async def test_a_place_is_free_again_when_the_client_goes_away(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_bodies_per_user=1)
    owner = (await make_users(client, owner="user"))["owner"]
    body = Trickle()
    task = asyncio.ensure_future(_tus_patch(client, owner.access, body))
    await _until(lambda: _held(client, owner.id) == 1, "the body holds its place")
    task.cancel()  # the client closes its connection mid-body
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await _until(lambda: _held(client, owner.id) == 0, "the place is given back")
    await _one_more_goes_through(client, owner.access)


async def test_a_place_is_free_again_after_a_stalled_body(make_client: MakeClient) -> None:
    client = await auth_client(make_client, max_bodies_per_user=1, body_idle_timeout=1)
    owner = (await make_users(client, owner="user"))["owner"]
    body = Trickle()
    resp, path = await asyncio.wait_for(_tus_patch(client, owner.access, body), 10)
    assert resp.status == 408, await resp.text()
    assert path is not None and await _offset(client, owner.access, path) == len(FIRST)
    assert _held(client, owner.id) == 0
    body.go_on()
    await _one_more_goes_through(client, owner.access)


async def test_a_client_resuming_its_stalled_upload_is_not_refused(
    make_client: MakeClient,
) -> None:
    """At the cap, with the upload's own stalled request holding the place: the new request
    breaks that request's lock, which ends it and gives its place back before the new one
    asks for one (it asks once it holds the lock)."""
    client = await auth_client(make_client, max_bodies_per_user=1)
    owner = (await make_users(client, owner="user"))["owner"]
    token = owner.access
    path = await create_upload(client, token, SIZE)
    body = Trickle()
    stalled = asyncio.ensure_future(
        client.patch(
            path, data=body.body(), headers={**TUS, **OCTET, **bearer(token), "Upload-Offset": "0"}
        )
    )
    service = runtime(client).uploads
    await _until(
        lambda: any(r.received == len(FIRST) for r in service._receiving), "the first bytes read"
    )
    assert _held(client, owner.id) == 1
    # The client's connection is dead to it (not yet to the server): it resumes from what
    # it sent, and its new request makes the stalled one let go.
    resp = await asyncio.wait_for(patch(client, token, path, len(FIRST), REST), 10)
    assert resp.status == 204, await resp.text()
    assert resp.headers["Upload-Offset"] == str(SIZE)
    old = await asyncio.wait_for(stalled, 10)
    assert old.status == 400 and "taken over" in await old.text()
    body.go_on()
    assert _held(client, owner.id) == 0


# --- the gateway's places, without HTTP ----------------------------------------------------------


def _gateway(cap: int, *, enabled: bool = True) -> Gateway:
    users: Any = None  # (places need neither users nor an audit database)
    audit: Any = _NoAudit()
    return Gateway(
        enabled=enabled,
        tokens=None,
        users=users,
        audit=audit,
        limiter=MemoryRateLimiter(),
        limits={},
        revocation_check_interval=0,
        caps={"bodies": cap},
    )


class _NoAudit:
    def record_soon(self, *args: Any, **kwargs: Any) -> None:
        return None


async def test_a_place_is_given_back_on_an_exception_and_a_cancellation() -> None:
    gate = _gateway(1)
    request = make_mocked_request("PATCH", "/uploads/x")
    with pytest.raises(RuntimeError):
        async with gate.slot(request, "bodies", who="u"):
            assert gate.slots_held("bodies", "u") == 1
            raise RuntimeError("the store broke")
    assert gate.slots_held("bodies", "u") == 0
    entered = asyncio.Event()

    async def hold() -> None:
        async with gate.slot(request, "bodies", who="u"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(hold())
    await entered.wait()
    with pytest.raises(TooManyRequests) as refused:
        async with gate.slot(request, "bodies", who="u"):
            raise AssertionError("over the cap")
    assert refused.value.headers["Retry-After"] == "5"
    assert gate.slots_held("bodies", "u") == 1  # (a refusal takes nothing)
    async with gate.slot(request, "bodies", who="someone else"):
        pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.slots_held("bodies", "u") == 0
    async with gate.slot(request, "bodies", who="u"):
        pass


async def test_anonymous_callers_are_capped_by_address_and_open_gates_not_at_all() -> None:
    gate = _gateway(1)
    request = make_mocked_request("PATCH", "/uploads/x")
    async with gate.slot(request, "bodies"):
        assert gate.slots_held("bodies", gate.client_ip(request)) == 1
        with pytest.raises(TooManyRequests):
            async with gate.slot(request, "bodies"):
                pass
    for open_gate in (_gateway(1, enabled=False), _gateway(0), OpenGate()):
        async with open_gate.slot(request, "bodies"), open_gate.slot(request, "bodies"):
            pass


async def test_a_place_is_given_back_when_a_receive_is_cancelled_or_fails(
    make_client: MakeClient,
) -> None:
    """Through the lifecycle itself: a body whose request is cancelled while it is read, or
    whose stream raises, gives its place back."""
    client = await auth_client(make_client, max_bodies_per_user=1)
    owner = (await make_users(client, owner="user"))["owner"]
    rt = runtime(client)
    request = make_mocked_request("PATCH", "/uploads/x")
    caller = caller_of(rt.gateway, request, Principal(user_id=owner.id))

    class Stream:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.sent = False

        async def read(self, n: int = -1) -> bytes:
            if not self.sent:
                self.sent = True
                return b"abc"
            if self.fail:
                raise RuntimeError("the stream broke")
            await asyncio.Event().wait()
            return b""

        def is_eof(self) -> bool:
            return False

        def set_exception(self, exc: BaseException) -> None:
            return None

    for fail in (False, True):
        path = await create_upload(client, owner.access, 10)
        upload_id = path.rsplit("/", 1)[1]
        task = asyncio.ensure_future(
            rt.uploads.receive(caller, upload_id, offset=0, body=Stream(fail), content_length=None)
        )
        if fail:
            with pytest.raises(RuntimeError):
                await asyncio.wait_for(task, 10)
        else:
            await _until(lambda: _held(client, owner.id) == 1, "the body holds its place")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert _held(client, owner.id) == 0
