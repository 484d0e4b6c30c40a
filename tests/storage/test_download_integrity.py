"""Downloads are never served as valid when the stored bytes were substituted (#16 item 15).

Through HTTP against the real server: with encryption at rest on, an object without an
envelope (plaintext written by whoever can write to the store) is an integrity error, unless
the migration setting ``encryption_allow_plaintext`` is on; and a whole-file download whose
bytes do not match the catalog's sha256 is refused (a small file: 500 before any byte is
sent) or cut short (a longer one: the client never receives it whole).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from storage_backends.encryption import generate_key_spec
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tests.storage.stored_meta import stored_doc, write_stored_doc

MARKER = b"SUBSTITUTED-PLAINTEXT-0042"
_KEY = generate_key_spec("integrity")


def stored_object(data_dir: Path) -> tuple[Path, str]:
    """The one committed object under the data directory (its path, and its key)."""
    root = data_dir / "objects"
    (obj,) = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and ".meta" not in p.parts
        and not p.name.startswith(".tusserver")
        and ".thumb-" not in p.name  # the media step's thumbnails sit next to the file
    ]
    return obj, obj.relative_to(root).as_posix()


async def test_an_object_without_envelope_is_never_served_as_plaintext(
    make_client: Any, tmp_path: Path
) -> None:
    enc = {"encryption": "envelope", "encryption_keys": (_KEY,)}
    client = await make_client(**enc)
    data = png_bytes() + MARKER * 500
    info = await wait_file(client, await upload(client, data, filename="x.png"))
    assert info["status"] == "committed", info

    # Someone with write access to the store puts plaintext there, without the envelope.
    obj, key = stored_object(tmp_path / "data")
    doc = stored_doc(tmp_path / "data" / "objects", key)
    assert any(k.startswith("tusenc-") for k in doc["metadata"])
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if not k.startswith("tusenc-")}
    write_stored_doc(tmp_path / "data" / "objects", key, doc)
    obj.write_bytes(data)

    r = await client.get(info["content_url"])
    assert r.status == 500
    body = await r.read()
    assert MARKER not in body
    assert json.loads(body)["error"] == "stored_data_unreadable"
    r = await client.get(info["content_url"], headers={"Range": "bytes=0-99"})
    assert r.status == 500 and MARKER not in await r.read()

    # Migrating files stored before encryption: the operator allows plaintext objects.
    migrating = await make_client(**enc, encryption_allow_plaintext=True)
    r = await migrating.get(info["content_url"])
    assert r.status == 200
    assert await r.read() == data


async def test_a_download_that_does_not_match_its_sha256_is_refused(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    small = png_bytes(extra=20_000)
    path = await upload(client, small, filename="s.png")
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    obj, _ = stored_object(tmp_path / "data")
    tampered = bytearray(small)
    tampered[-1] ^= 0xFF  # same size, one byte changed
    obj.write_bytes(bytes(tampered))

    r = await client.get(info["content_url"])
    assert r.status == 500, r.status
    assert json.loads(await r.read())["error"] == "stored_data_unreadable"
    # The tus URL's download too: every download reads through the same check.
    r = await client.get(path)
    body = await r.read()
    assert r.status == 500 and body != bytes(tampered), r.status
    obj.write_bytes(small)
    r = await client.get(path)
    assert r.status == 200 and await r.read() == small


async def test_a_long_download_that_does_not_match_is_cut_short(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client()
    big = png_bytes(extra=900 * 1024)  # several read blocks of 256 KiB
    info = await wait_file(client, await upload(client, big, filename="b.png"))
    assert info["status"] == "committed", info
    obj, _ = stored_object(tmp_path / "data")
    tampered = bytearray(big)
    tampered[1000] ^= 0xFF
    obj.write_bytes(bytes(tampered))

    r = await client.get(info["content_url"])
    assert r.status == 200  # the headers went before the last block was checked
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()  # ... and the body ends before its Content-Length: never whole
    # The bytes as recorded are still served whole and verified.
    obj.write_bytes(big)
    r = await client.get(info["content_url"])
    assert r.status == 200 and await r.read() == big
