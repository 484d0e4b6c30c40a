"""Security signals (#22): each suspicious pattern, driven through HTTP, moves its metric on
/metrics and leaves an audit entry naming the user and the address."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from storage_backends.encryption import generate_key_spec
from tests.app_fixtures import MakeClient
from tests.auth.helpers import (
    PASSWORD,
    Client,
    auth_client,
    bearer,
    create_upload,
    make_users,
    patch,
)
from tests.auth.test_signin_hardening import address, audit_entries, metric
from tests.pipeline.test_clamav import EICAR
from tests.pipeline.test_local_pipeline import png_bytes

TUS = {"Tus-Resumable": "1.0.0"}


async def _file_of(client: Client, token: str, path: str) -> dict[str, Any]:
    """The file an upload became, once the pipeline has decided."""
    for _ in range(300):
        resp = await client.head(path, headers={**TUS, **bearer(token)})
        file_id = resp.headers.get("X-File-Id")
        if file_id:
            info: dict[str, Any] = await (
                await client.get(f"/api/v1/file/{file_id}", headers=bearer(token))
            ).json()
            if info["status"] not in ("received", "validating"):
                return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"no decision for {path}")


async def _upload(client: Client, token: str, data: bytes) -> str:
    path = await create_upload(client, token, len(data))
    resp = await patch(client, token, path, 0, data)
    assert resp.status == 204, await resp.text()
    return path


async def test_wrong_passwords_are_counted_and_audited(make_client: MakeClient) -> None:
    client = await auth_client(make_client, trust_proxy_headers=True)
    owner = (await make_users(client, owner="user"))["owner"]
    ip = address()
    before = await metric(client, "tusserver_signin_failures_total", reason="wrong_password")
    unknown = await metric(client, "tusserver_signin_failures_total", reason="unknown_user")
    for i in range(3):
        resp = await client.post(
            "/api/v1/auth/login",
            json={"username": owner.name, "password": f"nope {i}"},
            headers={"X-Forwarded-For": ip},
        )
        assert resp.status == 401
    resp = await client.post(
        "/api/v1/auth/login",
        json={"username": owner.name + "-ghost", "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    assert resp.status == 401
    assert await metric(client, "tusserver_signin_failures_total", reason="wrong_password") == (
        before + 3
    )
    assert await metric(client, "tusserver_signin_failures_total", reason="unknown_user") == (
        unknown + 1
    )
    denied = [
        e
        for e in await audit_entries(client, "auth.login")
        if e["outcome"] == "denied" and e["ip"] == ip
    ]
    assert len(denied) == 4
    assert (
        sorted(e["detail"]["reason"] for e in denied) == ["unknown_user"] + ["wrong_password"] * 3
    )
    # Labels carry reasons only, never who.
    text = await (await client.get("/metrics")).text()
    assert owner.name not in text and ip not in text


async def test_probing_other_users_ids_is_counted_and_audited(make_client: MakeClient) -> None:
    client = await auth_client(make_client, trust_proxy_headers=True)
    users = await make_users(client, owner="user", prober="user")
    owner, prober = users["owner"], users["prober"]
    path = await _upload(client, owner.access, png_bytes(300))
    info = await _file_of(client, owner.access, path)
    upload_id = path.rsplit("/", 1)[1]
    ip = address()
    as_prober = {**bearer(prober.access), "X-Forwarded-For": ip}
    uploads = await metric(client, "tusserver_foreign_id_requests_total", resource="upload")
    files = await metric(client, "tusserver_foreign_id_requests_total", resource="file")
    # Someone else's upload and file: 404, like ids that do not exist...
    assert (await client.head(path, headers={**TUS, **as_prober})).status == 404
    resp = await client.patch(
        path,
        data=b"x",
        headers={
            **TUS,
            **as_prober,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert resp.status == 404
    assert (await client.get(f"/api/v1/file/{info['id']}", headers=as_prober)).status == 404
    # ...which are not probes (nothing there to probe).
    assert (await client.head("/uploads/" + "0" * 32, headers={**TUS, **as_prober})).status == 404
    assert (await client.get("/api/v1/file/" + "0" * 32, headers=as_prober)).status == 404
    after_uploads = await metric(client, "tusserver_foreign_id_requests_total", resource="upload")
    assert after_uploads == uploads + 2
    assert await metric(client, "tusserver_foreign_id_requests_total", resource="file") == (
        files + 1
    )
    denied = [e for e in await audit_entries(client, "access.denied") if e["actor"] == prober.id]
    assert sorted(e["target"] for e in denied) == sorted([upload_id, upload_id, info["id"]])
    assert all(e["ip"] == ip for e in denied), denied
    # The owner's own requests are no probes.
    assert (await client.head(path, headers={**TUS, **bearer(owner.access)})).status == 200
    assert (
        await metric(client, "tusserver_foreign_id_requests_total", resource="upload")
        == after_uploads
    )


async def test_malware_upload_is_counted_and_audited(
    make_client: MakeClient, clamd_server: Any
) -> None:
    client = await auth_client(make_client, clamd_url=clamd_server.tcp_url)
    owner = (await make_users(client, owner="user"))["owner"]
    before = await metric(client, "tusserver_files_rejected_total", reason="virus")
    info = await _file_of(client, owner.access, await _upload(client, owner.access, EICAR))
    assert info["status"] == "rejected" and "virus" in info["reason"], info
    assert await metric(client, "tusserver_files_rejected_total", reason="virus") == before + 1
    rejected = [
        e for e in await audit_entries(client, "file.rejected") if e["target"] == info["id"]
    ]
    assert len(rejected) == 1 and rejected[0]["actor"] == owner.id, rejected
    assert rejected[0]["detail"] == {"reason": "virus"}
    # A clean file moves nothing.
    clean = await _file_of(client, owner.access, await _upload(client, owner.access, b"hi\n"))
    assert clean["status"] == "committed"
    assert await metric(client, "tusserver_files_rejected_total", reason="virus") == before + 1


async def test_forbidden_types_and_checksums_are_counted(make_client: MakeClient) -> None:
    client = await auth_client(make_client, allowed_categories=("image",))
    owner = (await make_users(client, owner="user"))["owner"]
    typ = await metric(client, "tusserver_files_rejected_total", reason="type")
    # The early check refuses it at its first bytes (415) or the pipeline after: counted once.
    path = await create_upload(client, owner.access, 2000)
    resp = await patch(client, owner.access, path, 0, b"%PDF-1.4\n" + b"0" * 1991)
    assert resp.status in (204, 415), await resp.text()
    if resp.status == 204:
        assert (await _file_of(client, owner.access, path))["status"] == "rejected"
    assert await metric(client, "tusserver_files_rejected_total", reason="type") == typ + 1


async def test_quota_and_size_refusals_are_counted_and_audited(make_client: MakeClient) -> None:
    client = await auth_client(make_client, default_quota=1000, max_size=5000)
    owner = (await make_users(client, owner="user"))["owner"]
    quota = await metric(client, "tusserver_upload_refusals_total", reason="quota")
    size = await metric(client, "tusserver_upload_refusals_total", reason="max_size")
    headers = {**TUS, **bearer(owner.access)}
    resp = await client.post("/uploads/", headers={**headers, "Upload-Length": "2000"})
    assert resp.status == 413
    resp = await client.post("/uploads/", headers={**headers, "Upload-Length": "9000"})
    assert resp.status == 413
    assert await metric(client, "tusserver_upload_refusals_total", reason="quota") == quota + 1
    assert await metric(client, "tusserver_upload_refusals_total", reason="max_size") == size + 1
    refused = [e for e in await audit_entries(client, "upload.refused") if e["actor"] == owner.id]
    assert sorted(e["detail"]["reason"] for e in refused) == ["max_size", "quota"]
    assert all(e["ip"] for e in refused)


async def test_throttled_requests_are_counted_by_limit(make_client: MakeClient) -> None:
    client = await auth_client(make_client, rate_limit_creations=0.01, rate_limit_creations_burst=2)
    owner = (await make_users(client, owner="user"))["owner"]
    before = await metric(client, "tusserver_throttled_requests_total", limit="creations")
    statuses = []
    for _ in range(4):
        resp = await client.post(
            "/uploads/", headers={**TUS, **bearer(owner.access), "Upload-Length": "5"}
        )
        statuses.append(resp.status)
    assert statuses == [201, 201, 429, 429], statuses
    after = await metric(client, "tusserver_throttled_requests_total", limit="creations")
    assert after == before + 2
    throttled = [e for e in await audit_entries(client, "rate_limit") if e["actor"] == owner.id]
    assert len(throttled) == 2 and throttled[0]["detail"] == {"limit": "creations"}


async def test_expired_tokens_are_counted(make_client: MakeClient) -> None:
    client = await auth_client(make_client, access_token_ttl=1, jwt_leeway=0)
    owner = (await make_users(client, owner="user"))["owner"]
    before = await metric(client, "tusserver_token_rejections_total", reason="expired")
    await asyncio.sleep(2.1)
    assert (await client.get("/api/v1/auth/me", headers=bearer(owner.access))).status == 401
    assert await metric(client, "tusserver_token_rejections_total", reason="expired") == before + 1


async def test_integrity_errors_at_rest_are_counted_and_audited(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = await auth_client(
        make_client,
        encryption="envelope",
        encryption_keys=(generate_key_spec("main"),),
        encryption_segment_size=4096,
    )
    owner = (await make_users(client, owner="user"))["owner"]
    data = png_bytes(300) + b"tamper-me " * 2000
    info = await _file_of(client, owner.access, await _upload(client, owner.access, data))
    assert info["status"] == "committed", info
    objects = [
        p
        for p in (tmp_path / "data" / "objects").rglob("*")
        if p.is_file()
        and ".meta" not in p.parts
        and not p.name.startswith(".tusserver")
        and ".thumb-" not in p.name  # the media step's thumbnails sit next to the file
    ]
    assert len(objects) == 1
    raw = bytearray(objects[0].read_bytes())
    raw[60] ^= 0x01  # inside the first sealed segment
    objects[0].write_bytes(bytes(raw))
    before = await metric(client, "tusserver_integrity_errors_total", source="object")
    resp = await client.get(f"/api/v1/file/{info['id']}/content", headers=bearer(owner.access))
    assert resp.status == 500
    assert (await resp.json())["error"] == "stored_data_unreadable"
    assert await metric(client, "tusserver_integrity_errors_total", source="object") == before + 1
    entries = [
        e for e in await audit_entries(client, "file.integrity_error") if e["target"] == info["id"]
    ]
    assert len(entries) == 1 and entries[0]["actor"] == owner.id, entries
