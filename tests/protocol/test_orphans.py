"""The orphan sweep, on every chunk store (local, S3, encrypted) and both catalogs.

A creation makes the store's entry first, then the upload's row: a process killed between
the two leaves an entry no row names. The sweep removes such an entry once the store last
wrote it more than ``orphan_grace`` ago; an entry with a row stays, and so does an orphan
younger than that (it may be a creation whose row is on its way). Time is moved by the
sweep's clock: the store's own times (S3's LastModified) cannot be set back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from auth.principal import UNAUTHENTICATED_OPERATOR
from storage_backends.base import UploadDataMissing, UploadLister
from storage_backends.encryption import EncryptedChunkStore
from storage_backends.local import LocalChunkStore
from tests.app_fixtures import MakeClient
from tests.protocol.test_core import create, head, patch
from tusserver.app import RUNTIME, Runtime
from tusserver.catalog.schema import file_uploads, files
from tusserver.catalog.uploads import UploadRecord, UploadState
from tusserver.uploads.observer import Caller
from tusserver.uploads.orphans import OrphanSweep, OrphanSweepStopped
from tusserver.uploads.sweeper import Sweeper

Client = TestClient[Any, Any]

#: The default orphan_grace.
GRACE = 3600.0


def orphan_sweep(rt: Runtime, *, ahead: float, catalog: Any = None) -> OrphanSweep:
    """The server's orphan sweep as it would run ``ahead`` seconds from now."""
    assert isinstance(rt.store, UploadLister)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ahead)
    return OrphanSweep(
        rt.store,
        catalog or rt.uploads.repo,
        grace=rt.config.orphan_grace,
        clock=lambda: at,
        metrics=rt.metrics,
    )


async def held(rt: Runtime, upload_id: str) -> bool:
    """Whether the store holds anything of the upload (any piece, as its listing sees)."""
    assert isinstance(rt.store, UploadLister)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    return any(
        [p.upload_id == upload_id async for p in rt.store.list_uploads(modified_before=soon)]
    )


def removed_count(rt: Runtime) -> float:
    value = rt.metrics.registry.get_sample_value("tusserver_orphaned_uploads_removed_total")
    return value or 0.0


def upload_id_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def test_an_orphan_past_the_grace_period_is_removed_and_uploads_with_rows_stay(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    rt = client.app[RUNTIME]
    assert rt.config.orphan_grace == GRACE
    receiving = await create(client, 10)
    assert (await patch(client, receiving, 0, b"01234")).status == 204
    deferred = await create(client, **{"Upload-Defer-Length": "1"})
    orphan = secrets.token_hex(16)
    await rt.store.create(orphan, length=10)  # as a crash before the insert leaves it

    assert await orphan_sweep(rt, ahead=GRACE + 60).run() == 1
    with pytest.raises(UploadDataMissing):
        await rt.store.get_offset(orphan)
    assert not await held(rt, orphan)
    assert removed_count(rt) == 1
    # The uploads with rows are whole and go on.
    assert (await head(client, receiving)).headers["Upload-Offset"] == "5"
    assert (await patch(client, receiving, 5, b"56789")).status == 204
    assert (await head(client, deferred)).headers["Upload-Offset"] == "0"
    assert await rt.store.get_offset(upload_id_of(deferred)) == 0
    # Nothing left to do: a second pass removes nothing.
    assert await orphan_sweep(rt, ahead=GRACE + 60).run() == 0


async def test_an_orphan_within_the_grace_period_is_kept(make_client: MakeClient) -> None:
    client = await make_client()
    rt = client.app[RUNTIME]
    orphan = secrets.token_hex(16)
    await rt.store.create(orphan)
    for ahead in (0.0, GRACE - 60):
        assert await orphan_sweep(rt, ahead=ahead).run() == 0
        assert await rt.store.get_offset(orphan) == 0
    assert await orphan_sweep(rt, ahead=GRACE + 60).run() == 1
    assert not await held(rt, orphan)


class _RowComesLate:
    """The catalog as a sweep sees it when the creation's insert lands right after the
    sweep looked the batch up: the batch's answer misses the row, later ones have it."""

    def __init__(self, rt: Runtime, record: UploadRecord) -> None:
        self._repo = rt.uploads.repo
        self._record: UploadRecord | None = record

    async def known_ids(self, upload_ids: Collection[str]) -> set[str]:
        answer = await self._repo.known_ids(upload_ids)
        if self._record is not None:
            await self._repo.insert(self._record)
            self._record = None
        return answer


async def test_the_row_is_asked_for_again_right_before_a_removal(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    rt = client.app[RUNTIME]
    now = dt.datetime.now(dt.UTC)
    record = UploadRecord(
        id=secrets.token_hex(16),
        owner=None,
        length=3,
        offset=0,
        metadata={},
        is_partial=False,
        is_final=False,
        state=UploadState.RECEIVING,
        created_at=now,
        updated_at=now,
        expires_at=None,
    )
    await rt.store.create(record.id, length=3)
    sweep = orphan_sweep(rt, ahead=GRACE + 60, catalog=_RowComesLate(rt, record))
    assert await sweep.run() == 0
    assert await rt.store.get_offset(record.id) == 0
    assert (await head(client, f"/uploads/{record.id}")).status == 200


async def test_an_upload_a_file_still_names_is_kept(make_client: MakeClient) -> None:
    """An upload whose row is gone but whose file still names it (its bytes may be what the
    file is read from, before its commit or in quarantine) is not the sweep's to remove."""
    client = await make_client()
    rt = client.app[RUNTIME]
    upload_id, file_id = secrets.token_hex(16), secrets.token_hex(16)
    await rt.store.create(upload_id, length=3)
    now = dt.datetime.now(dt.UTC)

    def link(conn: Any) -> None:
        conn.execute(
            files.insert().values(
                id=file_id, owner=None, name="a.bin", name_folded="a.bin", folder="/", size=3,
                status="received", meta={}, tags=[], attempts=0, created_at=now,
                updated_at=now, type_mismatch=False, location_stripped=False,
            )
        )  # fmt: skip
        conn.execute(
            file_uploads.insert().values(
                file_id=file_id, upload_id=upload_id, protocol="tus", started_at=now,
                finished_at=now, bytes=3,
            )
        )  # fmt: skip

    await rt.db.write(link)
    assert await rt.uploads.repo.known_ids([upload_id, "unknown"]) == {upload_id}
    assert await orphan_sweep(rt, ahead=GRACE + 60).run() == 0
    assert await rt.store.get_offset(upload_id) == 0


class _Recording:
    """The catalog, recording each question."""

    def __init__(self, rt: Runtime) -> None:
        self._repo = rt.uploads.repo
        self.asked: list[set[str]] = []

    async def known_ids(self, upload_ids: Collection[str]) -> set[str]:
        self.asked.append(set(upload_ids))
        return await self._repo.known_ids(upload_ids)


async def test_the_catalog_is_asked_a_batch_at_a_time(make_client: MakeClient) -> None:
    """The ids listed are looked up a batch at a time (one question for all of them here);
    only an orphan is asked about again, alone, right before its removal: never an upload
    that has a row. A batch holds at most ``batch`` ids, and an orphan whose other piece
    comes in a later batch (S3: its multipart upload after its .info) is removed and
    counted once."""
    client = await make_client()
    rt = client.app[RUNTIME]
    with_rows = {upload_id_of(await create(client, 3)) for _ in range(5)}
    orphan = secrets.token_hex(16)
    await rt.store.create(orphan)
    assert isinstance(rt.store, UploadLister)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=GRACE + 60)

    catalog = _Recording(rt)
    assert await OrphanSweep(rt.store, catalog, grace=GRACE, clock=lambda: at).run() == 1
    assert catalog.asked == [with_rows | {orphan}, {orphan}]

    orphan = secrets.token_hex(16)
    await rt.store.create(orphan)
    catalog = _Recording(rt)
    sweep = OrphanSweep(rt.store, catalog, grace=GRACE, clock=lambda: at, batch=2)
    assert await sweep.run() == 1
    assert max(len(ids) for ids in catalog.asked) == 2
    assert set().union(*catalog.asked) == with_rows | {orphan}


async def test_a_store_its_catalog_hardly_names_is_left_alone(make_client: MakeClient) -> None:
    """Most of a batch without rows is not what crashes leave (a few creations in flight)
    but a catalog that is not the store's (another database, another deployment's prefix):
    the sweep stops before removing any of it, and the sweeper says so."""
    client = await make_client()
    rt = client.app[RUNTIME]
    assert isinstance(rt.store, UploadLister)
    await create(client, 3)
    strays = {secrets.token_hex(16) for _ in range(8)}
    for uid in strays:
        await rt.store.create(uid)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=GRACE + 60)

    def sweep(brake: int) -> OrphanSweep:
        return OrphanSweep(rt.store, rt.uploads.repo, grace=GRACE, clock=lambda: at, brake=brake)

    with pytest.raises(OrphanSweepStopped):
        await sweep(7).run()
    sweeper = Sweeper(rt.uploads, interval=0, tombstone_retention=0, orphans=sweep(7))
    with capture_logs() as logs:
        assert await sweeper.sweep_orphans() == 0
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["orphan sweep stopped"]
    for uid in strays:
        assert await rt.store.get_offset(uid) == 0
    assert await sweep(8).run() == 8  # no more than the brake: they go


async def test_an_s3_store_without_a_prefix_of_its_own_is_not_swept(
    make_client: MakeClient, storage_settings: dict[str, Any]
) -> None:
    """Without a key prefix the bucket's other objects could look like an upload's pieces:
    the store will not list, and the sweeper says so instead of sweeping."""
    if storage_settings.get("chunk_store") != "s3":
        pytest.skip("an S3 chunk store's setting")
    client = await make_client(s3_chunk_prefix="")
    with capture_logs() as logs:
        assert await client.app[RUNTIME].sweeper.sweep_orphans() == 0
    assert [(e["event"], e["log_level"]) for e in logs] == [("no orphan sweep", "warning")]


class SimulatedCrash(BaseException):
    """The process dies here (no ``except Exception`` can clean up after it, as after a kill)."""


async def test_a_creation_killed_before_its_row_is_swept_after_the_grace_period(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash the sweep is for: the process dies after the store made the upload's entry
    and before the catalog's insert. The entry stays until it is older than the grace."""
    client = await make_client()
    rt = client.app[RUNTIME]
    kept = await create(client, 3)

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(rt.uploads.repo, "insert", killed)
    with pytest.raises(SimulatedCrash):
        await rt.uploads.create(Caller(UNAUTHENTICATED_OPERATOR), length=10, metadata={})
    monkeypatch.undo()
    assert isinstance(rt.store, UploadLister)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    listed = {p.upload_id async for p in rt.store.list_uploads(modified_before=soon)}
    orphans = listed - await rt.uploads.repo.known_ids(listed)
    assert len(orphans) == 1  # the killed creation's entry, with no row
    (orphan,) = orphans

    assert await orphan_sweep(rt, ahead=60).run() == 0  # a minute later: still in its grace
    assert await held(rt, orphan)
    assert await orphan_sweep(rt, ahead=GRACE + 60).run() == 1
    assert not await held(rt, orphan)
    assert await rt.store.get_offset(upload_id_of(kept)) == 0
    assert (await patch(client, kept, 0, b"abc")).status == 204


async def test_the_server_sweeps_orphans_in_the_background(make_client: MakeClient) -> None:
    """The wiring: the sweeper runs the orphan sweep every orphan_sweep_interval, with the
    configured grace, and counts what it removed in /metrics. (The stores on local disk:
    their files' times can be set back; S3 sets LastModified itself.)"""
    client = await make_client(sweep_interval=0.1, orphan_sweep_interval=0.1)
    rt = client.app[RUNTIME]
    if not isinstance(rt.store, LocalChunkStore | EncryptedChunkStore):
        pytest.skip("the store's own times cannot be set back")
    root = rt.store.root
    kept = upload_id_of(await create(client, 3))
    old, fresh = secrets.token_hex(16), secrets.token_hex(16)
    for uid in (old, fresh):
        await rt.store.create(uid)
    long_ago = dt.datetime.now(dt.UTC).timestamp() - GRACE - 60
    for uid in (old, kept):
        for piece in root.glob(f"{uid}*"):
            os.utime(piece, (long_ago, long_ago))
    for _ in range(100):
        if not list(root.glob(f"{old}*")):
            break
        await asyncio.sleep(0.05)
    assert not list(root.glob(f"{old}*"))
    assert (root / fresh).exists()  # in its grace
    assert (root / kept).exists()  # it has a row
    metrics = await (await client.get("/metrics")).text()
    assert "tusserver_orphaned_uploads_removed_total 1.0" in metrics


async def test_no_orphan_sweep_where_the_sweeper_does_not_run(make_client: MakeClient) -> None:
    """``sweep_interval = 0`` (the other processes of ``serve --workers N``, the commands)
    turns the background orphan sweep off too."""
    client = await make_client(sweep_interval=0, orphan_sweep_interval=0.05)
    rt = client.app[RUNTIME]
    if not isinstance(rt.store, LocalChunkStore):
        pytest.skip("the store's own times cannot be set back (one store shows it)")
    orphan = secrets.token_hex(16)
    await rt.store.create(orphan)
    long_ago = dt.datetime.now(dt.UTC).timestamp() - GRACE - 60
    os.utime(rt.store.path(orphan), (long_ago, long_ago))
    await asyncio.sleep(0.5)
    assert rt.store.path(orphan).exists()


class _Catalog:
    """A catalog naming the given ids (the other deployment's are not among them)."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = ids

    async def known_ids(self, upload_ids: Collection[str]) -> set[str]:
        return {i for i in upload_ids if i in self.ids}


async def test_an_unknown_upload_holding_bytes_is_never_removed(tmp_path: Path) -> None:
    """A crash between a creation's store entry and its row leaves an empty upload: bytes
    only go to uploads with a row. So an entry the catalog does not know that holds bytes is
    someone else's (a second deployment sharing the directory or S3 prefix: fewer of its
    entries than the brake needs to stop the pass) and is kept, whatever its age."""
    store = LocalChunkStore(tmp_path / "uploads")
    await store.open()
    ours = {secrets.token_hex(16) for _ in range(200)}
    theirs = {secrets.token_hex(16) for _ in range(40)}  # another deployment's, under way
    crashed = secrets.token_hex(16)
    for upload_id in ours | theirs | {crashed}:
        await store.create(upload_id, length=10)
    for upload_id in theirs:
        await store.write(upload_id, 0, _blocks(b"12345"), fsync=False)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)  # all idle past the grace
    sweep = OrphanSweep(store, _Catalog(ours), grace=3600, clock=lambda: later)
    assert await sweep.run() == 1  # the crash's empty entry only
    for upload_id in ours | theirs:
        assert await store.get_offset(upload_id) == (5 if upload_id in theirs else 0)
    with pytest.raises(UploadDataMissing):
        await store.get_offset(crashed)


async def _blocks(data: bytes) -> AsyncIterator[bytes]:
    yield data
