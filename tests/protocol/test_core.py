"""tus 1.0.0 core and creation extensions, status by status, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import hashlib
import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from storage_backends.base import StorageError, UploadDataMissing
from tests.app_fixtures import OCTET, TUS, MakeClient, get_committed
from tusserver.app import RUNTIME

Client = TestClient[Any, Any]


async def create(client: Client, length: int | None = None, **headers: str) -> str:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    h.update(headers)
    resp = await client.post("/uploads/", headers=h)
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    return location[location.index("/uploads/") :]


async def patch(client: Client, path: str, offset: int, body: bytes, **headers: str) -> Any:
    return await client.patch(
        path, data=body, headers={**TUS, **OCTET, "Upload-Offset": str(offset), **headers}
    )


async def head(client: Client, path: str) -> Any:
    return await client.head(path, headers=TUS)


# --- OPTIONS ----------------------------------------------------------------------------


async def test_options_advertises_version_extensions_and_limits(client: Client) -> None:
    resp = await client.options("/uploads/")
    assert resp.status == 204
    assert resp.headers["Tus-Version"] == "1.0.0"
    ext = resp.headers["Tus-Extension"].split(",")
    for name in (
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
        "concatenation-unfinished",
    ):
        assert name in ext
    assert resp.headers["Tus-Max-Size"] == str(10 * 1024 * 1024)
    assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) >= {"sha1", "md5", "sha256"}


async def test_options_needs_no_tus_resumable_and_works_on_an_upload_url(client: Client) -> None:
    path = await create(client, 3)
    resp = await client.options(path)
    assert resp.status == 204
    assert "Tus-Version" in resp.headers


async def test_no_expiration_extension_when_uploads_never_expire(make_client: MakeClient) -> None:
    client = await make_client(expiration=0)
    resp = await client.options("/uploads/")
    assert "expiration" not in resp.headers["Tus-Extension"].split(",")
    # Without a configured maximum, only the store's own limit is advertised (S3: 5 TiB).
    assert int(resp.headers.get("Tus-Max-Size", 5 * 1024**4)) == 5 * 1024**4 or (
        "Tus-Max-Size" not in resp.headers
    )
    path = await create(client, 5)
    assert "Upload-Expires" not in (await head(client, path)).headers


# --- Tus-Resumable ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "", "1.0.0,0.2.2"])
async def test_unsupported_version_is_412_with_tus_version(
    client: Client, version: str | None
) -> None:
    headers = {"Upload-Length": "5"}
    if version is not None:
        headers["Tus-Resumable"] = version
    resp = await client.post("/uploads/", headers=headers)
    assert resp.status == 412
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert resp.headers["Tus-Resumable"] == "1.0.0"


async def test_412_on_head_patch_delete_and_nothing_changes(client: Client) -> None:
    path = await create(client, 5)
    bad = {"Tus-Resumable": "0.9.0"}
    assert (await client.head(path, headers=bad)).status == 412
    r = await client.patch(path, data=b"abc", headers={**bad, **OCTET, "Upload-Offset": "0"})
    assert r.status == 412
    assert (await client.delete(path, headers=bad)).status == 412
    resp = await head(client, path)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0"


# --- creation -----------------------------------------------------------------------------


async def test_create_returns_absolute_location_and_imf_fixdate_expiry(client: Client) -> None:
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": "10"})
    assert resp.status == 201
    assert resp.headers["Location"].startswith(f"http://{client.host}:{client.port}/uploads/")
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    expires = resp.headers["Upload-Expires"]
    assert expires.endswith(" GMT")
    assert email.utils.parsedate_to_datetime(expires) is not None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "-1"},
        {"Upload-Length": "abc"},
        {"Upload-Length": "1e3"},
        {"Upload-Length": "99999999999999999999999"},
        {"Upload-Defer-Length": "0"},
        {"Upload-Defer-Length": "2"},
        {"Upload-Length": "5", "Upload-Defer-Length": "1"},
        {"Upload-Length": "5", "Upload-Metadata": "key !!notbase64"},
        {"Upload-Length": "5", "Upload-Metadata": "k YQ==,k Yg=="},
        {"Upload-Length": "5", "Upload-Concat": "sideways"},
    ],
)
async def test_bad_creation_headers_are_400_and_nothing_is_stored(
    client: Client, headers: dict[str, str]
) -> None:
    resp = await client.post("/uploads/", headers={**TUS, **headers})
    assert resp.status == 400
    assert "Location" not in resp.headers
    assert (await resp.text()).strip()


async def test_length_over_max_size_is_413(client: Client) -> None:
    resp = await client.post(
        "/uploads/", headers={**TUS, "Upload-Length": str(10 * 1024 * 1024 + 1)}
    )
    assert resp.status == 413
    exact = await client.post("/uploads/", headers={**TUS, "Upload-Length": str(10 * 1024 * 1024)})
    assert exact.status == 201


async def test_zero_length_upload_is_complete_at_creation(client: Client) -> None:
    path = await create(client, 0)
    resp = await head(client, path)
    assert resp.headers["Upload-Offset"] == "0"
    assert resp.headers["Upload-Length"] == "0"
    get = await get_committed(client, path)
    assert get.status == 200
    assert await get.read() == b""


async def test_metadata_is_returned_byte_for_byte_binary_included(client: Client) -> None:
    binary = bytes(range(256))
    meta = (
        f"filename {base64.b64encode('résumé ☃.mp4'.encode()).decode()},"
        f"blob {base64.b64encode(binary).decode()},flag"
    )
    path = await create(client, 4, **{"Upload-Metadata": meta})
    resp = await head(client, path)
    pairs = dict(([*p.split(" "), None])[:2] for p in resp.headers["Upload-Metadata"].split(","))
    assert base64.b64decode(pairs["blob"]) == binary
    assert base64.b64decode(pairs["filename"]).decode() == "résumé ☃.mp4"
    assert pairs["flag"] is None


# --- creation-with-upload -----------------------------------------------------------------


async def test_creation_with_upload_stores_the_first_chunk(client: Client) -> None:
    resp = await client.post(
        "/uploads/", data=b"hello", headers={**TUS, **OCTET, "Upload-Length": "11"}
    )
    assert resp.status == 201
    assert resp.headers["Upload-Offset"] == "5"
    path = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    r = await patch(client, path, 5, b" world")
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "11"
    assert await (await get_committed(client, path)).read() == b"hello world"


@pytest.mark.parametrize("length", [0, 5])
async def test_creation_with_an_empty_first_chunk_says_its_offset(
    client: Client, length: int
) -> None:
    """A creation-with-upload whose body is empty (a zero-byte file, or a client that sends
    the bytes later) still answers with the offset stored, as any creation-with-upload."""
    resp = await client.post(
        "/uploads/", data=b"", headers={**TUS, **OCTET, "Upload-Length": str(length)}
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Upload-Offset"] == "0"
    # Without the body's content type it is a plain creation: no offset is claimed.
    resp = await client.post("/uploads/", headers={**TUS, "Upload-Length": str(length)})
    assert resp.status == 201 and "Upload-Offset" not in resp.headers


async def test_creation_with_upload_needs_the_offset_content_type(client: Client) -> None:
    resp = await client.post(
        "/uploads/",
        data=b"hello",
        headers={**TUS, "Content-Type": "text/plain", "Upload-Length": "5"},
    )
    assert resp.status == 415


async def test_creation_with_upload_with_a_bad_checksum_still_says_where(client: Client) -> None:
    resp = await client.post(
        "/uploads/",
        data=b"hello",
        headers={
            **TUS,
            **OCTET,
            "Upload-Length": "5",
            "Upload-Checksum": "sha1 " + base64.b64encode(b"x" * 20).decode(),
        },
    )
    assert resp.status == 460
    path = resp.headers["Location"][resp.headers["Location"].index("/uploads/") :]
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


# --- HEAD ---------------------------------------------------------------------------------


async def test_head_reports_offset_length_and_forbids_caching(client: Client) -> None:
    path = await create(client, 10)
    resp = await head(client, path)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0"
    assert resp.headers["Upload-Length"] == "10"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Upload-Metadata" not in resp.headers


@pytest.mark.parametrize(
    "path",
    ["/uploads/0123456789abcdef0123456789abcdef", "/uploads/..%2F..%2Fetc", "/uploads/a.b"],
)
async def test_unknown_or_malformed_ids_are_404(client: Client, path: str) -> None:
    assert (await head(client, path)).status == 404
    assert (await patch(client, path, 0, b"x")).status == 404
    assert (await client.delete(path, headers=TUS)).status == 404


# --- PATCH --------------------------------------------------------------------------------


async def test_patch_appends_and_reports_the_new_offset(client: Client) -> None:
    path = await create(client, 6)
    r = await patch(client, path, 0, b"abc")
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "3"
    assert "Upload-Expires" in r.headers
    r = await patch(client, path, 3, b"def")
    assert r.headers["Upload-Offset"] == "6"
    assert "Upload-Expires" not in r.headers  # finished uploads do not expire
    assert await (await get_committed(client, path)).read() == b"abcdef"


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/octet-stream", "multipart/form-data"]
)
async def test_patch_with_a_wrong_content_type_is_415(client: Client, ctype: str | None) -> None:
    path = await create(client, 3)
    headers = {**TUS, "Upload-Offset": "0"}
    if ctype:
        headers["Content-Type"] = ctype
    r = await client.patch(path, data=b"abc", headers=headers)
    assert r.status == 415
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("offset", [None, "-1", "x", "1.5", "", "99999999999999999999"])
async def test_patch_with_a_bad_offset_header_is_400(client: Client, offset: str | None) -> None:
    path = await create(client, 3)
    headers = {**TUS, **OCTET}
    if offset is not None:
        headers["Upload-Offset"] = offset
    r = await client.patch(path, data=b"abc", headers=headers)
    assert r.status == 400


async def test_offset_mismatch_is_409_and_the_offset_is_unchanged(client: Client) -> None:
    path = await create(client, 6)
    await patch(client, path, 0, b"abc")
    r = await patch(client, path, 1, b"zzz")
    assert r.status == 409
    r = await patch(client, path, 5, b"z")
    assert r.status == 409
    assert (await head(client, path)).headers["Upload-Offset"] == "3"
    await patch(client, path, 3, b"def")
    assert await (await get_committed(client, path)).read() == b"abcdef"


async def test_body_past_the_length_is_413_before_anything_is_stored(client: Client) -> None:
    path = await create(client, 4)
    r = await patch(client, path, 0, b"abcdef")
    assert r.status == 413
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


async def test_chunked_body_past_the_length_keeps_only_the_allowed_bytes(client: Client) -> None:
    path = await create(client, 4)

    async def body() -> Any:
        yield b"ab"
        yield b"cdef"

    r = await client.patch(path, data=body(), headers={**TUS, **OCTET, "Upload-Offset": "0"})
    assert r.status == 413
    resp = await head(client, path)
    assert resp.headers["Upload-Offset"] == "4"
    assert await (await get_committed(client, path)).read() == b"abcd"


async def test_empty_patch_is_accepted_and_changes_nothing(client: Client) -> None:
    path = await create(client, 4)
    r = await patch(client, path, 0, b"")
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "0"


async def test_patch_on_a_finished_upload_with_bytes_is_413(client: Client) -> None:
    path = await create(client, 2)
    await patch(client, path, 0, b"ab")
    assert (await patch(client, path, 2, b"c")).status == 413
    assert (await patch(client, path, 2, b"")).status == 204


# --- creation-defer-length ----------------------------------------------------------------


async def test_deferred_length_is_declared_by_a_later_patch(client: Client) -> None:
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    resp = await head(client, path)
    assert resp.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in resp.headers
    r = await patch(client, path, 0, b"abc")
    assert r.status == 204
    r = await patch(client, path, 3, b"de", **{"Upload-Length": "5"})
    assert r.status == 204
    resp = await head(client, path)
    assert resp.headers["Upload-Length"] == "5"
    assert "Upload-Defer-Length" not in resp.headers
    assert await (await get_committed(client, path)).read() == b"abcde"


async def test_length_cannot_change_once_set(client: Client) -> None:
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    await patch(client, path, 0, b"ab", **{"Upload-Length": "4"})
    r = await patch(client, path, 2, b"c", **{"Upload-Length": "9"})
    assert r.status == 400
    r = await patch(client, path, 2, b"cd", **{"Upload-Length": "4"})
    assert r.status == 204


async def test_declared_length_smaller_than_offset_or_over_max_is_refused(client: Client) -> None:
    path = await create(client, None, **{"Upload-Defer-Length": "1"})
    await patch(client, path, 0, b"abc")
    assert (await patch(client, path, 3, b"", **{"Upload-Length": "2"})).status == 400
    too_big = str(10 * 1024 * 1024 + 1)
    assert (await patch(client, path, 3, b"", **{"Upload-Length": too_big})).status == 413
    assert "Upload-Defer-Length" in (await head(client, path)).headers


# --- termination --------------------------------------------------------------------------


async def test_terminated_uploads_answer_410(client: Client) -> None:
    path = await create(client, 5)
    await patch(client, path, 0, b"ab")
    r = await client.delete(path, headers=TUS)
    assert r.status == 204
    assert (await head(client, path)).status == 410
    assert (await patch(client, path, 2, b"cde")).status == 410
    assert (await client.delete(path, headers=TUS)).status == 410


async def test_bytes_the_store_cannot_delete_now_go_with_the_tombstone(client: Client) -> None:
    """A termination while the store cannot delete (S3 unreachable) is done all the same
    (204, 410 from then on); the bytes are deleted by the purge of old tombstones, which
    keeps the row of an upload whose bytes it could not delete yet."""
    path = await create(client, 5)
    await patch(client, path, 0, b"ab")
    service = client.app[RUNTIME].uploads
    store = service.store
    delete = store.delete
    refused: list[str] = []

    async def unreachable(upload_id: str) -> None:
        refused.append(upload_id)
        raise StorageError("S3 unreachable: injected")

    store.delete = unreachable  # type: ignore[method-assign]
    try:
        assert (await client.delete(path, headers=TUS)).status == 204
        assert (await head(client, path)).status == 410
        upload_id = path.rsplit("/", 1)[1]
        assert refused == [upload_id]
        assert await store.get_offset(upload_id) == 2  # the bytes are still there
        await service.purge_tombstones(dt.timedelta(0))
        # Tried again, refused again: the row stays for the next purge.
        assert refused.count(upload_id) == 2
        assert await service.repo.get(upload_id) is not None
    finally:
        store.delete = delete  # type: ignore[method-assign]
    await service.purge_tombstones(dt.timedelta(0))
    assert await service.repo.get(upload_id) is None
    with pytest.raises(UploadDataMissing):
        await store.get_offset(upload_id)


async def test_tombstones_whose_bytes_cannot_go_never_hold_up_the_others(client: Client) -> None:
    """The purge looks at old tombstones a page at a time: a full page of rows whose bytes
    the store cannot delete (an object lock, a permission) stalled it for good."""
    service = client.app[RUNTIME].uploads
    store = service.store
    ids = []
    for _ in range(5):
        path = await create(client, 5)
        assert (await client.delete(path, headers=TUS)).status == 204
        ids.append(path.rsplit("/", 1)[1])
        await asyncio.sleep(0.002)  # each ended later than the one before
    stuck = set(ids[:2])  # the oldest two: a whole first page
    delete = store.delete

    async def locked(upload_id: str) -> None:
        if upload_id in stuck:
            raise StorageError("AccessDenied: object locked")
        await delete(upload_id)

    store.delete = locked  # type: ignore[method-assign]
    try:
        # (At least: the PostgreSQL catalog is shared with the other tests of this worker,
        # whose tombstones go too.)
        assert await service.purge_tombstones(dt.timedelta(0), limit=2) >= 3
    finally:
        store.delete = delete  # type: ignore[method-assign]
    left = {i for i in ids if await service.repo.get(i) is not None}
    assert left == stuck
    assert await service.purge_tombstones(dt.timedelta(0), limit=2) >= 2
    assert not [i for i in ids if await service.repo.get(i) is not None]


# --- X-HTTP-Method-Override ---------------------------------------------------------------


async def test_method_override_is_the_method(client: Client) -> None:
    path = await create(client, 3)
    r = await client.post(
        path,
        data=b"abc",
        headers={**TUS, **OCTET, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert r.status == 204
    assert r.headers["Upload-Offset"] == "3"
    r = await client.post(path, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status == 204
    assert (await head(client, path)).status == 410


async def test_unknown_methods_are_405(client: Client) -> None:
    path = await create(client, 3)
    assert (await client.put(path, headers=TUS)).status == 405
    assert (await client.get("/uploads/", headers=TUS)).status == 405


# --- GET ----------------------------------------------------------------------------------


async def test_get_serves_ranges_and_a_safe_disposition(client: Client) -> None:
    name = base64.b64encode(b'../../evil"\r\nX-Injected: 1.txt').decode()
    path = await create(client, 10, **{"Upload-Metadata": f"filename {name}"})
    await patch(client, path, 0, b"0123456789")
    full = await get_committed(client, path)
    assert full.status == 200
    assert await full.read() == b"0123456789"
    disp = full.headers["Content-Disposition"]
    assert disp.startswith("attachment;")
    assert "/" not in disp
    assert "\r" not in disp and "\n" not in disp
    assert "X-Injected" not in full.headers
    assert full.headers["X-Content-Type-Options"] == "nosniff"
    for rng, status, body in [
        ("bytes=0-0", 206, b"0"),
        ("bytes=-1", 206, b"9"),
        ("bytes=3-", 206, b"3456789"),
        ("bytes=8-100", 206, b"89"),
        ("bytes=0-1,4-5", 200, b"0123456789"),
    ]:
        r = await get_committed(client, path, headers={"Range": rng})
        assert r.status == status, rng
        assert await r.read() == body
    r = await get_committed(client, path, headers={"Range": "bytes=10-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == "bytes */10"


async def test_get_of_an_unfinished_upload_is_a_conflict(client: Client) -> None:
    path = await create(client, 10)
    assert (await client.get(path)).status == 409


# --- hostile headers ----------------------------------------------------------------------


async def test_a_64_kib_header_is_a_client_error(client: Client) -> None:
    resp = await client.post(
        "/uploads/", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": "k " + "A" * 65536}
    )
    assert 400 <= resp.status < 500


async def test_a_body_that_arrives_after_the_shutdown_began_is_released_at_once(
    client: Client,
) -> None:
    """The graceful shutdown stops the bodies being received; a PATCH that gets to its body
    later (it was waiting for its upload's lock) is stopped at once too, not read in full
    while the shutdown waits for it."""
    path = await create(client, 10)
    client.app[RUNTIME].uploads.release_all()
    r = await patch(client, path, 0, b"abc")
    assert r.status == 503, await r.text()
    assert r.headers["Upload-Offset"] == "0"
    assert (await head(client, path)).headers["Upload-Offset"] == "0"


async def test_a_checksummed_chunk_cut_by_a_shutdown_is_retried_like_any_other(
    client: Client,
) -> None:
    """A graceful stop (a rolling restart of one instance) cuts a PATCH short. A chunk with
    Upload-Checksum is all or nothing, so nothing of it is kept; it is answered as a body
    without one: 503 with Retry-After and the Upload-Offset to resume from. It was 400
    without Upload-Offset, which tus clients take as fatal (tus-js-client retries no 4xx
    but 409 and 423): the upload failed instead of resuming on another instance."""
    path = await create(client, 100_000)
    assert (await patch(client, path, 0, b"a" * 1000)).status == 204
    chunk = b"b" * 50_000
    digest = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    sent = asyncio.Event()
    never = asyncio.Event()

    async def stalled_body() -> Any:
        yield chunk[:20_000]
        sent.set()
        await never.wait()
        yield chunk[20_000:]

    headers = {**TUS, **OCTET, "Upload-Offset": "1000", "Upload-Checksum": f"sha1 {digest}"}
    stalled = asyncio.ensure_future(client.patch(path, data=stalled_body(), headers=headers))
    await sent.wait()
    service = client.app[RUNTIME].uploads
    for _ in range(250):  # until the server is reading the body
        if any(reader.received >= 20_000 for reader in service._receiving):
            break
        await asyncio.sleep(0.02)
    service.release_all()  # what on_shutdown does
    r = await asyncio.wait_for(stalled, 10)
    never.set()
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] == "2"
    assert r.headers["Upload-Offset"] == "1000"  # the chunk was discarded
    service._released = False  # (the server goes on, for the check below)
    assert (await head(client, path)).headers["Upload-Offset"] == "1000"


async def test_a_download_the_client_stops_reading_is_not_an_error(
    make_client: MakeClient,
) -> None:
    """A client that closes a download before its end (a status probe, a cancelled save) is
    normal: no 'unhandled error' with a traceback in the server's log."""
    client = await make_client()
    # Not random bytes: libmagic now and then types those as audio, and the media step
    # refuses what does not decode (then GET answers 403).
    data = b"0123456789abcdef" * (2 * 1024 * 1024)
    path = await create(client, len(data))
    resp = await client.patch(
        path, data=io.BytesIO(data), headers={**TUS, **OCTET, "Upload-Offset": "0"}
    )
    assert resp.status == 204
    await get_committed(client, path)  # (read to its end)
    with capture_logs() as logs:
        for _ in range(3):
            resp = await client.get(path)
            assert resp.status == 200
            resp.close()  # gone after the headers
        await asyncio.sleep(0.3)
    assert not [e for e in logs if e.get("event") == "unhandled error"], logs
