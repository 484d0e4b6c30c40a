"""GET /analytics: exact totals, breakdowns and zero-filled series after a scripted sequence.

Auth is on and the script runs as users of its own, so the per-user numbers are exact even on
a PostgreSQL database shared with other tests; the service-wide ones are exact on SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
from typing import Any

import pytest
from aiohttp import FormData

from tests.app_fixtures import TUS, MakeClient
from tests.auth.helpers import User, bearer, create_upload, make_users
from tests.auth.helpers import patch as auth_patch
from tests.pipeline.test_local_pipeline import meta, png_bytes

from .helpers import Client, api_error, jwt_client, runtime

KINDS = (
    "upload.started",
    "upload.finished",
    "file.committed",
    "file.rejected",
    "file.downloaded",
    "file.deleted",
)
TEXT = b"just some plain text for the analytics test\n" * 70
BAD_SUM_REASON = "the file does not match its declared sha256 checksum"


async def tus_upload(client: Client, user: User, data: bytes, **metadata: str) -> dict[str, Any]:
    """Upload as ``user`` and wait until the pipeline is done with the file."""
    path = await create_upload(
        client, user.access, len(data), **{"Upload-Metadata": meta(**metadata)}
    )
    resp = await auth_patch(client, user.access, path, 0, data)
    assert resp.status == 204, await resp.text()
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        h = await client.head(path, headers={**TUS, **bearer(user.access)})
        if file_id := h.headers.get("X-File-Id"):
            r = await client.get(f"/api/v1/file/{file_id}", headers=bearer(user.access))
            info: dict[str, Any] = await r.json()
            if info["status"] not in ("received", "validating"):
                return info
        assert asyncio.get_running_loop().time() < deadline, h.headers
        await asyncio.sleep(0.05)


async def analytics(
    client: Client, caller: User, path: str = "/api/v1/analytics", **params: str
) -> dict[str, Any]:
    resp = await client.get(path, params=params, headers=bearer(caller.access))
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def totals(**counts: tuple[int, int]) -> dict[str, dict[str, int]]:
    out = {k: {"count": 0, "bytes": 0} for k in KINDS}
    for key, (count, nbytes) in counts.items():
        out[key.replace("_", ".", 1)] = {"count": count, "bytes": nbytes}
    return out


async def settled(
    client: Client, caller: User, want: dict[str, dict[str, int]], **params: str
) -> dict[str, Any]:
    """The report once the asynchronous events have arrived (or the last one seen)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        body = await analytics(client, caller, **params)
        if body["totals"] == want or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.1)


def hour(at: dt.datetime) -> dt.datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def series_sum(series: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out = {k: {"count": 0, "bytes": 0} for k in KINDS}
    for bucket in series:
        for k in KINDS:
            out[k]["count"] += bucket[k]["count"]
            out[k]["bytes"] += bucket[k]["bytes"]
    return out


async def test_scripted_sequence_gives_exact_numbers(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    users = await make_users(client, alice="user", bob="user", root="admin")
    alice, bob, root = users["alice"], users["bob"], users["root"]
    began = dt.datetime.now(dt.UTC)

    p1, p2, txt = png_bytes(1500), png_bytes(2500), TEXT
    bad = b"these bytes do not match the declared checksum\n" * 20
    f1 = await tus_upload(client, alice, p1, filename="one.png")
    f2 = await tus_upload(client, alice, p2, filename="two.png")
    f3 = await tus_upload(client, alice, txt, filename="three.txt")
    f4 = await tus_upload(client, alice, bad, filename="bad.txt", sha256="0" * 64)
    assert [f["status"] for f in (f1, f2, f3, f4)] == ["committed"] * 3 + ["rejected"]
    assert f4["reason"] == BAD_SUM_REASON
    assert (f1["detected_type"], f3["detected_type"]) == ("image/png", "text/plain")

    h = bearer(alice.access)
    full = await client.get(f"/api/v1/file/{f1['id']}/content", headers=h)
    assert len(await full.read()) == len(p1)
    part = await client.get(f"/file/{f3['id']}/content", headers={**h, "Range": "bytes=0-99"})
    assert part.status == 206 and len(await part.read()) == 100
    # None of these is a download.
    etag = full.headers["ETag"]
    cached = await client.get(f1["content_url"], headers={**h, "If-None-Match": etag})
    assert cached.status == 304
    assert (await client.head(f"/api/v1/file/{f1['id']}/content", headers=h)).status == 200
    out_of_range = await client.get(f1["content_url"], headers={**h, "Range": "bytes=99999-"})
    assert out_of_range.status == 416
    assert (await client.get(f"/api/v1/file/{f4['id']}/content", headers=h)).status == 404
    assert (await client.delete(f"/api/v1/file/{f2['id']}", headers=h)).status == 204

    # Bob's activity is his own.
    b1 = await tus_upload(client, bob, png_bytes(700), filename="bob.png")
    hb = bearer(bob.access)
    assert (await client.get(f"/api/v1/file/{b1['id']}/content", headers=hb)).status == 200

    sizes = len(p1) + len(p2) + len(txt)
    want = totals(
        upload_started=(4, 0),
        upload_finished=(4, sizes + len(bad)),
        file_committed=(3, sizes),
        file_rejected=(1, len(bad)),
        file_downloaded=(2, len(p1) + 100),
        file_deleted=(1, len(p2)),
    )
    body = await settled(client, alice, want)
    assert body["totals"] == want
    assert body["scope"] == "user"
    assert body["granularity"] == "day"
    assert body["bytes_in"] == sizes + len(bad)
    assert body["bytes_out"] == len(p1) + 100
    assert body["top_types"] == [
        {"key": "image/png", "count": 2, "bytes": len(p1) + len(p2)},
        {"key": "text/plain", "count": 1, "bytes": len(txt)},
    ]
    assert body["rejects_by_reason"] == [{"key": BAD_SUM_REASON, "count": 1, "bytes": len(bad)}]
    assert body["top_files"] == [
        {"key": f1["id"], "count": 1, "bytes": len(p1)},
        {"key": f3["id"], "count": 1, "bytes": 100},
    ]
    # The default range is the last 30 days, by day, every day present.
    assert 31 <= len(body["series"]) <= 32
    assert series_sum(body["series"]) == want
    # The seed path gives the same report.
    assert (await analytics(client, alice, "/analytics"))["totals"] == want

    # Hourly, zero-filled: four buckets, the events in the hours the script ran.
    ended = dt.datetime.now(dt.UTC)
    start = hour(began) - dt.timedelta(hours=2)
    hourly = await analytics(
        client,
        alice,
        granularity="hour",
        **{"from": start.isoformat(), "to": (start + dt.timedelta(hours=4)).isoformat()},
    )
    keys = [(start + dt.timedelta(hours=i)).isoformat() for i in range(4)]
    assert [b["bucket"] for b in hourly["series"]] == keys
    assert hourly["totals"] == want
    assert series_sum(hourly["series"]) == want
    busy = {hour(began).isoformat(), hour(ended).isoformat()}
    for bucket in hourly["series"]:
        if bucket["bucket"] not in busy:
            assert all(bucket[k] == {"count": 0, "bytes": 0} for k in KINDS), bucket

    # Daily over a week, zero-filled.
    today = began.date()
    week = {
        "from": (today - dt.timedelta(days=6)).isoformat(),
        "to": (today + dt.timedelta(days=2)).isoformat(),  # tomorrow too: midnight may pass
    }
    weekly = await analytics(client, alice, granularity="day", **week)
    assert [b["bucket"] for b in weekly["series"]] == [
        (today - dt.timedelta(days=6 - i)).isoformat() for i in range(8)
    ]
    assert weekly["totals"] == want
    for bucket in weekly["series"]:
        if bucket["bucket"] not in {today.isoformat(), ended.date().isoformat()}:
            assert all(bucket[k] == {"count": 0, "bytes": 0} for k in KINDS), bucket
    # A range before any activity is all zeros.
    past = await analytics(client, alice, **{"from": "2020-01-01", "to": "2020-01-08"})
    assert past["totals"] == totals()
    assert len(past["series"]) == 7

    # Bob sees only his own.
    bob_want = totals(
        upload_started=(1, 0),
        upload_finished=(1, b1["size"]),
        file_committed=(1, b1["size"]),
        file_downloaded=(1, b1["size"]),
    )
    bob_body = await settled(client, bob, bob_want)
    assert bob_body["totals"] == bob_want
    assert bob_body["top_files"] == [{"key": b1["id"], "count": 1, "bytes": b1["size"]}]
    # Users may name themselves, nobody else.
    assert (await analytics(client, alice, user=alice.id))["totals"] == want
    resp = await client.get("/api/v1/analytics", params={"user": bob.id}, headers=h)
    await api_error(resp, 400)
    await api_error(await client.get("/api/v1/analytics"), 401)

    # The admin: one user, or the whole service.
    as_alice = await analytics(client, root, user=alice.id)
    assert as_alice["totals"] == want
    assert as_alice["scope"] == "user"
    assert as_alice["top_files"] == body["top_files"]
    service = await analytics(client, root)
    assert service["scope"] == "service"
    both = {k: {f: want[k][f] + bob_want[k][f] for f in ("count", "bytes")} for k in KINDS}
    if runtime(client).db.dialect == "sqlite":  # a database of its own: exact
        assert service["totals"] == both
        types = {t["key"]: t["count"] for t in service["top_types"]}
        assert types == {"image/png": 3, "text/plain": 1}
    else:
        for k in KINDS:
            assert service["totals"][k]["count"] >= both[k]["count"]
            assert service["totals"][k]["bytes"] >= both[k]["bytes"]


async def test_form_uploads_are_counted_like_tus_uploads(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    alice = (await make_users(client, alice="user"))["alice"]
    fd = FormData(quote_fields=False)
    for name, data in (("a.png", png_bytes(100)), ("b.txt", TEXT)):
        fd.add_field("file", io.BytesIO(data), filename=name, content_type="text/plain")
    resp = await client.post("/api/v1/upload", data=fd, headers=bearer(alice.access))
    assert resp.status == 201, await resp.text()
    size = len(png_bytes(100)) + len(TEXT)
    want = totals(upload_started=(2, 0), upload_finished=(2, size), file_committed=(2, size))
    body = await settled(client, alice, want)
    assert body["totals"] == want
    ids = [e["file_id"] for e in (await resp.json())["files"]]
    for fid in ids:
        r = await client.get(f"/api/v1/file/{fid}", headers=bearer(alice.access))
        info = await r.json()
        assert info["sha256"] in {
            hashlib.sha256(png_bytes(100)).hexdigest(),
            hashlib.sha256(TEXT).hexdigest(),
        }


BAD_PARAMS: list[dict[str, str]] = [
    {"from": "2024-02-01", "to": "2024-01-01"},  # from after to
    {"from": "2024-01-01", "to": "2024-01-01"},  # empty range
    {"from": "2023-01-01", "to": "2024-03-01"},  # more than 400 days
    {"from": "2020-01-01"},  # up to now: more than 400 days
    {"granularity": "week"},
    {"granularity": "HOUR"},
    {"granularity": "hour", "from": "2024-01-01", "to": "2024-03-01"},  # hourly: 31 days max
    {"unknown": "1"},
    {"limit": "10"},
    {"from": "not a date"},
    {"to": "2024-02-30"},
    {"from": "2024-01-01T00:00:00+24:00"},
    {"to": "0001-01-05"},  # 30 days before it is not a date
    {"from": "9999-12-31T23:00:00-05:00"},  # past the last representable UTC instant
]


@pytest.mark.parametrize(
    "params", BAD_PARAMS, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items())
)
async def test_bad_analytics_parameters_are_400(
    make_client: MakeClient, params: dict[str, str]
) -> None:
    client = await jwt_client(make_client)
    users = await make_users(client, alice="user", root="admin")
    for user in users.values():
        for path in ("/api/v1/analytics", "/analytics"):
            resp = await client.get(path, params=params, headers=bearer(user.access))
            await api_error(resp, 400)


async def test_odd_user_parameter_never_fails(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    root = (await make_users(client, root="admin"))["root"]
    for user in ["nobody", "x" * 500, "\x00", "a\x00b", "ü🎉"]:
        resp = await client.get(
            "/api/v1/analytics", params={"user": user}, headers=bearer(root.access)
        )
        if resp.status == 200:
            assert (await resp.json())["totals"] == totals()
        else:
            await api_error(resp, 400)
