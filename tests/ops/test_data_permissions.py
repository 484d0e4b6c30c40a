"""The data directory is private: created 0700, every file in it 0600 (#16 item 16).

The catalog (password hashes, the audit log), its -wal and -shm files, the uploads, the
objects and their metadata sidecars (written where the filesystem refuses the extended
attribute that holds an object's metadata otherwise) are checked on a server that really ran
an upload through HTTP, under a permissive umask (002), where the defaults of open() and
SQLite would give 0664.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_backends.encryption import generate_key_spec
from storage_backends.local import META_XATTR
from tests.pipeline.test_local_pipeline import meta as upload_metadata
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tests.protocol.test_core import create, patch
from tusserver import TusServerConfig, create_app

_KEY = generate_key_spec("perm")


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def no_user_xattrs(*args: object) -> None:
    raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))


@pytest.mark.parametrize("meta", ["xattr", "sidecar"])
@pytest.mark.parametrize("encryption", ["none", "envelope"])
async def test_everything_in_the_data_directory_is_private(
    aiohttp_client: Any,
    tmp_path: Path,
    permissive_umask: None,
    encryption: str,
    meta: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if meta == "sidecar":  # a filesystem without user xattrs: metadata in sidecar files
        monkeypatch.setattr(os, "setxattr", no_user_xattrs)
    data_dir = tmp_path / "new" / "data"  # created by the server, parents included
    settings: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": "",  # the embedded default: SQLite in the data directory
        "sweep_interval": 0,
        "auth": "jwt",  # makes the server generate its secret in the data directory
        "pipeline_poll_interval": 0.2,
    }
    if encryption == "envelope":
        settings.update(encryption="envelope", encryption_keys=(_KEY,))
    client = await aiohttp_client(create_app(TusServerConfig(**settings)))
    account = {"username": "alice", "password": "correct horse 42"}
    r = await client.post("/api/v1/auth/register", json=account)
    assert r.status == 201, await r.text()
    r = await client.post("/api/v1/auth/login", json=account)
    assert r.status == 200, await r.text()
    token = (await r.json())["access_token"]
    client.session.headers["Authorization"] = f"Bearer {token}"
    data = png_bytes(extra=70_000)
    path = await upload(client, data, filename="a.png")
    info = await wait_file(client, path)
    assert info["status"] == "committed", info
    # A second upload stays in progress: its chunk file (and key sidecar) are checked too.
    # (Half of it is sent: an empty one is finished at once, and its file may be committed
    # before the listing below.)
    partial = await create(client, 10, **{"Upload-Metadata": upload_metadata(filename="b.png")})
    assert (await patch(client, partial, 0, b"12345")).status == 204

    found = modes(data_dir)
    names = set(found)
    assert {"tusserver.db", "tusserver.db-wal", "tusserver.db-shm", "jwt_secret"} <= names
    sidecars = {n for n in names if n.startswith("objects/.meta/") and n.endswith(".json")}
    if meta == "sidecar":
        assert sidecars, names
    else:  # in the object's own attribute (which has the file's mode): no sidecar
        assert not sidecars, names
        (obj,) = [
            n
            for n in names
            if n.startswith("objects/")
            and (data_dir / n).is_file()
            and "/.tusserver" not in n  # the encrypted store's key check record
            and ".thumb-" not in n  # the media step's thumbnails
        ]
        assert b'"sha256"' in os.getxattr(data_dir / obj, META_XATTR)
    assert any(n.startswith("uploads/") for n in names), names
    loose = {
        name: oct(mode)
        for name, mode in found.items()
        if mode & 0o077 or ((data_dir / name).is_dir() and mode != 0o700)
    }
    assert not loose, loose
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


async def test_catalog_files_left_readable_are_tightened(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "tusserver.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)  # as an older version (or SQLite's default) left it
    client = await aiohttp_client(
        create_app(TusServerConfig(data_dir=data_dir, auth="none", sweep_interval=0))
    )
    assert (await client.get("/readyz")).status == 200
    for name in ("tusserver.db", "tusserver.db-wal", "tusserver.db-shm"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
