"""Organizing files: rename, move, tags, folders, and deleting files with their bytes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select

from tests.app_fixtures import TUS, MakeClient
from tests.auth.helpers import bearer, make_users
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tusserver.catalog import files as catalog_files
from tusserver.catalog.schema import file_tags, file_uploads, files
from tusserver.catalog.schema import folders as folders_table

from .helpers import (
    Client,
    api_client,
    api_error,
    file_row,
    insert_files,
    jwt_client,
    runtime,
    token,
)
from .test_search import collect

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


async def committed(client: Client, data: bytes, name: str) -> dict[str, Any]:
    path = await upload(client, data, filename=name)
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    info["tus_path"] = path
    return info


async def patch(client: Client, file_id: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.patch(f"/api/v1/file/{file_id}", json=body)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def search(client: Client, **params: Any) -> list[str]:
    resp = await client.get("/api/v1/files", params={"limit": 200, **params})
    assert resp.status == 200, await resp.text()
    return [i["id"] for i in (await resp.json())["files"]]


async def folders(client: Client) -> list[str]:
    resp = await client.get("/api/v1/folders")
    assert resp.status == 200
    result: list[str] = (await resp.json())["folders"]
    return result


async def test_rename_sanitizes_and_is_searchable(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("ren")
    data = b"hello rename\n" * 50
    info = await committed(client, data, f"{mark}-old.txt")
    fid = info["id"]
    assert await search(client, q=f"{mark}-old") == [fid]

    body = await patch(client, fid, {"name": f"../../etc/{mark}\\ev:il*?.txt"})
    name = body["name"]
    for bad in "/\\:*?":
        assert bad not in name, name
    assert not name.startswith(".")
    assert mark in name and name.endswith(".txt")
    assert (await (await client.get(f"/file/{fid}")).json())["name"] == name

    body = await patch(client, fid, {"name": f"Ünïcödé 🎉 {mark}.TXT"})
    assert body["name"] == f"Ünïcödé 🎉 {mark}.TXT"
    # The folded name follows: case-insensitive search finds the new name, not the old one.
    assert await search(client, q=f"üNÏCÖDÉ 🎉 {mark.upper()}") == [fid]
    assert await search(client, q=f"{mark}-old") == []
    assert fid in await search(client, q="ünïcödé", match="prefix")
    # The download carries the new name; the bytes are the same.
    resp = await client.get(f"/api/v1/file/{fid}/content")
    assert resp.status == 200
    assert "filename*=UTF-8''" in resp.headers["Content-Disposition"]
    assert hashlib.sha256(await resp.read()).hexdigest() == info["sha256"]


async def test_move_normalizes_the_folder_and_lists_ancestors(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("mv")
    info = await committed(client, png_bytes(500), f"{mark}.png")
    fid = info["id"]
    assert info["folder"] == "/"

    body = await patch(client, fid, {"folder": f"{mark}//photos/2024 trip/"})
    assert body["folder"] == f"/{mark}/photos/2024 trip/"
    listed = await folders(client)
    for p in ["/", f"/{mark}/", f"/{mark}/photos/", f"/{mark}/photos/2024 trip/"]:
        assert p in listed
    assert listed == sorted(listed)
    assert await search(client, folder=f"/{mark}/photos/2024 trip") == [fid]
    assert await search(client, folder=f"{mark}/photos") == []  # exact folder, not a subtree

    # Segments are sanitized like file names.
    body = await patch(client, fid, {"folder": f"/{mark}/a:b/Ünï/"})
    assert body["folder"] == f"/{mark}/a_b/Ünï/"
    # Rename and move at once.
    body = await patch(client, fid, {"name": "x.png", "folder": "/"})
    assert (body["name"], body["folder"]) == ("x.png", "/")
    assert await search(client, folder=f"/{mark}/a_b/Ünï/") == []


async def test_tags_set_replace_dedupe_and_search(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    owner = token("tags")
    rows = [file_row(name=f"f{i}", owner=owner, created_at=NOW) for i in range(3)]
    await insert_files(client, rows)
    a, b, c = (r["id"] for r in rows)

    body = await patch(client, a, {"tags": ["red", " blue ", "red", "blue", "ü-tag", "x:y z"]})
    assert body["tags"] == ["red", "blue", "ü-tag", "x:y z"]
    await patch(client, b, {"tags": ["red"]})
    assert set(await search(client, owner=owner, tag="red")) == {a, b}
    assert await search(client, owner=owner, tag=["red", "blue"]) == [a]
    assert await search(client, owner=owner, tag="ü-tag") == [a]
    assert await search(client, owner=owner, tag="x:y z") == [a]

    body = await patch(client, a, {"tags": ["green"]})  # replaces, does not add
    assert body["tags"] == ["green"]
    assert await search(client, owner=owner, tag="red") == [b]
    assert await search(client, owner=owner, tag="blue") == []
    assert await search(client, owner=owner, tag="green") == [a]
    assert (await (await client.get(f"/api/v1/file/{a}")).json())["tags"] == ["green"]

    body = await patch(client, a, {"tags": []})
    assert body["tags"] == []
    assert await search(client, owner=owner, tag="green") == []
    # A PATCH without "tags" keeps them.
    body = await patch(client, b, {"name": "renamed"})
    assert body["tags"] == ["red"]
    assert await search(client, owner=owner, tag="red") == [b]
    assert await search(client, owner=owner, tag="red", q="renamed") == [b]
    assert c not in await search(client, owner=owner, tag="red")


async def test_create_list_and_delete_folders(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    mark = token("fold")
    resp = await client.post("/api/v1/folders", json={"path": f"{mark}/empty//deep"})
    assert resp.status == 201
    assert (await resp.json())["path"] == f"/{mark}/empty/deep/"
    # Creating it again is fine.
    assert (
        await client.post("/api/v1/folders", json={"path": f"/{mark}/empty/deep/"})
    ).status == 201
    listed = await folders(client)
    assert {f"/{mark}/", f"/{mark}/empty/", f"/{mark}/empty/deep/"} <= set(listed)

    # A folder holding a file (directly or below) cannot be deleted.
    row = file_row(name="inside", owner=None, created_at=NOW, folder=f"/{mark}/full/sub/")
    await insert_files(client, [row])
    for path in (f"/{mark}/full/sub/", f"/{mark}/full/", f"/{mark}/"):
        await api_error(await client.delete("/api/v1/folders", params={"path": path}), 409)
    assert f"/{mark}/full/sub/" in await folders(client)

    # Empty ones can.
    resp = await client.delete("/api/v1/folders", params={"path": f"{mark}/empty"})
    assert resp.status == 204
    listed = await folders(client)
    assert f"/{mark}/empty/" not in listed and f"/{mark}/empty/deep/" not in listed
    assert f"/{mark}/full/sub/" in listed
    # Once the file moves out, its folder can go too.
    await patch(client, row["id"], {"folder": "/"})
    resp = await client.delete("/api/v1/folders", params={"path": f"/{mark}/"})
    assert resp.status == 204
    assert not [p for p in await folders(client) if p.startswith(f"/{mark}/")]


async def test_folders_differing_only_in_case_are_different_folders(
    make_client: MakeClient,
) -> None:
    """Folder paths keep their case: deleting the empty /docs/ leaves /Docs/ alone, and a
    file in /Photos/ does not keep the empty /photos/ (SQLite's LIKE ignores ASCII case).
    Nor are LIKE's wildcards wildcards in a path."""
    client = await api_client(make_client)
    mark = token("Case")
    for path in (f"/{mark}/Docs/", f"/{mark}/docs/", f"/{mark}/a_b/", f"/{mark}/aXb/"):
        assert (await client.post("/api/v1/folders", json={"path": path})).status == 201
    resp = await client.delete("/api/v1/folders", params={"path": f"/{mark}/docs/"})
    assert resp.status == 204
    listed = await folders(client)
    assert f"/{mark}/Docs/" in listed and f"/{mark}/docs/" not in listed
    resp = await client.delete("/api/v1/folders", params={"path": f"/{mark}/a_b/"})
    assert resp.status == 204
    assert f"/{mark}/aXb/" in await folders(client)

    row = file_row(name="inside", owner=None, created_at=NOW, folder=f"/{mark}/Photos/")
    await insert_files(client, [row])
    assert (await client.post("/api/v1/folders", json={"path": f"/{mark}/photos/"})).status == 201
    resp = await client.delete("/api/v1/folders", params={"path": f"/{mark}/photos/"})
    assert resp.status == 204, await resp.text()
    await api_error(
        await client.delete("/api/v1/folders", params={"path": f"/{mark}/Photos/"}), 409
    )


async def _count(client: Client, table: Any, file_id: str) -> int:
    async with runtime(client).db.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(table).where(table.c.file_id == file_id)
                )
            ).scalar_one()
        )


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_delete_removes_object_and_rows(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    rt = runtime(client)
    objects_dir = rt.config.objects_dir
    data = png_bytes(20_000)
    info = await committed(client, data, "gone.png")
    fid = info["id"]
    await patch(client, fid, {"tags": ["doomed"]})
    async with rt.db.engine.connect() as conn:
        key = (await conn.execute(select(files.c.storage_key).where(files.c.id == fid))).scalar()
    assert key
    obj = rt.objects.path(key)  # type: ignore[attr-defined]
    assert obj.read_bytes() == data
    assert obj.is_relative_to(objects_dir.resolve())
    assert await _count(client, file_tags, fid) == 1

    resp = await client.delete(f"/api/v1/file/{fid}")
    assert resp.status == 204
    assert not obj.exists()
    assert _files_under(objects_dir) == []  # no sidecar left either
    for url in (f"/api/v1/file/{fid}", f"/file/{fid}", f"/api/v1/file/{fid}/content"):
        await api_error(await client.get(url), 404)
    await api_error(await client.delete(f"/api/v1/file/{fid}"), 404)
    async with rt.db.engine.connect() as conn:
        left = (await conn.execute(select(func.count()).where(files.c.id == fid))).scalar_one()
    assert left == 0
    assert await _count(client, file_uploads, fid) == 0
    assert await _count(client, file_tags, fid) == 0
    assert fid not in await search(client, tag="doomed")
    # The tus URL of the upload it came from does not break.
    assert (await client.head(info["tus_path"], headers=TUS)).status < 500
    assert (await client.get(info["tus_path"], headers=TUS)).status < 500


async def test_delete_of_a_file_in_processing_is_409(make_client: MakeClient) -> None:
    client = await api_client(make_client)
    owner = token("busy")
    rows = [
        file_row(name=f"{s}.bin", owner=owner, created_at=NOW, status=s)
        for s in ("received", "validating")
    ]
    done = [
        file_row(name=f"{s}.bin", owner=owner, created_at=NOW, status=s)
        for s in ("rejected", "failed")
    ]
    await insert_files(client, rows + done)
    for r in rows:
        await api_error(await client.delete(f"/api/v1/file/{r['id']}"), 409)
        body = await (await client.get(f"/api/v1/file/{r['id']}")).json()
        assert body["status"] == r["status"]
        # Its content is not there yet either.
        await api_error(await client.get(f"/api/v1/file/{r['id']}/content"), 409)
    # Rejected and failed files (no object) can be deleted.
    for r in done:
        assert (await client.delete(f"/api/v1/file/{r['id']}")).status == 204
        await api_error(await client.get(f"/api/v1/file/{r['id']}"), 404)
    assert sorted(await search(client, owner=owner)) == sorted(r["id"] for r in rows)


async def test_tag_search_by_date_follows_every_change_of_tags_dates_and_files(
    make_client: MakeClient,
) -> None:
    """Newest-first tag searches without an owner page through file_tags' copy of each file's
    created_at (migration 0006): retagging, renaming, a changed date and deletes keep it right,
    and the answers equal the ones of the owner-scoped searches (which read files only)."""
    client = await api_client(make_client)
    rt = runtime(client)
    red, blue = token("red"), token("blue")
    owners = [token("o1-"), token("o2-"), None]
    # Created a < b < c < d == e (d and e at the same instant: the id breaks the tie).
    stamps = [NOW + dt.timedelta(hours=h) for h in (1, 2, 3, 4, 4)]
    rows = [file_row(name=f"f{i}", owner=owners[i % 3], created_at=stamps[i]) for i in range(5)]
    await insert_files(client, rows)
    a, b, c, d, e = (r["id"] for r in rows)
    owner_of = {r["id"]: r["owner"] for r in rows}
    de = sorted([d, e], reverse=True)

    async def tagged(*tags: str, **params: Any) -> list[str]:
        got = await search(client, tag=list(tags), **params)
        assert got == await collect(client, {"tag": list(tags), "limit": 1, **params})
        for owner in owners[:2]:  # the owner-scoped plan agrees
            scoped = await search(client, tag=list(tags), owner=owner, **params)
            assert scoped == [i for i in got if owner_of[i] == owner]
        return got

    # Tagged in another order than created: the answer follows the files' dates.
    for fid in (c, a, e, b, d):
        await patch(client, fid, {"tags": [red]})
    assert await tagged(red) == [*de, c, b, a]
    assert await tagged(red, sort="date") == [a, b, c, *reversed(de)]
    window = {"from": stamps[1].isoformat(), "to": stamps[3].isoformat()}
    assert await tagged(red, **window) == [c, b]

    # Retagging: rows replaced, each still with the file's date (not the time of the PATCH).
    await patch(client, a, {"tags": [blue, red]})
    await patch(client, c, {"tags": [blue]})
    await patch(client, b, {"tags": []})
    assert await tagged(red) == [*de, a]
    assert await tagged(blue) == [c, a]
    assert await tagged(red, blue) == [a]
    assert await tagged(blue, red) == [a]
    # A rename and a move leave the tags alone.
    await patch(client, a, {"name": "renamed.txt", "folder": "/moved/"})
    assert await tagged(red) == [*de, a]
    assert await tagged(red, q="renamed", folder="/moved/") == [a]

    # If a file's date changes, the copies follow.
    later = NOW + dt.timedelta(hours=10)
    await rt.files.update(a, created_at=later)
    assert await tagged(red) == [a, *de]
    assert await tagged(blue) == [a, c]

    # Deleting a file (the API, or the row itself) takes its tags with it.
    assert (await client.delete(f"/api/v1/file/{d}")).status == 204
    assert await tagged(red) == [a, e]
    async with rt.db.engine.begin() as conn:
        await conn.execute(delete(files).where(files.c.id == e))
    assert await tagged(red) == [a]

    # And every copy equals its file's date.
    pairs = (
        select(file_tags.c.created_at, files.c.created_at)
        .join(files, files.c.id == file_tags.c.file_id)
        .where(file_tags.c.tag.in_([red, blue]))
    )
    async with rt.db.engine.connect() as conn:
        found = (await conn.execute(pairs)).all()
    assert len(found) == 3
    assert all(copy == created for copy, created in found)


async def test_an_owner_s_folders_are_limited_and_a_long_list_does_not_hold_the_loop(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders cost nothing to create, and each lists its ancestors: an owner had no limit,
    and listing thousands of deep folders held the event loop for over a second (every
    other request waited). Past MAX_FOLDERS a creation is refused (409), creating an
    existing folder still succeeds, and the listing is worked out off the loop."""
    client = await jwt_client(make_client)
    user = (await make_users(client, owner="user"))["owner"]
    owner = bearer(user.access)
    monkeypatch.setattr(catalog_files, "MAX_FOLDERS", 3)
    for n in range(3):
        resp = await client.post("/api/v1/folders", json={"path": f"/f{n}/"}, headers=owner)
        assert resp.status == 201, await resp.text()
    resp = await client.post("/api/v1/folders", json={"path": "/f3/"}, headers=owner)
    assert "at most 3 folders" in (await api_error(resp, 409))["message"]
    resp = await client.post("/api/v1/folders", json={"path": "/f0/"}, headers=owner)
    assert resp.status == 201, await resp.text()  # (it exists: nothing new)

    monkeypatch.setattr(catalog_files, "MAX_FOLDERS", 10_000)
    now = dt.datetime.now(dt.UTC)
    deep = [
        {"owner": user.id, "path": "/" + "".join(f"{i:05d}{'x' * 24}/" for _ in range(32)),
         "created_at": now}
        for i in range(3000)
    ]  # fmt: skip
    rt = runtime(client)
    await rt.db.write(lambda conn: conn.execute(insert(folders_table), deep))
    gaps: list[float] = []
    stop = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        resp = await client.get("/api/v1/folders", headers=owner)
        listed = (await resp.json())["folders"]
    finally:
        stop = True
        await tick
        await rt.db.write(
            lambda conn: conn.execute(delete(folders_table).where(folders_table.c.owner == user.id))
        )
    assert resp.status == 200 and len(listed) > 3000 * 32
    assert max(gaps) < 0.5, f"the event loop was held {max(gaps):.2f} s"
