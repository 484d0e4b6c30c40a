"""Bad input to the JSON API: always a 4xx with a JSON {"error", "message"} body, never a 5xx."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from yarl import URL

from tests.app_fixtures import MakeClient

from .helpers import Client, api_client, api_error, file_row, insert_files, token

NOW = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await api_client(make_client)


@pytest.fixture
async def seeded(client: Client) -> tuple[Client, str, list[dict[str, Any]]]:
    owner = token("bad-")
    names = [
        "100% sure.txt",
        "1000 sure.txt",
        "snake_case.txt",
        "snakeXcase.txt",
        "back\\slash.txt",
        "backslash.txt",
        "Ünïcödé.txt",
        "UNICODE.txt",
        "straße.txt",
        "it's.txt",
        "🎉 party.png",
        "'; DROP TABLE files; --.txt",
    ]
    rows = [
        file_row(name=n, owner=owner, created_at=NOW + dt.timedelta(minutes=i))
        for i, n in enumerate(names)
    ]
    await insert_files(client, rows)
    return client, owner, rows


async def files_query(client: Client, **params: Any) -> Any:
    return await client.get("/api/v1/files", params=params)


# --- GET /files parameters ------------------------------------------------------------------

BAD_QUERIES: list[dict[str, Any]] = [
    # limit
    {"limit": "0"},
    {"limit": "-1"},
    {"limit": "201"},
    {"limit": "abc"},
    {"limit": "1.5"},
    {"limit": "1e2"},
    {"limit": " 5"},
    {"limit": "9" * 19},
    {"limit": "9" * 40},
    # dates
    {"from": "2024-13-01"},
    {"from": "yesterday"},
    {"to": "2024-02-30"},
    {"to": "2024-01-01T25:00:00"},
    {"from": "2024-01-01T00:00:00+25:00"},
    {"from": "9999-12-31T23:59:59-01:00"},  # past the last representable UTC instant
    {"to": "0001-01-01T00:00:00+01:00"},  # before the first one
    # sort
    {"sort": "foo"},
    {"sort": "created_at"},
    {"sort": "+date"},
    {"sort": "date,name"},
    {"sort": ""},
    # unknown parameters
    {"foo": "1"},
    {"Q": "x"},
    {"page": "2"},
    {"offset": "10"},
    # type / category / status / match
    {"type": "image"},
    {"type": "image/"},
    {"type": "*/*"},
    {"type": "../../etc/passwd"},
    {"type": "image/png; charset=x"},
    {"type": "a" * 70 + "/png"},
    {"category": "pictures"},
    {"category": "IMAGE"},
    {"status": "done"},
    {"status": "COMMITTED"},
    {"match": "regex"},
    # tags
    {"tag": "x" * 65},
    {"tag": [f"t{i}" for i in range(11)]},
    {"tag": "-leading"},
    {"tag": "bad/tag"},
    {"tag": "a,b;c"},
    # folders
    {"folder": "/a/../b/"},
    {"folder": ".."},
    {"folder": "/./"},
    {"folder": "x/" * 40},
    # sizes
    {"min_size": "-5"},
    {"max_size": "abc"},
    {"min_size": str(2**63)},
    {"max_size": "1" * 30},
    # q
    {"q": "x" * 201},
    {"q": "ü" * 201},
]


@pytest.mark.parametrize("params", BAD_QUERIES, ids=lambda p: json.dumps(p)[:60])
async def test_bad_search_parameters_are_400_json(client: Client, params: dict[str, Any]) -> None:
    await api_error(await files_query(client, **params), 400)
    await api_error(await client.get("/files", params=params), 400)


async def test_boundary_values_are_accepted(client: Client) -> None:
    for params in [
        {"limit": "1"},
        {"limit": "200"},
        {"q": "x" * 200},
        {"tag": "x" * 64},
        {"tag": [f"t{i}" for i in range(10)]},
        {"min_size": str(2**63 - 1)},
        {"from": "2024-01-01", "to": "2024-01-02T00:00:00+05:30"},
        {"sort": "-size"},
        {"type": "IMAGE/*"},
    ]:
        resp = await files_query(client, owner=token(), **params)
        assert resp.status == 200, f"{params}: {await resp.text()}"
        assert (await resp.json())["files"] == []


async def _cursor(client: Client, owner: str, sort: str) -> str:
    body = await (await files_query(client, owner=owner, sort=sort, limit=2)).json()
    assert body["next_cursor"], body
    return str(body["next_cursor"])


async def test_bad_cursors_are_400_json(seeded: tuple[Client, str, Any]) -> None:
    client, owner, rows = seeded
    fid = rows[0]["id"]
    name_cursor = await _cursor(client, owner, "name")
    date_cursor = await _cursor(client, owner, "-date")
    bad = {
        "garbage": ("!!!not base64!!!", "-date"),
        "not json": (b64(b"\xff\xfe garbage"), "-date"),
        "json object": (b64({"a": 1}), "-date"),
        "json number": (b64(5), "-date"),
        "json string": (b64("abc"), "-date"),
        "short list": (b64(["date"]), "-date"),
        "long list": (b64(["date", "2024-01-01T00:00:00+00:00", fid, 1]), "-date"),
        "bad id": (b64(["date", "2024-01-01T00:00:00+00:00", "nothex"]), "-date"),
        "bad date": (b64(["date", "not a date", fid]), "-date"),
        "date as number": (b64(["date", 5, fid]), "-date"),
        "naive date": (b64(["date", "2024-01-01T00:00:00", fid]), "-date"),
        "size as string": (b64(["size", "5", fid]), "size"),
        "size as bool": (b64(["size", True, fid]), "size"),
        "size as float": (b64(["size", 1.5, fid]), "size"),
        "size too big": (b64(["size", 2**70, fid]), "size"),
        "negative size": (b64(["size", -(2**70), fid]), "-size"),
        "name too long": (b64(["name", "x" * 256, fid]), "name"),
        "name as list": (b64(["name", ["x"], fid]), "name"),
        "too long": ("A" * 3000, "-date"),
        # Of the right sort, values that cannot be bound: an instant before year 1 or
        # after 9999 once in UTC, a lone surrogate (JSON carries it, no database takes it).
        "date before year 1 in UTC": (b64(["-date", "0001-01-01T00:00:00+01:00", fid]), "-date"),
        "date after 9999 in UTC": (b64(["date", "9999-12-31T23:30:00-01:00", fid]), "date"),
        "unparsable date": (b64(["-date", "not a date", fid]), "-date"),
        "naive date of the sort": (b64(["-date", "2024-01-01T00:00:00", fid]), "-date"),
        "lone surrogate in a name": (b64(["name", "\ud800", fid]), "name"),
        "NUL in a name": (b64(["name", "a\x00b", fid]), "name"),
        "name cursor, size sort": (name_cursor, "size"),
        "name cursor, date sort": (name_cursor, "-date"),
        "date cursor, name sort": (date_cursor, "name"),
        "descending cursor, ascending sort": (date_cursor, "date"),
    }
    failures = []
    for what, (cursor, sort) in bad.items():
        resp = await files_query(client, owner=owner, sort=sort, cursor=cursor)
        if resp.status != 400:
            failures.append(f"{what}: {resp.status} {(await resp.text())[:200]}")
            continue
        await api_error(resp, 400)
    assert not failures, "\n".join(failures)
    # The good ones work.
    assert (await files_query(client, owner=owner, sort="name", cursor=name_cursor)).status == 200


# --- q: wildcards, quotes and Unicode are literal text ---------------------------------------


async def test_sql_and_like_wildcards_in_q_are_literal(seeded: tuple[Client, str, Any]) -> None:
    client, owner, rows = seeded
    for q in ["%", "_", "\\", "'", "100%", "snake_case", "back\\slash", "'; DROP TABLE files; --",
              "ünïcödé", "ÜNÏ", "STRASSE", "ß", "🎉", '"', "%%", "__", "[a-z]", "*", "?", ".txt",
              "' OR '1'='1", "\\%", "\\_"]:  # fmt: skip
        resp = await files_query(client, owner=owner, q=q, sort="name", limit=200)
        assert resp.status == 200, f"{q!r}: {await resp.text()}"
        got = [i["name"] for i in (await resp.json())["files"]]
        want = sorted(
            (r["name"] for r in rows if q.casefold() in r["name"].casefold()), key=str.casefold
        )
        assert got == want, q
    # The catalog is still there.
    resp = await files_query(client, owner=owner, limit=200)
    assert len((await resp.json())["files"]) == len(rows)


@pytest.mark.parametrize("raw", ["%00", "a%00b", "%FF", "%ED%A0%80", "%C0%AF", "%0A"])
@pytest.mark.parametrize("param", ["q", "owner"])
async def test_odd_bytes_in_text_parameters_never_fail(
    seeded: tuple[Client, str, Any], raw: str, param: str
) -> None:
    """A NUL or a broken UTF-8 sequence matches nothing (or is refused); it is never a 5xx."""
    client, owner, _ = seeded
    query = f"owner={owner}&q={raw}" if param == "q" else f"owner={raw}"
    url = URL(f"/api/v1/files?{query}", encoded=True)
    resp = await client.get(url)
    assert resp.status < 500, await resp.text()
    if resp.status == 200:
        assert (await resp.json())["files"] == []
    else:
        await api_error(resp, 400)


# --- file ids -------------------------------------------------------------------------------

BAD_IDS = [
    "nope",
    "0" * 32,
    "A" * 32,
    "0" * 31,
    "0" * 33,
    "g" * 32,
    "%2e%2e",
    "%C3%BC" * 32,
    "0" * 300,
]


@pytest.mark.parametrize("file_id", BAD_IDS)
async def test_malformed_and_unknown_file_ids_are_404(client: Client, file_id: str) -> None:
    for prefix in ("", "/api/v1"):
        url = URL(f"{prefix}/file/{file_id}", encoded=True)
        await api_error(await client.get(url), 404)
        await api_error(await client.get(url / "content"), 404)
        await api_error(await client.delete(url), 404)
        await api_error(await client.patch(url, json={"name": "x"}), 404)


# --- PATCH /file/{id} -----------------------------------------------------------------------


@pytest.fixture
async def one_file(client: Client) -> tuple[Client, dict[str, Any]]:
    row = file_row(name="keep.txt", owner=token(), created_at=NOW, tags=["a"], folder="/x/")
    await insert_files(client, [row])
    return client, row


async def _unchanged(client: Client, row: dict[str, Any]) -> None:
    body = await (await client.get(f"/api/v1/file/{row['id']}")).json()
    assert (body["name"], body["folder"], body["tags"]) == (row["name"], row["folder"], row["tags"])


BAD_PATCHES: list[tuple[str, str | bytes, int | tuple[int, ...]]] = [
    ("text/plain", '{"name": "x"}', (400, 415)),
    ("", '{"name": "x"}', (400, 415)),
    ("application/x-www-form-urlencoded", "name=x", (400, 415)),
    ("application/json", "not json", 400),
    ("application/json", "", 400),
    ("application/json", b"\xff\xfe{}", 400),
    ("application/json", '{"name": "x"', 400),
    ("application/json", "[1, 2]", 400),
    ("application/json", "null", 400),
    ("application/json", '"name"', 400),
    ("application/json", '{"owner": "someone"}', 400),
    ("application/json", '{"name": "ok.txt", "size": 5}', 400),
    ("application/json", '{"status": "committed"}', 400),
    ("application/json", '{"name": 5}', 400),
    ("application/json", '{"name": null}', 400),
    ("application/json", '{"name": ""}', 400),
    ("application/json", '{"name": "   "}', 400),
    ("application/json", '{"name": ["a"]}', 400),
    ("application/json", '{"folder": 5}', 400),
    ("application/json", '{"folder": "/a/../b/"}', 400),
    ("application/json", '{"folder": null}', 400),
    ("application/json", '{"tags": "red"}', 400),
    ("application/json", '{"tags": [1]}', 400),
    ("application/json", '{"tags": [null]}', 400),
    ("application/json", '{"tags": {"a": 1}}', 400),
    ("application/json", json.dumps({"tags": ["x" * 65]}), 400),
    ("application/json", json.dumps({"tags": [f"t{i}" for i in range(33)]}), 400),
    ("application/json", json.dumps({"tags": ["bad/tag"]}), 400),
    # Valid parts with an invalid one: nothing at all may change.
    ("application/json", '{"name": "renamed.txt", "tags": [1]}', 400),
    ("application/json", '{"folder": "/moved/", "tags": ["x" * 65]}', 400),
    ("application/json", '{"name": "renamed.txt", "folder": "/.."}', 400),
    # Deeply nested JSON that fits the size limit.
    ("application/json", '{"name": ' + "[" * 5000 + "]" * 5000 + "}", 400),
]


@pytest.mark.parametrize(
    ("ctype", "body", "status"), BAD_PATCHES, ids=[f"{c}:{str(b)[:40]}" for c, b, _ in BAD_PATCHES]
)
async def test_bad_patches_are_4xx_json_and_change_nothing(
    one_file: tuple[Client, dict[str, Any]],
    ctype: str,
    body: str | bytes,
    status: int | tuple[int, ...],
) -> None:
    client, row = one_file
    headers = {"Content-Type": ctype} if ctype else {}
    data = body.encode() if isinstance(body, str) else body
    resp = await client.patch(f"/api/v1/file/{row['id']}", data=data, headers=headers)
    await api_error(resp, status)
    await _unchanged(client, row)


@pytest.mark.parametrize("field", ["name", "folder"])
async def test_lone_surrogates_in_patch_never_fail(
    one_file: tuple[Client, dict[str, Any]], field: str
) -> None:
    """JSON may spell a lone surrogate (not encodable as UTF-8): refused or cleaned, not a 5xx."""
    client, row = one_file
    body = '{"' + field + '": "a\\ud800b"}'
    resp = await client.patch(
        f"/api/v1/file/{row['id']}", data=body, headers={"Content-Type": "application/json"}
    )
    if resp.status == 200:
        value = (await resp.json())[field]
        value.encode()  # valid text
        assert "a" in value and "b" in value
    else:
        await api_error(resp, 400)
        await _unchanged(client, row)


async def test_lone_surrogate_folder_path_never_fails(client: Client) -> None:
    resp = await client.post(
        "/api/v1/folders",
        data='{"path": "/a\\ud800/"}',
        headers={"Content-Type": "application/json"},
    )
    if resp.status == 201:
        (await resp.json())["path"].encode()
    else:
        await api_error(resp, 400)


async def test_oversized_json_is_413(one_file: tuple[Client, dict[str, Any]]) -> None:
    client, row = one_file
    big = json.dumps({"name": "x" * (20 * 1024)}).encode()
    url = f"/api/v1/file/{row['id']}"
    resp = await client.patch(url, data=big, headers={"Content-Type": "application/json"})
    await api_error(resp, 413)

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the reader must stop
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    resp = await client.patch(url, data=chunked(), headers={"Content-Type": "application/json"})
    await api_error(resp, 413)
    resp = await client.post(
        "/api/v1/folders", data=big, headers={"Content-Type": "application/json"}
    )
    await api_error(resp, 413)
    await _unchanged(client, row)


# --- folders --------------------------------------------------------------------------------


async def test_bad_folder_requests_are_4xx_json(client: Client) -> None:
    for body, status in [
        ({}, 400),
        ({"path": 5}, 400),
        ({"path": None}, 400),
        ({"path": ".."}, 400),
        ({"path": "/a/./b/"}, 400),
        ({"path": "x" * 2000}, 400),
        ({"path": "/a" * 40}, 400),
    ]:
        await api_error(await client.post("/api/v1/folders", json=body), status)
    resp = await client.post(
        "/api/v1/folders", data="path=/a/", headers={"Content-Type": "text/plain"}
    )
    await api_error(resp, (400, 415))
    await api_error(await client.delete("/api/v1/folders"), 400)
    await api_error(await client.delete("/api/v1/folders", params={"path": "/"}), 400)
    await api_error(await client.delete("/api/v1/folders", params={"path": "/../"}), 400)
