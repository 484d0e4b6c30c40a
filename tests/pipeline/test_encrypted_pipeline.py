"""The whole path with encryption at rest on: tus upload, validation, commit, downloads.

Nothing the server writes to disk (uploads in progress, committed objects) holds the plaintext;
clients see exactly the bytes they sent, Range requests included.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from storage_backends.encryption import EncryptedObjectStore, generate_key_spec
from tests.app_fixtures import get_committed
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tests.protocol.test_core import create, patch

Client = TestClient[Any, Any]
MARKER = b"SECRET-MEDICAL-IMAGE-0042"


def all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def enc_settings(*keys: str) -> dict[str, Any]:
    return {
        "encryption": "envelope",
        "encryption_keys": keys or (generate_key_spec("main"),),
        "encryption_segment_size": 4096,
    }


async def test_encrypted_upload_commit_and_download(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(**enc_settings())
    data = png_bytes(extra=0) + MARKER * 1000  # ~25 KB: several 4 KiB segments
    path = await create(client, len(data), **{"Upload-Metadata": "filename cGhvdG8ucG5n"})
    half = len(data) // 2 + 7
    assert (await patch(client, path, 0, data[:half])).status == 204
    # Half-way: the upload in progress is on disk, encrypted.
    assert MARKER not in all_bytes_under(tmp_path / "data")
    assert (await patch(client, path, half, data[half:])).status == 204
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["detected_type"] == "image/png"  # libmagic saw the plaintext
    body = await (await client.get(info["content_url"])).read()
    assert body == data
    for start, end in [
        (0, 0),
        (4095, 4096),
        (4096, 8191),
        (100, 20000),
        (len(data) - 1, len(data) - 1),
    ]:
        r = await client.get(info["content_url"], headers={"Range": f"bytes={start}-{end}"})
        assert r.status == 206
        assert await r.read() == data[start : end + 1]
    r = await client.get(info["content_url"], headers={"Range": "bytes=-10"})
    assert await r.read() == data[-10:]
    assert await (await get_committed(client, path)).read() == data  # the tus URL too
    assert MARKER not in all_bytes_under(tmp_path / "data")


async def test_encrypted_zero_length_and_one_segment_plus_one(make_client: Any) -> None:
    client = await make_client(**enc_settings())
    for size in (0, 4096, 4097):
        data = (png_bytes() + b"\x00" * size)[:size] if size else b""
        path = await upload(client, data, filename=f"f{size}.bin")
        info = await wait_file(client, path)
        if info["status"] != "committed":
            assert info["status"] == "rejected"  # a policy may refuse an empty file
            continue
        assert await (await client.get(info["content_url"])).read() == data


async def test_a_tampered_object_is_an_error_not_garbage(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(**enc_settings())
    data = png_bytes() + MARKER * 800
    path = await upload(client, data, filename="x.png")
    info = await wait_file(client, path)
    assert info["status"] == "committed"
    objects = [
        p
        for p in (tmp_path / "data" / "objects").rglob("*")
        if p.is_file()
        and ".meta" not in p.parts
        and not p.name.startswith(".tusserver")
        and ".thumb-" not in p.name  # the thumbnails stored beside it
    ]
    assert len(objects) == 1
    raw = bytearray(objects[0].read_bytes())
    raw[50] ^= 0x01  # inside the first segment
    objects[0].write_bytes(bytes(raw))
    r = await client.get(info["content_url"])
    assert r.status == 500
    body = await r.json()
    assert body["error"] == "stored_data_unreadable"
    assert MARKER not in str(body).encode()


async def test_the_commit_copies_ciphertext_instead_of_reencrypting(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The encrypted chunk store commits into the encrypted local object store by copying
    # the sealed file (EncryptedChunkStore.copy_into): the streaming path is never taken.
    real = {
        "put_file": EncryptedObjectStore.put_file,
        "put_stream": EncryptedObjectStore.put_stream,
    }

    def thumbnails_only(name: str) -> Any:
        async def put(self: Any, key: str, *args: Any, **kwargs: Any) -> None:
            # The media step's WebP thumbnails are new objects (encrypted like any other).
            if ".thumb-" not in key:
                raise AssertionError(f"the commit streamed the plaintext through {name}")
            await real[name](self, key, *args, **kwargs)

        return put

    monkeypatch.setattr(EncryptedObjectStore, "put_stream", thumbnails_only("put_stream"))
    monkeypatch.setattr(EncryptedObjectStore, "put_file", thumbnails_only("put_file"))
    client = await make_client(**enc_settings())
    for size in (0, 4096, 3 * 4096 + 5):
        data = (png_bytes() + MARKER * 2000)[:size]
        path = await upload(client, data, filename=f"c{size}.png")
        info = await wait_file(client, path)
        if size == 0 and info["status"] == "rejected":
            continue  # a policy may refuse an empty file
        assert info["status"] == "committed", info
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert await (await client.get(info["content_url"])).read() == data
        if size:
            r = await client.get(info["content_url"], headers={"Range": "bytes=4090-4100"})
            assert r.status == 206
            assert await r.read() == data[4090:4101]
    uploads = [p for p in (tmp_path / "data" / "uploads").iterdir() if p.is_file()]
    assert all(p.name.startswith(".") for p in uploads), uploads  # chunk copies removed
    assert MARKER not in all_bytes_under(tmp_path / "data")


async def test_finished_uploads_are_committed_by_a_rename(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store seals an upload's last segment as final when the upload has all its bytes
    # (EncryptedChunkStore.finish): the sealed file is then the object, and the commit moves
    # it into place without copying a byte, also for a length declared only at the end.
    from storage_backends.encryption import chunks

    def refuse(*_args: Any) -> None:
        raise AssertionError("the sealed upload was copied, not renamed")

    monkeypatch.setattr(chunks, "copy_range", refuse)
    client = await make_client(**enc_settings())
    for size in (1, 4096, 3 * 4096 + 5):
        data = (png_bytes() + MARKER * 2000)[:size]
        path = await upload(client, data, filename=f"r{size}.png")
        info = await wait_file(client, path)
        assert info["status"] == "committed", info
        assert await (await client.get(info["content_url"])).read() == data
    data = png_bytes() + MARKER * 700
    path = await create(client, **{"Upload-Defer-Length": "1"})
    half = len(data) // 2 + 1
    assert (await patch(client, path, 0, data[:half])).status == 204
    assert (await patch(client, path, half, data[half:])).status == 204
    done = await patch(client, path, len(data), b"", **{"Upload-Length": str(len(data))})
    assert done.status == 204
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    r = await client.get(info["content_url"], headers={"Range": "bytes=4000-9000"})
    assert r.status == 206 and await r.read() == data[4000:9001]
    uploads = [p for p in (tmp_path / "data" / "uploads").iterdir() if p.is_file()]
    assert all(p.name.startswith(".") for p in uploads), uploads
    assert MARKER not in all_bytes_under(tmp_path / "data")


async def test_repr_digest_of_a_resumed_draft_upload_is_checked(make_client: Any) -> None:
    # The encrypted chunk store is told when an upload finishes (as S3's is), but unlike
    # S3's it reads an unfinished upload back: the IETF handler still checks Repr-Digest.
    from tests.ietf.helpers import append, created, digest, problem

    client = await make_client(**enc_settings())
    data = b"0123456789" * 1000
    path = await created(client, data[:5000], **{"Repr-Digest": digest("sha-256", b"other")})
    doc = await problem(await append(client, path, 5000, data[5000:], complete=True), 400)
    assert doc["field"] == "Repr-Digest"
    path = await created(client, data[:5000], **{"Repr-Digest": digest("sha-256", data)})
    resp = await append(client, path, 5000, data[5000:], complete=True)
    assert resp.status == 200
