"""``/metrics`` after a scripted sequence: the counters move by exactly what was done."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import random
from typing import Any

from aiohttp.test_utils import TestClient
from yarl import URL

from tests.app_fixtures import OCTET, TUS, MakeClient

from .helpers import samples

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(client: TestClient[Any, Any]) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return samples(await resp.text())


def _value(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_follow_uploads_and_downloads(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client()
    done: collections.Counter[tuple[str, str]] = collections.Counter()

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        await resp.read()
        done[(method, str(resp.status))] += 1
        return resp

    before = await _scrape(client)
    done[("GET", "200")] += 1  # that scrape counts once it has answered

    rng = random.Random(3)
    bodies = [rng.randbytes(n) for n in (1000, 300 * 1024, 1024 * 1024 + 1)]
    urls = []
    for i, body in enumerate(bodies):
        meta = f"filename {base64.b64encode(f'f{i}.bin'.encode()).decode()}"
        resp = await call(
            "POST",
            "/uploads/",
            headers={**TUS, "Upload-Length": str(len(body)), "Upload-Metadata": meta},
        )
        assert resp.status == 201
        urls.append(URL(resp.headers["Location"]).path)
    for url, body in zip(urls, bodies, strict=True):
        half = len(body) // 2
        for offset, piece in ((0, body[:half]), (half, body[half:])):
            resp = await call(
                "PATCH", url, data=piece, headers={**TUS, **OCTET, "Upload-Offset": str(offset)}
            )
            assert resp.status == 204, await resp.text()

    # wait until the pipeline has committed all three
    file_ids = []
    for url in urls:
        for _ in range(300):
            resp = await call("HEAD", url, headers=TUS)
            if resp.headers.get("X-File-Status") == "committed":
                file_ids.append(resp.headers["X-File-Id"])
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{url} was not committed: {dict(resp.headers)}")

    resp = await client.get(f"/file/{file_ids[1]}/content")
    assert resp.status == 200
    downloaded = await resp.read()
    done[("GET", "200")] += 1
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(bodies[1]).digest()

    after = await _scrape(client)

    for (method, status), n in done.items():
        delta = _value(
            after, "tusserver_http_requests_total", method=method, status=status
        ) - _value(before, "tusserver_http_requests_total", method=method, status=status)
        assert delta == n, (method, status, delta, n)
    assert _value(after, "tusserver_bytes_received_total") == sum(len(b) for b in bodies)
    assert _value(after, "tusserver_uploads_total", event="created") == 3
    assert _value(after, "tusserver_uploads_total", event="finished") == 3
    assert _value(after, "tusserver_files_total", outcome="committed") >= 3
    assert _value(after, "tusserver_bytes_served_total") == len(downloaded) == len(bodies[1])
    patches = done[("PATCH", "204")]
    assert _value(after, "tusserver_patch_duration_seconds_count") == patches >= 3
    assert _value(after, "tusserver_patch_duration_seconds_bucket", le="+Inf") == _value(
        after, "tusserver_patch_duration_seconds_count"
    )
    assert ("tusserver_pipeline_queue_depth", ()) in after
    # The gauge counts the whole catalog: on the PostgreSQL database that a test worker
    # shares with other tests, their pending rows count too. Ours are all committed, so
    # on a private SQLite catalog it is exactly zero.
    depth = _value(after, "tusserver_pipeline_queue_depth")
    if database_url.startswith("sqlite"):
        assert depth == 0
    else:
        assert depth >= 0
    assert ("tusserver_patches_in_flight", ()) in after
