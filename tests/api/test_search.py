"""GET /files: search, filters, every sort and keyset pagination against a seeded catalog.

About 3000 rows are inserted straight into the catalog; every answer is compared with the one
computed in Python from the same seed data. Each test uses owners of its own and filters on
them, so tests sharing a worker's PostgreSQL database never see each other's rows.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete

from tests.app_fixtures import MakeClient
from tests.auth.helpers import bearer, make_users
from tests.pipeline.test_local_pipeline import upload, wait_file
from tusserver.catalog.files import fold_name
from tusserver.catalog.schema import files as files_table

from .helpers import Client, api_client, file_row, insert_files, jwt_client, runtime, token

Row = dict[str, Any]

EPOCH = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
SPAN_DAYS = 40

NAME_BASES = [
    "Ünïcödé report",
    "ünïcödé notes",
    "straße plan",
    "STRASSE map",
    "Strasse-old",
    "emoji 🎉 party",
    "🎉",
    "cat 🐈 pics",
    "100% done",
    "50%off",
    "a%b",
    "axb",
    "a_b",
    "aXb",
    "snake_case_name",
    "back\\slash",
    "a\\b",
    "Photo",
    "photo",
    "PHOTO album",
    "résumé",
    "RÉSUMÉ final",
    "École",
    "naïve",
    "'; DROP TABLE files; --",
    "plain",
    "Ωmega",
    "日本語のファイル",
]
EXTS = ["png", "jpg", "mp4", "pdf", "txt", "bin", ""]
TYPES = [
    ("image/png", "image"),
    ("image/jpeg", "image"),
    ("image/gif", "image"),
    ("video/mp4", "video"),
    ("audio/mpeg", "audio"),
    ("application/pdf", "document"),
    ("text/plain", "other"),
    ("application/octet-stream", "other"),
    ("application/imagex", "other"),
]
FOLDERS = ["/", "/photos/", "/photos/2024/", "/docs/", "/Ünï/", "/a b/"]
TAGS = ["red", "green", "blue", "big", "tax:2024", "ü-tag", "with space"]
STATUSES = ["committed"] * 12 + ["rejected", "failed", "received", "validating"]
SORTS = ["date", "-date", "name", "-name", "size", "-size"]


@dataclass
class Catalog:
    client: Client
    rows: list[Row]
    owner_a: str
    owner_b: str

    def of(self, owner: str) -> list[Row]:
        return [r for r in self.rows if r["owner"] == owner]


def build_rows(owners: list[str], count: int, seed: int = 1234) -> list[Row]:
    rnd = random.Random(seed)
    sizes = [rnd.randrange(0, 50_000_000) for _ in range(400)] + [0, 1, 2**40]
    stamps = [
        EPOCH
        + dt.timedelta(seconds=rnd.randrange(SPAN_DAYS * 86400), microseconds=rnd.randrange(10**6))
        for _ in range(count // 2)
    ]
    stamps += [EPOCH, EPOCH + dt.timedelta(days=10)]  # exact midnights: range edges
    rows = []
    for i in range(count):
        base = NAME_BASES[i % len(NAME_BASES)]
        ext = rnd.choice(EXTS)
        # Small number space: many exact duplicate names (ties broken by id).
        name = f"{base} {rnd.randrange(40):02d}" + (f".{ext}" if ext else "")
        status = rnd.choice(STATUSES)
        mime, category = rnd.choice(TYPES)
        if status == "received":
            mime, category = None, None  # not sniffed yet
        rows.append(
            file_row(
                name=name,
                owner=owners[0] if i % 3 else owners[1],
                created_at=rnd.choice(stamps),  # duplicates: ties broken by id
                size=rnd.choice(sizes),
                detected_type=mime,
                category=category,
                folder=rnd.choice(FOLDERS),
                status=status,
                tags=rnd.sample(TAGS, rnd.randrange(4)),
            )
        )
    return rows


@pytest.fixture
async def catalog(make_client: MakeClient) -> Catalog:
    client = await api_client(make_client)
    a, b = token("owner-a-"), token("owner-b-")
    rows = build_rows([a, b], 3000)
    await insert_files(client, rows)
    return Catalog(client, rows, a, b)


# --- expected answers -----------------------------------------------------------------------


def sort_key(sort: str) -> Callable[[Row], tuple[Any, str]]:
    field = sort.lstrip("-")
    if field == "date":
        return lambda r: (r["created_at"], r["id"])
    if field == "name":
        return lambda r: (fold_name(r["name"])[:255], r["id"])
    return lambda r: (r["size"], r["id"])


def expected(rows: Iterable[Row], pred: Callable[[Row], bool], sort: str = "-date") -> list[str]:
    chosen = sorted((r for r in rows if pred(r)), key=sort_key(sort), reverse=sort.startswith("-"))
    return [r["id"] for r in chosen]


async def collect(client: Client, params: dict[str, Any], *, headers: Any = None) -> list[str]:
    """Follow next_cursor to the end; every page is at most ``limit`` items."""
    limit = int(params.get("limit", 50))
    ids: list[str] = []
    cursor = None
    for _ in range(10_000):
        query = dict(params)
        if cursor:
            query["cursor"] = cursor
        resp = await client.get("/api/v1/files", params=query, headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert len(body["files"]) <= limit
        ids += [item["id"] for item in body["files"]]
        cursor = body["next_cursor"]
        if cursor is None:
            assert len(body["files"]) < limit or not body["files"]
            return ids
        assert len(body["files"]) == limit
    raise AssertionError("pagination never ended")


async def check(
    cat: Catalog, params: dict[str, Any], pred: Callable[[Row], bool], owner: str | None = None
) -> list[str]:
    owner = owner or cat.owner_a
    sort = params.get("sort", "-date")
    want = expected(cat.of(owner), pred, sort)
    got = await collect(cat.client, {"owner": owner, "limit": 200, **params})
    assert len(got) == len(set(got)), f"{params}: repeated items"
    assert got == want, f"{params}: {len(got)} items, expected {len(want)}"
    return got


# --- text search ----------------------------------------------------------------------------

TEXT_QUERIES = [
    "photo",
    "PHOTO",
    "pHoTo alb",
    "ß",
    "STRASSE",
    "strasse-",
    "ünï",
    "ÜNÏCÖDÉ",
    "é",
    "RÉSUMÉ",
    "🎉",
    "🐈 pics",
    "日本語",
    "Ω",
    "ωmega",
    "%",
    "100%",
    "_",
    "a_b",
    "a%b",
    "\\",
    "a\\b",
    "%_",
    "'; drop table",
    "no such name anywhere",
    " 0",
    ".png",
]


@pytest.mark.parametrize("match", ["substring", "prefix"])
async def test_text_search_is_casefolded_and_literal(catalog: Catalog, match: str) -> None:
    queries = [*TEXT_QUERIES, "a", "st", "É", "🎉 ", "'"]
    nonempty = 0
    for q in queries:
        folded = fold_name(q)
        if match == "prefix":
            got = await check(
                catalog,
                {"q": q, "match": "prefix"},
                lambda r, f=folded: fold_name(r["name"]).startswith(f),
            )
        else:
            got = await check(catalog, {"q": q}, lambda r, f=folded: f in fold_name(r["name"]))
        nonempty += bool(got)
    assert nonempty >= 10  # the seed data really exercises the queries
    # Wildcards are literal: '_' and '%' match only themselves.
    a_b = await collect(catalog.client, {"owner": catalog.owner_a, "q": "a_b", "limit": 200})
    names = {r["id"]: r["name"] for r in catalog.rows}
    assert a_b and all("a_b" in names[i].casefold() for i in a_b)
    assert not any(names[i].startswith(("axb", "aXb", "a%b")) for i in a_b)
    # casefold, not lower(): 'ß' finds 'STRASSE' and 'strasse' finds 'straße'.
    found = {
        names[i].split(" ")[0]
        for i in await collect(catalog.client, {"owner": catalog.owner_a, "q": "ß", "limit": 200})
    }
    assert {"straße", "STRASSE", "Strasse-old"} <= found


async def test_search_answers_on_both_api_paths_and_without_owner(catalog: Catalog) -> None:
    old = await catalog.client.get(
        "/files", params={"owner": catalog.owner_b, "q": "🎉", "limit": 5}
    )
    new = await catalog.client.get(
        "/api/v1/files", params={"owner": catalog.owner_b, "q": "🎉", "limit": 5}
    )
    assert old.status == new.status == 200
    old_body, new_body = await old.json(), await new.json()
    assert [i["id"] for i in old_body["files"]] == [i["id"] for i in new_body["files"]]
    assert old_body["files"][0]["content_url"].startswith("/file/")
    assert new_body["files"][0]["content_url"].startswith("/api/v1/file/")
    # The operator (auth off) without ?owner= sees both owners' rows.
    got = set(await collect(catalog.client, {"q": "日本語", "limit": 200}))
    seeded = {r["id"] for r in catalog.rows if "日本語" in r["name"]}
    assert seeded <= got
    owners = {r["owner"] for r in catalog.rows if r["id"] in got}
    assert owners == {catalog.owner_a, catalog.owner_b}


# --- filters --------------------------------------------------------------------------------


def _at(day: int, hour: int = 0) -> dt.datetime:
    return EPOCH + dt.timedelta(days=day, hours=hour)


FILTERS: list[tuple[dict[str, Any], Callable[[Row], bool]]] = [
    ({"type": "image/png"}, lambda r: r["detected_type"] == "image/png"),
    ({"type": "IMAGE/JPEG"}, lambda r: r["detected_type"] == "image/jpeg"),
    ({"type": "image/*"}, lambda r: (r["detected_type"] or "").startswith("image/")),
    ({"type": "application/*"}, lambda r: (r["detected_type"] or "").startswith("application/")),
    ({"type": "video/mp4", "sort": "size"}, lambda r: r["detected_type"] == "video/mp4"),
    ({"category": "image"}, lambda r: r["category"] == "image"),
    ({"category": "document", "sort": "name"}, lambda r: r["category"] == "document"),
    ({"min_size": "10000000"}, lambda r: r["size"] >= 10_000_000),
    ({"max_size": "1000000", "sort": "-size"}, lambda r: r["size"] <= 1_000_000),
    ({"min_size": "0", "max_size": "0"}, lambda r: r["size"] == 0),
    ({"min_size": "5000000", "max_size": "7000000"}, lambda r: 5_000_000 <= r["size"] <= 7_000_000),
    ({"min_size": str(2**40)}, lambda r: r["size"] >= 2**40),
    ({"from": "2024-03-10"}, lambda r: r["created_at"] >= _at(9)),
    ({"to": "2024-03-11"}, lambda r: r["created_at"] < _at(10)),
    ({"from": "2024-03-01", "to": "2024-03-02"}, lambda r: r["created_at"] < _at(1)),
    (
        {"from": "2024-03-05T12:00:00+02:00", "to": "2024-03-20T06:30:00Z", "sort": "date"},
        lambda r: _at(4, 10) <= r["created_at"] < _at(19, 6) + dt.timedelta(minutes=30),
    ),
    ({"from": "2024-03-15T00:00:00"}, lambda r: r["created_at"] >= _at(14)),  # naive: UTC
    ({"tag": "red"}, lambda r: "red" in r["tags"]),
    ({"tag": ["red", "blue"]}, lambda r: {"red", "blue"} <= set(r["tags"])),
    (
        {"tag": ["red", "blue", "big"], "sort": "name"},
        lambda r: {"red", "blue", "big"} <= set(r["tags"]),
    ),
    ({"tag": "ü-tag"}, lambda r: "ü-tag" in r["tags"]),
    ({"tag": "tax:2024"}, lambda r: "tax:2024" in r["tags"]),
    ({"tag": "with space"}, lambda r: "with space" in r["tags"]),
    ({"tag": "unused-tag"}, lambda r: False),
    ({"folder": "/photos/"}, lambda r: r["folder"] == "/photos/"),
    ({"folder": "photos"}, lambda r: r["folder"] == "/photos/"),  # normalized
    ({"folder": "/photos/2024"}, lambda r: r["folder"] == "/photos/2024/"),
    ({"folder": "/Ünï/"}, lambda r: r["folder"] == "/Ünï/"),
    ({"folder": "/a b/"}, lambda r: r["folder"] == "/a b/"),
    ({"folder": "/"}, lambda r: r["folder"] == "/"),
    ({"status": "committed"}, lambda r: r["status"] == "committed"),
    ({"status": "rejected"}, lambda r: r["status"] == "rejected"),
    ({"status": "received", "sort": "name"}, lambda r: r["status"] == "received"),
    ({"status": "validating"}, lambda r: r["status"] == "validating"),
    (
        {
            "category": "image",
            "tag": "red",
            "min_size": "1000000",
            "folder": "/photos/",
            "sort": "-size",
        },
        lambda r: (
            r["category"] == "image"
            and "red" in r["tags"]
            and r["size"] >= 1_000_000
            and r["folder"] == "/photos/"
        ),
    ),
    (
        {"q": "photo", "type": "image/*", "status": "committed", "sort": "-name"},
        lambda r: (
            "photo" in r["name"].casefold()
            and (r["detected_type"] or "").startswith("image/")
            and r["status"] == "committed"
        ),
    ),
    (
        {"q": "ß", "match": "prefix", "from": "2024-03-03", "to": "2024-03-30", "tag": "green"},
        lambda r: (
            r["name"].casefold().startswith("ss")
            and _at(2) <= r["created_at"] < _at(29)
            and "green" in r["tags"]
        ),
    ),
]


async def test_filters_match_the_python_answer(catalog: Catalog) -> None:
    empty = 0
    for params, pred in FILTERS:
        got = await check(catalog, params, pred)
        empty += not got
    assert empty <= 3  # the seed data really exercises the filters
    # Owner B has its own answer.
    await check(catalog, {"tag": "red"}, lambda r: "red" in r["tags"], owner=catalog.owner_b)


async def test_filters_paginate_with_small_limits(catalog: Catalog) -> None:
    cases = [
        (
            {"type": "image/*", "limit": 7, "sort": "name"},
            lambda r: (r["detected_type"] or "").startswith("image/"),
        ),
        (
            {"tag": ["red", "green"], "limit": 3, "sort": "-size"},
            lambda r: {"red", "green"} <= set(r["tags"]),
        ),
        ({"q": "%", "limit": 5, "sort": "size"}, lambda r: "%" in r["name"]),
        ({"q": "\\", "limit": 4, "sort": "-name"}, lambda r: "\\" in r["name"]),
        (
            {"folder": "/Ünï/", "status": "committed", "limit": 11},
            lambda r: r["folder"] == "/Ünï/" and r["status"] == "committed",
        ),
    ]
    for params, pred in cases:
        assert len(await check(catalog, params, pred)) > params["limit"]


# --- sorts and pagination -------------------------------------------------------------------


@pytest.mark.parametrize("sort", SORTS)
async def test_every_sort_paginates_the_whole_catalog_exactly(catalog: Catalog, sort: str) -> None:
    want = expected(catalog.of(catalog.owner_a), lambda r: True, sort)
    assert len(want) == 2000
    got = await collect(catalog.client, {"owner": catalog.owner_a, "sort": sort, "limit": 37})
    assert len(got) == len(set(got))
    assert got == want
    # Ties exist in every sort key, so the id tie-break really is exercised.
    values = [sort_key(sort)(r)[0] for r in catalog.of(catalog.owner_a)]
    assert len(set(values)) < len(values)


async def test_default_sort_is_newest_first_and_default_limit_50(catalog: Catalog) -> None:
    resp = await catalog.client.get("/api/v1/files", params={"owner": catalog.owner_b})
    body = await resp.json()
    want = expected(catalog.of(catalog.owner_b), lambda r: True, "-date")
    assert [i["id"] for i in body["files"]] == want[:50]
    assert body["next_cursor"]
    item = body["files"][0]
    row = next(r for r in catalog.rows if r["id"] == item["id"])
    assert item["name"] == row["name"]
    assert item["size"] == row["size"]
    assert item["folder"] == row["folder"]
    assert sorted(item["tags"]) == sorted(row["tags"])
    assert dt.datetime.fromisoformat(item["created_at"]) == row["created_at"]


async def test_pagination_is_stable_while_files_are_added_and_removed(catalog: Catalog) -> None:
    client, owner = catalog.client, catalog.owner_a
    want = expected(catalog.of(owner), lambda r: True, "-date")
    now = dt.datetime.now(dt.UTC)
    got: list[str] = []
    added: set[str] = set()
    cursor = None
    page = 0
    while True:
        params: dict[str, Any] = {"owner": owner, "sort": "-date", "limit": 40}
        if cursor:
            params["cursor"] = cursor
        body = await (await client.get("/api/v1/files", params=params)).json()
        ids = [i["id"] for i in body["files"]]
        got += ids
        cursor = body["next_cursor"]
        if cursor is None:
            break
        page += 1
        # Newer files arrive between two pages (one with the very same name as a seen one)...
        fresh = [
            file_row(
                name=f"new {page} {k}",
                owner=owner,
                created_at=now + dt.timedelta(seconds=page, microseconds=k),
            )
            for k in range(3)
        ]
        fresh.append(file_row(name=body["files"][-1]["name"], owner=owner, created_at=now))
        await insert_files(client, fresh)
        added |= {r["id"] for r in fresh}
        # ... and some already seen ones are deleted, the cursor's own row included.
        async with runtime(client).db.engine.begin() as conn:
            await conn.execute(delete(files_table).where(files_table.c.id.in_([ids[0], ids[-1]])))
    assert page >= 40
    assert not added & set(got)
    assert len(got) == len(set(got))
    assert got == want
    # A new search sees the new files first.
    first = await collect(client, {"owner": owner, "limit": 200})
    assert set(first[: len(added)]) == added


# --- owners ---------------------------------------------------------------------------------


async def test_users_see_only_their_own_files_admins_see_all(make_client: MakeClient) -> None:
    client = await jwt_client(make_client)
    users = await make_users(client, alice="user", bob="user", root="admin")
    alice, bob, root = users["alice"], users["bob"], users["root"]
    mark = token("iso")
    rows = build_rows([alice.id, bob.id], 300, seed=99)
    for r in rows:  # a unique mark in every name, so the admin's unfiltered search is exact
        r["name"] = f"{mark} {r['name']}"
        r["name_folded"] = fold_name(r["name"])
    await insert_files(client, rows)
    mine = {u.id: [r for r in rows if r["owner"] == u.id] for u in (alice, bob)}

    for user in (alice, bob):
        h = bearer(user.access)
        for params, pred in [
            ({}, lambda r: True),
            ({"q": "photo"}, lambda r: "photo" in r["name"].casefold()),
            ({"tag": "red", "sort": "size"}, lambda r: "red" in r["tags"]),
            ({"owner": user.id, "sort": "name"}, lambda r: True),
        ]:
            sort = str(params.get("sort", "-date"))
            got = await collect(client, {"limit": 23, **params}, headers=h)
            assert got == expected(mine[user.id], pred, sort)
    # A user may not ask for someone else's files.
    resp = await client.get("/api/v1/files", params={"owner": bob.id}, headers=bearer(alice.access))
    assert resp.status == 400
    # Someone else's file is a 404, exactly like a missing one.
    bobs = mine[bob.id][0]["id"]
    h = bearer(alice.access)
    assert (await client.get(f"/api/v1/file/{bobs}", headers=h)).status == 404
    assert (await client.get(f"/api/v1/file/{bobs}/content", headers=h)).status == 404
    assert (await client.patch(f"/api/v1/file/{bobs}", json={"name": "x"}, headers=h)).status == 404
    assert (await client.delete(f"/api/v1/file/{bobs}", headers=h)).status == 404
    assert (await client.get(f"/api/v1/file/{bobs}", headers=bearer(bob.access))).status == 200
    # Without a token: 401.
    assert (await client.get("/api/v1/files")).status == 401

    admin = bearer(root.access)
    got = await collect(client, {"q": mark, "limit": 50, "sort": "name"}, headers=admin)
    assert got == expected(rows, lambda r: True, "name")
    got = await collect(client, {"owner": bob.id, "limit": 50}, headers=admin)
    assert got == expected(mine[bob.id], lambda r: True)
    assert (await client.get(f"/api/v1/file/{bobs}", headers=admin)).status == 200


async def test_names_match_whatever_their_unicode_form(make_client: MakeClient) -> None:
    """A name typed on macOS arrives decomposed (e + U+0301), one typed elsewhere composed:
    a search in either form finds both, and the name sort pages through both without
    skipping or repeating."""
    client = await api_client(make_client)
    mark = token("nf")
    nfd = unicodedata.normalize("NFD", f"{mark} Café.txt")
    nfc = unicodedata.normalize("NFC", f"{mark} CAFÉ menu.txt")
    other = f"{mark} cafe plain.txt"
    ids = {}
    for name in (nfd, nfc, other):
        ids[name] = (await wait_file(client, await upload(client, b"x", filename=name)))["id"]
    for q in ("café", unicodedata.normalize("NFD", "CAFÉ")):
        found = await collect(client, {"q": f"{mark} {q}", "limit": 50})
        assert set(found) == {ids[nfd], ids[nfc]}, q
    paged = await collect(client, {"q": mark, "sort": "name", "limit": 1})
    assert sorted(paged) == sorted(ids.values()) and len(paged) == 3
