"""checksum, concatenation, expiration, CORS, proxies, hooks and embedding."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from storage_backends.base import StorageError
from tests.app_fixtures import OCTET, TUS, MakeClient, get_committed
from tusserver import CreateContext, HookRejection, Hooks, TusServerConfig, create_tus_subapp
from tusserver.app import RUNTIME
from tusserver.catalog.schema import uploads
from tusserver.catalog.uploads import UploadRecord

from .test_core import create, head, patch

Client = TestClient[Any, Any]


def digest(alg: str, data: bytes) -> str:
    return f"{alg} {base64.b64encode(hashlib.new(alg, data).digest()).decode()}"


# --- checksum -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["sha1", "md5", "sha256", "sha512"])
async def test_checksum_match_is_accepted(client: Client, alg: str) -> None:
    path = await create(client, 6)
    r = await patch(client, path, 0, b"abc", **{"Upload-Checksum": digest(alg, b"abc")})
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("alg", ["sha1", "sha256"])
async def test_checksum_mismatch_is_460_and_the_chunk_is_discarded(
    client: Client, alg: str
) -> None:
    path = await create(client, 6)
    await patch(client, path, 0, b"abc")
    r = await patch(client, path, 3, b"def", **{"Upload-Checksum": digest(alg, b"xyz")})
    assert r.status == 460
    assert (await head(client, path)).headers["Upload-Offset"] == "3"
    r = await patch(client, path, 3, b"def", **{"Upload-Checksum": digest(alg, b"def")})
    assert r.status == 204
    assert await (await get_committed(client, path)).read() == b"abcdef"


async def test_checksum_mismatch_leaves_a_deferred_length_deferred(client: Client) -> None:
    """After a 460 "the upload and its offset MUST NOT be updated": the Upload-Length sent
    with the discarded chunk is not declared either."""
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await patch(
        client, path, 0, b"abc", **{"Upload-Length": "10", "Upload-Checksum": digest("sha1", b"x")}
    )
    assert r.status == 460
    h = await head(client, path)
    assert (h.headers["Upload-Offset"], h.headers.get("Upload-Defer-Length")) == ("0", "1")
    assert "Upload-Length" not in h.headers
    # The client may declare another length with the chunk sent again.
    r = await patch(
        client, path, 0, b"abc", **{"Upload-Length": "3", "Upload-Checksum": digest("sha1", b"abc")}
    )
    assert r.status == 204
    assert await (await get_committed(client, path)).read() == b"abc"


async def test_a_body_refused_as_too_large_leaves_a_deferred_length_deferred(
    client: Client,
) -> None:
    """A PATCH refused upfront (413: its Content-Length goes past the Upload-Length it
    declares) changes nothing: the length stays deferred, and another may be declared."""
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    r = await patch(client, path, 0, b"abcdef", **{"Upload-Length": "3"})
    assert r.status == 413
    h = await head(client, path)
    assert (h.headers["Upload-Offset"], h.headers.get("Upload-Defer-Length")) == ("0", "1")
    assert "Upload-Length" not in h.headers
    assert (await patch(client, path, 0, b"abcdef", **{"Upload-Length": "6"})).status == 204
    assert await (await get_committed(client, path)).read() == b"abcdef"


@pytest.mark.parametrize(
    "value", ["crc32 AAAA", "SHA1 " + base64.b64encode(b"x" * 20).decode(), "sha1", "sha1 !!!"]
)
async def test_bad_checksum_headers_are_400(client: Client, value: str) -> None:
    path = await create(client, 3)
    r = await patch(client, path, 0, b"abc", **{"Upload-Checksum": value})
    assert r.status == 400
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("value", ["crc32 AAAA", "sha1", "sha1 !!!"])
async def test_a_creation_with_upload_refused_for_its_checksum_header_creates_nothing(
    client: Client, value: str
) -> None:
    """The header is refused before the upload is created: no Location to resume at, and
    nothing counted against the owner (a 400 made an empty upload that lived until it
    expired)."""
    before = await _upload_rows(client)
    r = await client.post(
        "/uploads/",
        data=b"abc",
        headers={**TUS, **OCTET, "Upload-Length": "3", "Upload-Checksum": value},
    )
    assert r.status == 400, await r.text()
    assert "Location" not in r.headers
    assert await _upload_rows(client) == before


async def _upload_rows(client: Client) -> int:
    async with client.app[RUNTIME].db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(uploads))).scalar_one())


async def test_checksum_with_body_past_length_is_413_and_nothing_kept(client: Client) -> None:
    path = await create(client, 2)

    async def body() -> Any:
        yield b"ab"
        yield b"cd"

    r = await client.patch(
        path,
        data=body(),
        headers={**TUS, **OCTET, "Upload-Offset": "0", "Upload-Checksum": digest("sha1", b"ab")},
    )
    assert r.status == 413
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


# --- concatenation ------------------------------------------------------------------------


async def partial(client: Client, data: bytes, *, finish: bool = True) -> str:
    path = await create(client, len(data), **{"Upload-Concat": "partial"})
    if finish and data:
        assert (await patch(client, path, 0, data)).status == 204
    return path


async def test_final_upload_concatenates_partials_in_order(client: Client) -> None:
    a = await partial(client, b"hello ")
    b = await partial(client, b"big ")
    c = await partial(client, b"world")
    base = f"http://{client.host}:{client.port}"
    resp = await client.post(
        "/uploads/",
        headers={**TUS, "Upload-Concat": f"final;{a} {base}{b} {c}"},
    )
    assert resp.status == 201, await resp.text()
    final = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    h = await head(client, final)
    assert h.headers["Upload-Length"] == "15"
    assert h.headers["Upload-Offset"] == "15"
    assert h.headers["Upload-Concat"] == f"final;{a} {b} {c}"
    assert (await head(client, a)).headers["Upload-Concat"] == "partial"
    assert await (await get_committed(client, final)).read() == b"hello big world"
    # "The Server MUST respond with 403 Forbidden to PATCH requests against a final upload."
    assert (await patch(client, final, 15, b"x")).status == 403


async def test_final_upload_before_partials_finish(client: Client) -> None:
    a = await partial(client, b"abc", finish=False)
    b = await partial(client, b"def")
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert resp.status == 201
    final = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    h = await head(client, final)
    assert "Upload-Offset" not in h.headers  # not concatenated yet
    assert h.headers["Upload-Length"] == "6"
    assert (await patch(client, final, 0, b"x")).status == 403
    assert (await patch(client, a, 0, b"abc")).status == 204
    h = await head(client, final)
    assert h.headers["Upload-Offset"] == "6"
    assert await (await get_committed(client, final)).read() == b"abcdef"


def final_path(resp: Any) -> str:
    location: str = resp.headers["Location"]
    return location[location.index("/uploads/") :]


async def test_a_final_reports_its_length_once_it_can_be_calculated(client: Client) -> None:
    """ "The Upload-Length header MUST be included if the length of the final resource can
    be calculated at the time of the request": a partial that declares its deferred length
    later makes the final's length known."""
    a = await create(client, None, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    b = await partial(client, b"de", finish=False)
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    final = final_path(resp)
    assert "Upload-Length" not in (await head(client, final)).headers
    assert (await patch(client, a, 0, b"abc", **{"Upload-Length": "6"})).status == 204
    h = await head(client, final)
    assert (h.headers["Upload-Length"], h.headers.get("Upload-Offset")) == ("8", None)


async def test_a_failed_concatenation_is_done_again_and_the_partial_is_finished(
    client: Client,
) -> None:
    """The partial whose finish makes its final whole is stored and finished whatever the
    concatenation does: a concatenation that fails is done again on the final's HEAD."""
    service = client.app[RUNTIME].uploads
    concatenater = service._concatenater
    real = concatenater.concatenate
    calls = 0

    async def once_failing(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageError("the store is briefly unavailable")
        return await real(*args, **kwargs)

    a = await partial(client, b"abc", finish=False)
    final = final_path(
        await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    )
    concatenater.concatenate = once_failing
    try:
        assert (await patch(client, a, 0, b"abc")).status == 204
        assert calls == 1
        h = await head(client, final)
        assert (h.status, h.headers.get("Upload-Offset"), calls) == (200, "3", 2)
    finally:
        concatenater.concatenate = real
    assert await (await get_committed(client, final)).read() == b"abc"


async def test_a_final_that_lost_a_partial_is_gone(make_client: MakeClient) -> None:
    """A final can never be whole once one of its partials is terminated: it answers 410,
    not "still concatenating" for good."""
    client = await make_client(expiration=0)
    a = await partial(client, b"abc", finish=False)
    b = await partial(client, b"def")
    final = final_path(
        await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    )
    assert (await client.delete(a, headers=TUS)).status == 204
    assert (await head(client, final)).status == 410
    assert (await head(client, b)).status == 200  # the other partial is left alone


async def test_a_final_lives_as_long_as_its_partials_are_active(make_client: MakeClient) -> None:
    """A final waiting for a partial that still receives bytes does not expire on its own
    clock (a client cannot append to it): its expiry moves with the partial's; and the
    finished partial it waits for is not swept from under it."""
    client = await make_client(expiration=3.0)
    done = await partial(client, b"ab")
    a = await partial(client, b"wxyz", finish=False)
    final = final_path(
        await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{done} {a}"})
    )
    sweeper = client.app[RUNTIME].sweeper
    for i in range(3):  # 3.6 s of activity on the partial, never 3 s idle; 1.8 s of slack
        await asyncio.sleep(1.2)
        assert (await patch(client, a, i, b"wxyz"[i : i + 1])).status == 204
        await sweeper.sweep_once()
    assert (await patch(client, a, 3, b"z")).status == 204
    h = await head(client, final)
    assert (h.status, h.headers.get("Upload-Offset")) == (200, "6")
    assert await (await get_committed(client, final)).read() == b"abwxyz"


async def slow_body(data: bytes, pause: float, started: asyncio.Event) -> Any:
    """A chunked body of ``data``, a byte every ``pause`` seconds (``started``: the first
    byte is sent)."""
    for i in range(len(data)):
        yield data[i : i + 1]
        if i == 0:
            started.set()
        await asyncio.sleep(pause)


async def test_an_upload_receiving_one_long_body_is_not_expired(make_client: MakeClient) -> None:
    """An upload whose body is still arriving when its Upload-Expires passes is not inactive:
    a HEAD then makes the request let go (the bytes kept, the expiry moved) and answers the
    offset, as for any upload in use. It answered 410 (the upload expired, for good to a
    client) while the body went on arriving and was then stored."""
    client = await make_client(expiration=2.0)
    path = await create(client, 6)
    started = asyncio.Event()
    append = asyncio.ensure_future(
        client.patch(
            path,
            # 4.8 s in all: the HEAD below comes 2.2 s before its end.
            data=slow_body(b"uvwxyz", 0.8, started),
            headers={**TUS, **OCTET, "Upload-Offset": "0"},
        )
    )
    await started.wait()
    await asyncio.sleep(2.6)  # the upload's own expiry passed while the body arrives
    h = await head(client, path)
    assert h.status == 200, await h.text()
    offset = int(h.headers["Upload-Offset"])
    assert 1 <= offset < 6 and "Upload-Expires" in h.headers
    r = await append
    assert (r.status, r.headers.get("Upload-Offset")) == (400, str(offset))
    assert (await patch(client, path, offset, b"uvwxyz"[offset:])).status == 204
    assert await (await get_committed(client, path)).read() == b"uvwxyz"


async def test_a_final_lives_through_one_long_append_to_its_partial(
    make_client: MakeClient,
) -> None:
    """A partial receiving one body for longer than the expiration is not idle: the final
    waiting for it does not expire meanwhile (neither by the sweeper nor on a HEAD), and is
    concatenated when the body ends. (Only the end of a body moved the final's expiry: a
    client that created the final first and sent a partial in one PATCH lost the final.)"""
    client = await make_client(expiration=2.0)
    done = await partial(client, b"ab")
    a = await partial(client, b"uvwxyz", finish=False)
    final = final_path(
        await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{done} {a}"})
    )
    sweeper = client.app[RUNTIME].sweeper
    sent = asyncio.Event()
    append = asyncio.ensure_future(
        # 4.8 s in all, past the 2 s expiration; the checks below come 2.2 s before its end.
        client.patch(
            a, data=slow_body(b"uvwxyz", 0.8, sent), headers={**TUS, **OCTET, "Upload-Offset": "0"}
        )
    )
    await sent.wait()
    await asyncio.sleep(2.6)  # the body is still arriving; the final's own clock ran out
    h = await head(client, final)
    assert h.status == 200, await h.text()
    await sweeper.sweep_once()
    r = await append
    assert r.status == 204, await r.text()
    h = await head(client, final)
    assert (h.status, h.headers.get("Upload-Offset")) == (200, "8")
    assert await (await get_committed(client, final)).read() == b"abuvwxyz"


@pytest.mark.parametrize(
    "concat",
    [
        "final;",
        "final;/uploads/0123456789abcdef0123456789abcdef",
        "final;/elsewhere/abc",
        "final;/uploads/../../etc/passwd",
        "final;http://other.example/uploads/..",
    ],
)
async def test_final_upload_with_bad_parts_is_400(client: Client, concat: str) -> None:
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Concat": concat})
    assert resp.status == 400


async def test_final_upload_rejects_non_partials_length_and_body(client: Client) -> None:
    plain = await create(client, 3)
    a = await partial(client, b"abc")
    r = await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{plain}"})
    assert r.status == 400
    r = await client.post(
        "/uploads/", headers={**TUS, "Upload-Concat": f"final;{a}", "Upload-Length": "3"}
    )
    assert r.status == 400
    r = await client.post(
        "/uploads/",
        data=b"abc",
        headers={**TUS, **OCTET, "Upload-Concat": f"final;{a}"},
    )
    assert r.status == 400


# --- expiration ---------------------------------------------------------------------------


async def test_expired_uploads_answer_410_and_are_swept(make_client: MakeClient) -> None:
    client = await make_client(expiration=0.3)
    path = await create(client, 10)
    await patch(client, path, 0, b"abc")
    await asyncio.sleep(0.5)
    assert (await head(client, path)).status == 410
    assert (await patch(client, path, 3, b"d")).status == 410
    runtime = client.app[RUNTIME]
    # (At least this one: on PostgreSQL the catalog is shared with other tests' uploads.)
    assert await runtime.sweeper.sweep_once() >= 1
    store_file = runtime.config.uploads_dir / path.rsplit("/", 1)[1]
    assert not store_file.exists()
    assert (await head(client, path)).status == 410


async def test_patch_pushes_the_expiry_forward(make_client: MakeClient) -> None:
    # 5 s of PATCHes against a 3 s expiry: alive only if each PATCH pushed it forward; 2 s of
    # slack per step, so a loaded CI machine's stall does not expire it in between.
    client = await make_client(expiration=3.0)
    path = await create(client, 10)
    for i in range(5):
        await asyncio.sleep(1.0)
        r = await patch(client, path, i, b"x")
        assert r.status == 204
    assert (await head(client, path)).status == 200


# --- CORS ---------------------------------------------------------------------------------


async def test_preflight_and_exposed_headers_also_on_errors(client: Client) -> None:
    origin = {"Origin": "https://app.example"}
    pre = await client.options(
        "/uploads/",
        headers={
            **origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable,upload-offset",
        },
    )
    assert pre.status == 204
    assert "PATCH" in pre.headers["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in pre.headers["Access-Control-Allow-Headers"]
    ok = await client.post("/uploads/", headers={**TUS, **origin, "Upload-Length": "1"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Location" in ok.headers["Access-Control-Expose-Headers"]
    assert "Upload-Offset" in ok.headers["Access-Control-Expose-Headers"]
    bad = await client.post("/uploads/", headers={**origin, "Upload-Length": "1"})
    assert bad.status == 412
    assert bad.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Tus-Version" in bad.headers["Access-Control-Expose-Headers"]


async def test_cors_origins_are_configurable(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=("https://good.example",))
    good = await client.options("/uploads/", headers={"Origin": "https://good.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "https://good.example"
    evil = await client.options("/uploads/", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers


# --- reverse proxies ----------------------------------------------------------------------


async def test_forwarded_headers_only_when_trusted(make_client: MakeClient) -> None:
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "media.example"}
    untrusted = await make_client()
    r = await untrusted.post("/uploads/", headers={**TUS, **fwd, "Upload-Length": "1"})
    assert r.headers["Location"].startswith(f"http://{untrusted.host}:{untrusted.port}/")
    trusted = await make_client(trust_proxy_headers=True)
    r = await trusted.post("/uploads/", headers={**TUS, **fwd, "Upload-Length": "1"})
    assert r.headers["Location"].startswith("https://media.example/uploads/")
    r = await trusted.post(
        "/uploads/",
        headers={**TUS, "Forwarded": 'proto=https;host="cdn.example"', "Upload-Length": "1"},
    )
    assert r.headers["Location"].startswith("https://cdn.example/uploads/")


async def test_relative_location(make_client: MakeClient) -> None:
    client = await make_client(relative_location=True)
    r = await client.post("/uploads/", headers={**TUS, "Upload-Length": "1"})
    assert r.headers["Location"].startswith("/uploads/")


# --- hooks --------------------------------------------------------------------------------


async def test_pre_create_may_reject_or_change_metadata(make_client: MakeClient) -> None:
    finished: list[UploadRecord] = []
    done = asyncio.Event()

    async def pre_create(ctx: CreateContext) -> None:
        if ctx.metadata.get("filename") == b"bad.exe":
            raise HookRejection(403, "executables are not accepted")
        ctx.metadata["checked"] = b"yes"

    async def post_finish(rec: UploadRecord) -> None:
        finished.append(rec)
        done.set()

    hooks = Hooks(pre_create=[pre_create], post_finish=[post_finish])
    client = await make_client(hooks=hooks)
    bad = base64.b64encode(b"bad.exe").decode()
    r = await client.post(
        "/uploads/", headers={**TUS, "Upload-Length": "1", "Upload-Metadata": f"filename {bad}"}
    )
    assert r.status == 403
    assert "executables" in await r.text()
    path = await create(client, 2)
    assert (
        "checked " + base64.b64encode(b"yes").decode()
        in (await head(client, path)).headers["Upload-Metadata"]
    )
    await patch(client, path, 0, b"ok")
    await asyncio.wait_for(done.wait(), 5)
    assert finished[0].id == path.rsplit("/", 1)[1]
    assert finished[0].length == 2


# --- embedding ----------------------------------------------------------------------------


async def test_embedded_sub_app_under_a_prefix(aiohttp_client: Any, tmp_path: Any) -> None:
    config = TusServerConfig(data_dir=tmp_path, sweep_interval=0, auth="none")
    host = web.Application()

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="host app")

    host.router.add_get("/", hello)
    host.add_subapp("/media/tus", create_tus_subapp(config))
    client = await aiohttp_client(host)
    r = await client.post("/media/tus/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 201
    path = r.headers["Location"][r.headers["Location"].index("/media/tus/") :]
    assert (await patch(client, path, 0, b"abc")).status == 204
    assert await (await get_committed(client, path)).read() == b"abc"
    assert await (await client.get("/")).text() == "host app"


#: What every tus response carries, whichever app it is mounted in.
_COMMON = ("Vary", "X-Request-ID", "Tus-Resumable", "X-Content-Type-Options", "X-Frame-Options")


async def _answers(client: TestClient, prefix: str) -> list[Any]:
    origin = {"Origin": "https://app.example"}
    return [
        await client.post(prefix + "/", headers={**TUS, **origin, "Upload-Length": "3"}),
        await client.post(prefix + "/", headers={**TUS, **origin, "Upload-Length": "x"}),
        await client.head(prefix + "/missing", headers={**TUS, **origin}),
    ]


async def test_embedded_sub_app_gives_the_common_headers_itself(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    config = TusServerConfig(
        data_dir=tmp_path, sweep_interval=0, auth="none", cors_origins=("https://app.example",)
    )
    host = web.Application()
    host.add_subapp("/media/tus", create_tus_subapp(config))
    client = await aiohttp_client(host)
    answers = await _answers(client, "/media/tus")
    assert [r.status for r in answers] == [201, 400, 404]
    for r in answers:
        assert all(len(r.headers.getall(h)) == 1 for h in _COMMON), r.headers
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert answers[1].headers["Content-Type"].startswith("text/plain")  # tus errors: no JSON


async def test_standalone_app_wraps_tus_requests_once(aiohttp_client: Any, tmp_path: Any) -> None:
    from tusserver import create_app

    config = TusServerConfig(
        data_dir=tmp_path, sweep_interval=0, auth="none", cors_origins=("https://app.example",)
    )
    app = create_app(config)
    (tus,) = [sub for sub in app._subapps if RUNTIME in sub]
    # The request id, CORS and the common headers come from the standalone app alone; the
    # tus endpoint keeps only its own error answers (plain text).
    assert len(tus.middlewares) == 1
    assert len(tus.on_response_prepare) == 0
    client = await aiohttp_client(app)
    answers = await _answers(client, config.base_path.rstrip("/"))
    assert [r.status for r in answers] == [201, 400, 404]
    for r in answers:
        assert all(len(r.headers.getall(h)) == 1 for h in _COMMON), r.headers
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert answers[1].headers["Content-Type"].startswith("text/plain")


async def test_a_failing_concatenation_is_tried_again_with_backoff(client: Client) -> None:
    """A client polling a final's HEAD while its concatenation fails does not make the store
    concatenate on every request: the next try waits 1 s, then 2 s, ... (at most a minute)."""
    service = client.app[RUNTIME].uploads
    concatenater = service._concatenater
    real, real_clock = concatenater.concatenate, service._clock
    now = real_clock()
    service._clock = lambda: now
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        raise StorageError("the store is unavailable")

    a = await partial(client, b"abc", finish=False)
    final = final_path(
        await client.post("/uploads/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    )
    concatenater.concatenate = failing
    try:
        assert (await patch(client, a, 0, b"abc")).status == 204
        assert calls == 1  # the partial's finish tried it
        for expected in (2, 2, 2):  # the first HEAD tries; the next ones within 1 s do not
            h = await head(client, final)
            assert (h.status, "Upload-Offset" in h.headers, calls) == (200, False, expected)
        now += dt.timedelta(seconds=1.1)
        assert (await head(client, final)).status == 200
        assert calls == 3
        now += dt.timedelta(seconds=1.1)  # the second failure waits 2 s
        assert (await head(client, final)).status == 200
        assert calls == 3
        concatenater.concatenate = real
        now += dt.timedelta(seconds=1)
        h = await head(client, final)
        assert (h.status, h.headers.get("Upload-Offset")) == (200, "3")
        assert service._final_retries == {}
    finally:
        concatenater.concatenate = real
        service._clock = real_clock
    assert await (await get_committed(client, final)).read() == b"abc"
