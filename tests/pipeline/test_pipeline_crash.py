"""Crashes between pipeline steps: a new process on the same data finishes the job, once.

Each test runs a Runtime in-process (no background workers), makes a step raise
``SimulatedCrash`` (a BaseException, so no ``except Exception`` in the pipeline can swallow
it, like a kill), drops that runtime without running anything more, then starts a new runtime
on the same data directory and database with the clock moved past the 15-minute lease, and
drives ``run_due_once`` until the file is done.

Object stores: the local one (which moves the chunk copy into place) and S3 (which copies it).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import functools
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from auth.principal import UNAUTHENTICATED_OPERATOR
from storage_backends.base import ObjectStore
from storage_backends.local import LocalObjectStore
from storage_backends.s3 import S3ObjectStore, S3Settings
from tests.pipeline.test_local_pipeline import png_bytes
from tusserver import TusServerConfig
from tusserver.app import Runtime, build_runtime
from tusserver.catalog.files import FileStatus
from tusserver.catalog.migrate import upgrade
from tusserver.catalog.schema import file_uploads
from tusserver.catalog.schema import files as files_table
from tusserver.catalog.schema import uploads as uploads_table
from tusserver.catalog.uploads import UploadState
from tusserver.events import Hooks
from tusserver.pipeline import holders as holders_module
from tusserver.pipeline import pipeline as pipeline_module
from tusserver.pipeline.holders import Holder
from tusserver.pipeline.validators import SNIFF_BYTES, Candidate, ChecksumValidator, Verdict
from tusserver.uploads.observer import Caller


class SimulatedCrash(BaseException):
    """The process dies here."""


# --- fixtures: a fresh database per test, and the object store kinds -------------------------


class Setup:
    def __init__(self, config: TusServerConfig, s3: Any | None) -> None:
        self.config = config
        self.s3 = s3
        self.prefix = config.object_key_template.split("/", 1)[0]

    def object_store(self) -> ObjectStore:
        if self.s3 is None:
            return LocalObjectStore(self.config.objects_dir)
        return S3ObjectStore(
            S3Settings(
                endpoint=self.s3.endpoint,
                access_key=self.s3.access_key,
                secret_key=self.s3.secret_key,
                bucket=self.s3.bucket,
                region=self.s3.region,
                secure=False,
                part_size=5 * 1024 * 1024,
            )
        )

    def stored_objects(self) -> list[str]:
        """Every object the store holds for this test (keys), metadata sidecars and the media
        step's thumbnails (``<key>.thumb-<size>.webp``, tests/media) excluded."""
        if self.s3 is None:
            root = self.config.objects_dir
            keys = [
                p.relative_to(root).as_posix()
                for p in root.rglob("*")
                if p.is_file() and ".meta" not in p.relative_to(root).parts
            ]
        else:
            client = self.s3.client()
            listing = client.list_objects(self.s3.bucket, prefix=self.prefix + "/", recursive=True)
            keys = [o.object_name for o in listing]
        return sorted(k for k in keys if ".thumb-" not in k)


@pytest.fixture(params=["local", "s3"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, fresh_database_url: str) -> Setup:
    s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        database_url=fresh_database_url,
        auth="none",
        sweep_interval=0,
        pipeline_workers=1,
        pipeline_retry_base=0.05,
        pipeline_retry_max=0.2,
        object_key_template=f"crash-{secrets.token_hex(6)}" + "/{owner}/{file_id}/{name}",
    )
    return Setup(config, s3)


# --- runtimes -----------------------------------------------------------------------------


async def open_runtime(config: TusServerConfig, **deps: Any) -> Runtime:
    """What Runtime.start does, without the background workers and sweeper."""
    rt = build_runtime(config, **deps)
    await upgrade(rt.db)
    for resource in (rt.store, rt.locker, rt.objects):
        open_resource = getattr(resource, "open", None)
        if open_resource is not None:
            await open_resource()
    await rt.pipeline.recover()
    return rt


async def drop_runtime(rt: Runtime) -> None:
    """The process is gone: release what this test process holds, run nothing more."""
    for resource in (rt.objects, rt.locker, rt.store):
        close = getattr(resource, "close", None)
        if close is not None:
            await close()
    await rt.db.dispose()


async def source(data: bytes, block: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), block):
        yield data[i : i + block]


async def finished_upload(rt: Runtime, data: bytes, block: int = 4096) -> str:
    status = await rt.uploads.create(
        Caller(UNAUTHENTICATED_OPERATOR),
        length=len(data),
        metadata={"filename": "фото отпуска.png".encode(), "filetype": b"image/png"},
    )
    upload_id = status.record.id
    done = await rt.uploads.append(
        UNAUTHENTICATED_OPERATOR, upload_id, offset=0, source=source(data, block)
    )
    assert done.finished
    return upload_id


async def rows_for(rt: Runtime, upload_id: str) -> list[dict[str, Any]]:
    async with rt.db.engine.connect() as conn:
        rows = await conn.execute(
            select(files_table)
            .join(file_uploads, file_uploads.c.file_id == files_table.c.id)
            .where(file_uploads.c.upload_id == upload_id)
        )
        found = [dict(r) for r in rows.mappings()]
        total = (await conn.execute(select(func.count()).select_from(files_table))).scalar()
    assert total == len(found), "file rows that belong to no upload"
    return found


async def restart_and_finish(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, upload_id: str
) -> Runtime:
    """A new process, 16 minutes later (past the dead worker's lease), works until done."""
    later = dt.timedelta(minutes=16)
    monkeypatch.setattr(
        "tusserver.app.Pipeline",
        functools.partial(pipeline_module.Pipeline, clock=lambda: dt.datetime.now(dt.UTC) + later),
    )
    rt = await open_runtime(setup.config, objects=setup.object_store())
    await work_until_done(rt, upload_id)
    return rt


async def work_until_done(rt: Runtime, upload_id: str, timeout: float = 20.0) -> None:
    """Run the due work (retries included) until the upload's file leaves the pipeline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        await rt.pipeline.run_due_once()
        rows = await rows_for(rt, upload_id)
        if rows and rows[0]["status"] not in ("received", "validating"):
            return
        await asyncio.sleep(0.05)


async def assert_committed_once(setup: Setup, rt: Runtime, upload_id: str, data: bytes) -> None:
    rows = await rows_for(rt, upload_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == FileStatus.COMMITTED.value, row
    assert row["lease_until"] is None
    sha = hashlib.sha256(data).hexdigest()
    assert row["sha256"] == sha
    assert row["detected_type"] == "image/png"
    assert setup.stored_objects() == [row["storage_key"]]
    info = await rt.objects.stat(row["storage_key"])
    assert info is not None
    assert info.size == len(data)
    assert info.metadata["sha256"] == sha
    stored = b"".join([b async for b in rt.objects.get(row["storage_key"])])
    assert hashlib.sha256(stored).hexdigest() == sha
    chunk = setup.config.uploads_dir / upload_id
    assert not chunk.exists(), f"the chunk copy of committed file {row['id']} is left behind"
    assert await rt.files.pending_count() == 0


# --- faults -------------------------------------------------------------------------------


class CrashingValidator:
    """Runs after the inspect step recorded sha256 and type: the process dies here."""

    name = "crash"

    async def check(self, candidate: Candidate) -> Verdict:
        raise SimulatedCrash("after inspect")


class CrashAfterPut:
    """The object store writes the object, then the process dies before anything else."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self.kind = inner.kind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        await self._inner.put_file(
            key, path, content_type=content_type, metadata=metadata, consume=consume
        )
        if ".thumb-" not in key:  # the media step's thumbnails come before the file's object
            raise SimulatedCrash("after put_file")

    async def put_stream(self, key: str, src: Any, **kwargs: Any) -> None:
        await self._inner.put_stream(key, src, **kwargs)
        raise SimulatedCrash("after put_stream")


# --- the crashes --------------------------------------------------------------------------


DATA = png_bytes(extra=40_000)


async def dies_before_the_finish(rt: Runtime) -> str:
    """An upload whose bytes are all stored when the process dies before the transaction
    that finishes it and records its file: its id."""

    async def die(_rec: Any, **_kwargs: Any) -> None:
        raise SimulatedCrash("bytes stored; the upload not finished, its file not recorded")

    rt.uploads.on_finished = die
    with pytest.raises(SimulatedCrash):
        await finished_upload(rt, DATA)
    async with rt.db.engine.connect() as conn:
        return str((await conn.execute(select(uploads_table.c.id))).scalar_one())


async def test_crash_before_the_finish_and_the_file_row(setup: Setup) -> None:
    """Every byte is stored, then the process dies before the transaction that finishes the
    upload and records its file: neither is there (the client had no answer). The client's
    next request on the upload (a HEAD) finishes it, and the file is committed once."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    upload_id = await dies_before_the_finish(rt)
    async with rt.db.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(files_table))).scalar()
        state = (await conn.execute(select(uploads_table.c.state))).scalar_one()
    assert total == 0
    assert state == UploadState.RECEIVING.value
    assert await rt.files.finished_uploads_without_file() == []
    await drop_runtime(rt)

    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        status = await rt.uploads.status(UNAUTHENTICATED_OPERATOR, upload_id)
        assert status.finished and status.offset == len(DATA)
        await work_until_done(rt, upload_id)
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


async def test_a_finished_upload_without_its_file_row_is_taken_in_at_start(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload finished without a file row (as an older version could leave one after a
    crash between the two) gets its row when the next process starts, and is committed."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    upload_id = await dies_before_the_finish(rt)
    await rt.uploads.repo.update(
        upload_id, state=UploadState.FINISHED, offset=len(DATA), length=len(DATA)
    )
    assert await rt.files.finished_uploads_without_file() == [upload_id]
    await drop_runtime(rt)

    rt = await restart_and_finish(setup, monkeypatch, upload_id)
    try:
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


async def test_crash_after_inspect(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = await open_runtime(
        setup.config,
        objects=setup.object_store(),
        validators=[ChecksumValidator(), CrashingValidator()],
    )
    upload_id = await finished_upload(rt, DATA)
    with pytest.raises(SimulatedCrash):
        await rt.pipeline.run_due_once()
    [row] = await rows_for(rt, upload_id)
    assert row["status"] == "validating"
    assert row["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert row["detected_type"] == "image/png"
    assert row["lease_until"] is not None
    # The key is recorded with the sha256, before any object exists.
    assert row["storage_key"] is not None
    assert setup.stored_objects() == []
    await drop_runtime(rt)

    rt = await restart_and_finish(setup, monkeypatch, upload_id)
    try:
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


async def test_crash_after_the_object_write(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = await open_runtime(setup.config, objects=CrashAfterPut(setup.object_store()))
    upload_id = await finished_upload(rt, DATA)
    with pytest.raises(SimulatedCrash):
        await rt.pipeline.run_due_once()
    [row] = await rows_for(rt, upload_id)
    assert row["status"] == "validating"
    assert row["storage_key"] is not None
    assert setup.stored_objects() == [row["storage_key"]]
    await drop_runtime(rt)

    rt = await restart_and_finish(setup, monkeypatch, upload_id)
    try:
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


async def test_crash_after_the_committed_row(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = await open_runtime(setup.config, objects=setup.object_store())
    upload_id = await finished_upload(rt, DATA)

    update = rt.files.update_held

    async def update_then_die(file_id: str, holder: str, **values: Any) -> bool:
        written = await update(file_id, holder, **values)
        if values.get("status") in (FileStatus.COMMITTED, FileStatus.COMMITTED.value):
            raise SimulatedCrash("committed row written")
        return written

    monkeypatch.setattr(rt.files, "update_held", update_then_die)
    with pytest.raises(SimulatedCrash):
        await rt.pipeline.run_due_once()
    [row] = await rows_for(rt, upload_id)
    assert row["status"] == "committed"
    await drop_runtime(rt)

    rt = await restart_and_finish(setup, monkeypatch, upload_id)
    try:
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


# --- a graceful stop is not a crash -------------------------------------------------------


class BlockingValidator:
    """Holds each file in the middle of its processing until ``open`` is set (or the
    runtime is stopped)."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def check(self, candidate: Candidate) -> Verdict:
        self.entered.set()
        await self.open.wait()
        return Verdict.accept()


async def test_graceful_stop_mid_commit_does_not_hold_the_file_for_the_lease(
    setup: Setup,
) -> None:
    """A rolling restart stops a worker in the middle of a file: the next process (real
    clock, no 15-minute wait) commits it right away."""
    blocking = BlockingValidator()
    rt = build_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), blocking]
    )
    await rt.start()
    try:
        upload_id = await finished_upload(rt, DATA)
        await asyncio.wait_for(blocking.entered.wait(), 10)
    finally:
        await rt.stop()

    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        [row] = await rows_for(rt, upload_id)
        assert row["lease_until"] is None, (
            "the stopped worker kept its lease: the file waits until " + str(row["lease_until"])
        )
        await work_until_done(rt, upload_id)
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


async def test_a_long_validation_keeps_its_lease(setup: Setup) -> None:
    """A file that takes longer than the lease to validate (a huge scan, a slow copy) is not
    handed to another worker or instance: the live worker renews its lease."""
    blocking = BlockingValidator()
    rt = build_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), blocking]
    )
    # Renewed every second: a loaded machine (the suite's workers, PostgreSQL and S3 on two
    # cores) may hold a renewal back for a second or two without the lease running out
    # (with 1.2 s, renewed every 0.4 s, a clean-clone run once saw it run out).
    rt.pipeline.lease = dt.timedelta(seconds=3)
    await rt.start()
    try:
        upload_id = await finished_upload(rt, DATA)
        await asyncio.wait_for(blocking.entered.wait(), 10)
        await asyncio.sleep(4.5)  # well past the first lease
        [row] = await rows_for(rt, upload_id)
        now = dt.datetime.now(dt.UTC)
        assert row["status"] == FileStatus.VALIDATING.value
        lease = row["lease_until"]
        lease = lease if lease.tzinfo else lease.replace(tzinfo=dt.UTC)
        assert lease > now, f"the lease ran out at {lease} while the worker still held the file"
        assert row["id"] not in await rt.files.due(now, 50)
    finally:
        await rt.stop()
    # Stopped mid-file: the lease is handed back (and renewals stop with the workers).
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        [row] = await rows_for(rt, upload_id)
        assert row["lease_until"] is None
    finally:
        await drop_runtime(rt)


async def file_row_of(rt: Runtime, upload_id: str) -> dict[str, Any]:
    async with rt.db.engine.connect() as conn:
        rows = await conn.execute(
            select(files_table)
            .join(file_uploads, file_uploads.c.file_id == files_table.c.id)
            .where(file_uploads.c.upload_id == upload_id)
        )
        return dict(rows.mappings().one())


async def test_a_file_is_claimed_at_intake_only_for_an_idle_worker(setup: Setup) -> None:
    """A file finished while this process's worker waits for work is inserted claimed (no
    claim statement of its own); one finished while the worker is busy is left unclaimed,
    for any instance's worker. A graceful stop hands the claimed file back, and the next
    process commits both at once."""
    blocking = BlockingValidator()
    rt = build_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), blocking]
    )
    claims: list[str] = []
    claim = rt.files.claim

    async def counted(file_id: str, *args: Any, **kwargs: Any) -> bool:
        claims.append(file_id)
        return await claim(file_id, *args, **kwargs)

    rt.files.claim = counted  # type: ignore[method-assign]
    await rt.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while rt.pipeline._idle < 1:  # the worker waits for the queue
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        first = await finished_upload(rt, DATA)
        await asyncio.wait_for(blocking.entered.wait(), 10)
        row = await file_row_of(rt, first)
        assert row["status"] == FileStatus.VALIDATING.value
        assert row["lease_holder"] == str(rt.pipeline.holder)
        assert row["attempts"] == 1
        assert claims == [], "a file claimed at intake was claimed again"
        # The only worker is busy now: the next file waits unclaimed, visible to all.
        waiting = await finished_upload(rt, DATA)
        row = await file_row_of(rt, waiting)
        assert row["status"] == FileStatus.RECEIVED.value
        assert row["lease_until"] is None and row["attempts"] == 0
        assert row["id"] in await rt.files.due(dt.datetime.now(dt.UTC), 50)
    finally:
        await rt.stop()
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        for upload_id in (first, waiting):
            assert (await file_row_of(rt, upload_id))["lease_until"] is None
        deadline = asyncio.get_running_loop().time() + 20
        while await rt.files.pending_count():
            assert asyncio.get_running_loop().time() < deadline, "the files were not taken"
            await rt.pipeline.run_due_once()
        for upload_id in (first, waiting):
            row = await file_row_of(rt, upload_id)
            assert row["status"] == FileStatus.COMMITTED.value, row
            assert row["sha256"] == hashlib.sha256(DATA).hexdigest()
        assert sorted(setup.stored_objects()) == sorted(
            [(await file_row_of(rt, u))["storage_key"] for u in (first, waiting)]
        )
    finally:
        await drop_runtime(rt)


async def test_a_caller_cancelled_while_its_claimed_row_commits_leaves_no_stuck_file(
    setup: Setup,
) -> None:
    """The request finishing an upload is cancelled (a shutdown, a client timeout) right
    when the file's row, claimed at intake, has committed: the file is still taken and
    committed here, not left leased to a process that forgot it."""
    rt = build_runtime(setup.config, objects=setup.object_store())
    create = rt.files.create_for_upload
    cancelled: list[str] = []

    async def commits_then_cancelled(*args: Any, **kwargs: Any) -> str:
        file_id = await create(*args, **kwargs)
        if kwargs.get("claim") is not None:
            cancelled.append(file_id)
            raise asyncio.CancelledError
        return file_id

    rt.files.create_for_upload = commits_then_cancelled  # type: ignore[method-assign]
    await rt.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while rt.pipeline._idle < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        status = await rt.uploads.create(
            Caller(UNAUTHENTICATED_OPERATOR), length=len(DATA), metadata={}
        )
        upload_id = status.record.id
        with pytest.raises(asyncio.CancelledError):
            await rt.uploads.append(
                UNAUTHENTICATED_OPERATOR, upload_id, offset=0, source=source(DATA)
            )
        assert len(cancelled) == 1
        deadline = asyncio.get_running_loop().time() + 20
        while (await file_row_of(rt, upload_id))["status"] != FileStatus.COMMITTED.value:
            assert asyncio.get_running_loop().time() < deadline, "the claimed file was left"
            await asyncio.sleep(0.05)
        row = await file_row_of(rt, upload_id)
        assert row["lease_until"] is None and row["id"] == cancelled[0]
    finally:
        await rt.stop()


async def test_without_workers_here_a_file_is_left_unclaimed(setup: Setup) -> None:
    """No worker runs in this process (not started, as for `tusserver` commands): the file
    row waits unclaimed, for whichever worker looks in the catalog first."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        upload_id = await finished_upload(rt, DATA)
        row = await file_row_of(rt, upload_id)
        assert row["status"] == FileStatus.RECEIVED.value
        assert row["lease_until"] is None and row["lease_holder"] is None
        assert row["attempts"] == 0
        await work_until_done(rt, upload_id)
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await drop_runtime(rt)


def recorded_claims(rt: Runtime) -> list[list[str]]:
    """The files of each batch claim of ``rt``, as they are made."""
    batches: list[list[str]] = []
    claim_many = rt.files.claim_many

    async def recorded(file_ids: list[str], *args: Any, **kwargs: Any) -> set[str]:
        batches.append(list(file_ids))
        return await claim_many(file_ids, *args, **kwargs)

    rt.files.claim_many = recorded  # type: ignore[method-assign]
    return batches


async def test_files_waiting_for_a_busy_worker_are_claimed_in_one_statement(
    setup: Setup,
) -> None:
    """A burst: the files finished while the only worker is busy are claimed together once
    it is free (one statement for all), each once, and all are committed."""
    gate = BlockingValidator()
    rt = build_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), gate]
    )
    batches = recorded_claims(rt)
    await rt.start()
    try:
        first = await finished_upload(rt, DATA)
        await asyncio.wait_for(gate.entered.wait(), 10)
        waiting = [await finished_upload(rt, DATA) for _ in range(5)]
        waiting_files = [(await file_row_of(rt, u))["id"] for u in waiting]
        for upload_id in waiting:
            row = await file_row_of(rt, upload_id)
            assert row["status"] == FileStatus.RECEIVED.value and row["attempts"] == 0
        gate.open.set()
        deadline = asyncio.get_running_loop().time() + 20
        for upload_id in [first, *waiting]:
            while (await file_row_of(rt, upload_id))["status"] != FileStatus.COMMITTED.value:
                assert asyncio.get_running_loop().time() < deadline, "a file was left"
                await asyncio.sleep(0.02)
        assert waiting_files in batches, batches  # the five in one claim, in their order
        claimed = [file_id for batch in batches for file_id in batch]
        assert sorted(f for f in claimed if f in waiting_files) == sorted(waiting_files)
        for upload_id in waiting:
            row = await file_row_of(rt, upload_id)
            assert row["attempts"] == 1 and row["lease_until"] is None
        assert not rt.pipeline._claimed
    finally:
        await rt.stop()
    assert len(setup.stored_objects()) == 6


class NamedGate:
    """Holds the files named ``slow...`` in their processing until each one's release."""

    name = "named-gate"

    def __init__(self) -> None:
        self.entered: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )
        self.release: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
            asyncio.Event
        )

    async def check(self, candidate: Candidate) -> Verdict:
        name = candidate.metadata.get("filename", "")
        self.entered[name].set()
        if name.startswith("slow"):
            await self.release[name].wait()
        return Verdict.accept()


async def named_upload(rt: Runtime, name: str) -> str:
    status = await rt.uploads.create(
        Caller(UNAUTHENTICATED_OPERATOR),
        length=len(DATA),
        metadata={"filename": name.encode(), "filetype": b"image/png"},
    )
    done = await rt.uploads.append(
        UNAUTHENTICATED_OPERATOR, status.record.id, offset=0, source=source(DATA)
    )
    assert done.finished
    return status.record.id


async def test_the_rest_of_a_batch_waits_behind_no_slow_file(setup: Setup) -> None:
    """A worker's batch claim holds files for this process, not for the worker: while the
    file it took first is slow, another worker that comes free takes the rest (without a
    claim of its own), and they are committed before the slow one."""
    gate = NamedGate()
    config = dataclasses.replace(setup.config, pipeline_workers=2)
    rt = build_runtime(config, objects=setup.object_store(), validators=[gate])
    batches = recorded_claims(rt)
    await rt.start()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while rt.pipeline._idle < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        busy = []
        for name in ("slow-a", "slow-b"):  # each claimed at intake by an idle worker
            busy.append(await named_upload(rt, name))
            await asyncio.wait_for(gate.entered[name].wait(), 10)
        queued = [await named_upload(rt, name) for name in ("slow-c", "d", "e", "f")]
        gate.release["slow-b"].set()  # its worker claims a batch starting with slow-c
        await asyncio.wait_for(gate.entered["slow-c"].wait(), 10)
        gate.release["slow-a"].set()  # the other worker comes free
        deadline = asyncio.get_running_loop().time() + 20
        for upload_id in queued[1:]:
            while (await file_row_of(rt, upload_id))["status"] != FileStatus.COMMITTED.value:
                assert asyncio.get_running_loop().time() < deadline, "held behind slow-c"
                await asyncio.sleep(0.02)
        assert (await file_row_of(rt, queued[0]))["status"] == FileStatus.VALIDATING.value
        ids = [(await file_row_of(rt, u))["id"] for u in queued]
        assert any(len(b) > 1 and ids[0] in b for b in batches), batches
        for file_id in ids:  # each claimed once, in one of the batch statements
            assert sum(file_id in b for b in batches) == 1, batches
        gate.release["slow-c"].set()
        while (await file_row_of(rt, queued[0]))["status"] != FileStatus.COMMITTED.value:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        for upload_id in [*busy, *queued]:
            assert (await file_row_of(rt, upload_id))["attempts"] == 1
    finally:
        await rt.stop()


async def test_a_graceful_stop_hands_back_every_lease_of_the_process(setup: Setup) -> None:
    """At stop, the leases this process holds are handed back in one statement, also one
    it holds without knowing it (a claim that committed after its worker was cancelled):
    the next process takes the files at once, not after the lease."""
    blocking = BlockingValidator()
    rt = build_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), blocking]
    )
    await rt.start()
    try:
        busy = await finished_upload(rt, DATA)
        await asyncio.wait_for(blocking.entered.wait(), 10)
        unknown = await finished_upload(rt, DATA)
        file_id = (await file_row_of(rt, unknown))["id"]
        now = dt.datetime.now(dt.UTC)
        pipeline = rt.pipeline
        assert await rt.files.claim_many([file_id], now, pipeline.lease, str(pipeline.holder))
        assert file_id not in pipeline._claimed
        row = await file_row_of(rt, busy)
        assert row["lease_holder"] == str(pipeline.holder) and row["lease_until"] is not None
    finally:
        await rt.stop()
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        for upload_id in (busy, unknown):
            row = await file_row_of(rt, upload_id)
            assert row["lease_until"] is None and row["lease_holder"] is None, row
        assert sorted(await rt.files.due(dt.datetime.now(dt.UTC), 50)) == sorted(
            [(await file_row_of(rt, u))["id"] for u in (busy, unknown)]
        )
    finally:
        await drop_runtime(rt)


async def test_a_failed_batch_claim_still_processes_the_files_held_here(setup: Setup) -> None:
    """The claim of a batch fails (the database is unreachable for a moment): the files this
    process held already are processed all the same, and left neither held nor leased;
    the others stay due for a later scan, which commits them."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        held_upload = await finished_upload(rt, DATA)
        other_upload = await finished_upload(rt, DATA)
        held = (await file_row_of(rt, held_upload))["id"]
        other = (await file_row_of(rt, other_upload))["id"]
        now = dt.datetime.now(dt.UTC)
        pipeline = rt.pipeline
        assert await rt.files.claim_many([held], now, pipeline.lease, str(pipeline.holder))
        pipeline._claimed[held] = 0.0  # (its trust has run out: the catalog is asked)
        pipeline._held.add(held)
        claim_many = rt.files.claim_many

        async def unreachable(*args: Any, **kwargs: Any) -> set[str]:
            raise OSError("connection refused")

        rt.files.claim_many = unreachable  # type: ignore[method-assign]
        await pipeline._take([held, other], 0)
        row = await file_row_of(rt, held_upload)
        assert row["status"] == FileStatus.COMMITTED.value and row["lease_until"] is None
        assert held not in pipeline._claimed and held not in pipeline._held
        row = await file_row_of(rt, other_upload)
        assert row["status"] == FileStatus.RECEIVED.value and row["lease_until"] is None
        assert other not in pipeline._claimed and other not in pipeline._fresh
        rt.files.claim_many = claim_many  # type: ignore[method-assign]
        assert other in await rt.files.due(dt.datetime.now(dt.UTC), 50)
        assert await pipeline.run_due_once() == 1
        assert (await file_row_of(rt, other_upload))["status"] == FileStatus.COMMITTED.value
    finally:
        await drop_runtime(rt)


async def test_a_batch_claim_takes_only_the_files_no_one_else_holds(setup: Setup) -> None:
    """Of the files a worker asks for, those held by a live lease elsewhere, and those
    already done, stay as they are; the claim returns the others, leased to it."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        uploads = [await finished_upload(rt, DATA) for _ in range(4)]
        ids = [(await file_row_of(rt, u))["id"] for u in uploads]
        now = dt.datetime.now(dt.UTC)
        lease = dt.timedelta(minutes=15)
        assert await rt.files.claim_many([ids[1]], now, lease, "elsewhere") == {ids[1]}
        await rt.files.update(ids[3], status=FileStatus.COMMITTED, next_attempt_at=None)
        got = await rt.files.claim_many(ids, now, lease, "here")
        assert got == {ids[0], ids[2]}
        for upload_id, holder in zip(uploads, ["here", "elsewhere", "here", None], strict=True):
            row = await file_row_of(rt, upload_id)
            assert row["lease_holder"] == holder
        assert (await file_row_of(rt, uploads[3]))["status"] == FileStatus.COMMITTED.value
        # Nothing left to take: an empty answer, no error.
        assert await rt.files.claim_many(ids, now, lease, "again") == set()
        assert await rt.files.claim_many([], now, lease, "again") == set()
    finally:
        await drop_runtime(rt)


async def test_a_small_file_typed_whole_is_recorded_inspected_at_intake(setup: Setup) -> None:
    """The first body's type check saw the whole file: its row is inserted with the type,
    sha256 and key (on record before the object exists), and the worker commits it without
    recording them again. A file longer than the check's head is inspected by the worker."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    recorded: list[dict[str, Any]] = []
    update = rt.files.update_held

    async def watched(file_id: str, holder: str, **values: Any) -> bool:
        recorded.append(values)
        return await update(file_id, holder, **values)

    rt.files.update_held = watched  # type: ignore[method-assign]
    try:
        # In one block, as a small body arrives: the type check sees all of it.
        small = await finished_upload(rt, DATA, len(DATA))
        row = await file_row_of(rt, small)
        assert row["status"] == FileStatus.RECEIVED.value
        assert row["sha256"] == hashlib.sha256(DATA).hexdigest()
        assert row["detected_type"] == "image/png" and row["category"] == "image"
        assert row["storage_key"] and row["storage_key"].startswith(setup.prefix + "/")
        assert row["type_mismatch"] is False or row["type_mismatch"] == 0
        await work_until_done(rt, small)
        assert not any("sha256" in values for values in recorded), recorded
        await assert_committed_once(setup, rt, small, DATA)
        assert (await file_row_of(rt, small))["storage_key"] == row["storage_key"]

        big_data = png_bytes(extra=SNIFF_BYTES + 1000)
        big = await finished_upload(rt, big_data, len(big_data))
        row = await file_row_of(rt, big)
        assert row["sha256"] is None and row["storage_key"] is None
        deadline = asyncio.get_running_loop().time() + 20
        while (await file_row_of(rt, big))["status"] != FileStatus.COMMITTED.value:
            assert asyncio.get_running_loop().time() < deadline, "the file was left"
            await rt.pipeline.run_due_once()
        row = await file_row_of(rt, big)
        assert row["status"] == FileStatus.COMMITTED.value
        assert row["sha256"] == hashlib.sha256(big_data).hexdigest()
        assert any("sha256" in values for values in recorded)
    finally:
        await drop_runtime(rt)


async def test_stored_bytes_unlike_those_typed_at_intake_are_inspected_again(
    setup: Setup,
) -> None:
    """The bytes stored are not those the type check saw (as when a resumed upload's later
    bytes differ): the worker finds out from their sha256 and records the file as stored,
    its own type and sha256, before the object exists."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        upload_id = await finished_upload(rt, DATA, len(DATA))
        assert (await file_row_of(rt, upload_id))["detected_type"] == "image/png"
        other = (b"plain words and no image\n" * (len(DATA) // 25 + 1))[: len(DATA)]
        rt.pipeline._local_chunks.local_path(upload_id).write_bytes(other)  # type: ignore[union-attr]
        await work_until_done(rt, upload_id)
        row = await file_row_of(rt, upload_id)
        assert row["sha256"] == hashlib.sha256(other).hexdigest()
        assert row["detected_type"].startswith("text/"), row
        assert row["status"] in (FileStatus.COMMITTED.value, FileStatus.REJECTED.value)
        if row["status"] == FileStatus.COMMITTED.value:
            stored = b"".join([b async for b in rt.objects.get(row["storage_key"])])
            assert stored == other
            assert setup.stored_objects() == [row["storage_key"]]
    finally:
        await drop_runtime(rt)


async def claimed_by(setup: Setup, holder: Holder) -> tuple[str, str]:
    """A finished upload whose file ``holder`` claimed for 15 minutes, then nothing more ran:
    (upload id, file id)."""
    rt = await open_runtime(setup.config, objects=setup.object_store())
    try:
        upload_id = await finished_upload(rt, DATA)
        async with rt.db.engine.connect() as conn:
            query = select(file_uploads.c.file_id).where(file_uploads.c.upload_id == upload_id)
            file_id = (await conn.execute(query)).scalar_one()
        now = dt.datetime.now(dt.UTC)
        assert await rt.files.claim(file_id, now, dt.timedelta(minutes=15), str(holder))
    finally:
        await drop_runtime(rt)
    return upload_id, file_id


@pytest.mark.parametrize("death", ["same_pid", "other_pid", "reboot"])
async def test_a_process_that_died_on_this_host_is_not_waited_for(setup: Setup, death: str) -> None:
    """SIGKILL, then a restart (with the same PID - as in a container - or another one, or
    after a reboot): the files the dead process held are taken again at once, not after their
    15-minute leases (real clock here)."""
    me = Holder.of_this_process()
    if death == "same_pid":
        holder = dataclasses.replace(me, start=str(int(me.start) - 1))
    elif death == "reboot":
        holder = dataclasses.replace(me, boot="0" * 32)
    else:
        gone = await asyncio.create_subprocess_exec("true")
        start = holders_module._start_time(Path("/proc"), gone.pid)
        await gone.wait()
        holder = dataclasses.replace(me, pid=gone.pid, start=start or "1")
    upload_id, _ = await claimed_by(setup, holder)
    rt = build_runtime(setup.config, objects=setup.object_store())
    await rt.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while (await rows_for(rt, upload_id))[0]["status"] == "validating":
            assert asyncio.get_running_loop().time() < deadline, "the dead process's lease held"
            await asyncio.sleep(0.05)
        await assert_committed_once(setup, rt, upload_id, DATA)
    finally:
        await rt.stop()


async def test_leases_of_live_or_foreign_holders_are_kept(setup: Setup) -> None:
    """A holder that still runs (another process on this host), one on another host and one in
    another container (PID namespace) keep their leases: only the lease can free them."""
    me = Holder.of_this_process()
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        live = dataclasses.replace(Holder.of_this_process(), pid=sleeper.pid)
        live = dataclasses.replace(live, start=holders_module._start_time(Path("/proc"), live.pid))
        assert live.start
        kept = [
            live,
            dataclasses.replace(me, host="elsewhere", start="1"),
            dataclasses.replace(me, pidns="4026599999", start="1"),
        ]
        for holder in kept:
            _, file_id = await claimed_by(setup, holder)
            rt = await open_runtime(setup.config, objects=setup.object_store())
            try:
                assert await rt.pipeline.take_back_leases() == 0
                row = await file_state_of(rt, file_id)
                assert row["status"] == "validating" and row["lease_holder"] == str(holder)
                assert row["lease_until"] is not None
            finally:
                await drop_runtime(rt)
        # The same judge does take back the lease once the process is gone.
        sleeper.kill()
        await sleeper.wait()
        rt = await open_runtime(setup.config, objects=setup.object_store())
        try:
            assert await rt.pipeline.take_back_leases() == 1
        finally:
            await drop_runtime(rt)
    finally:
        if sleeper.returncode is None:
            sleeper.kill()
            await sleeper.wait()


async def file_state_of(rt: Runtime, file_id: str) -> dict[str, Any]:
    async with rt.db.engine.connect() as conn:
        query = select(files_table).where(files_table.c.id == file_id)
        return dict((await conn.execute(query)).mappings().one())


def test_holder_names_survive_the_catalog() -> None:
    me = Holder.of_this_process()
    assert Holder.parse(str(me)) == me
    assert str(me).startswith(me.scope)
    assert len(str(me)) <= 160
    assert Holder.parse("not/a/holder") is None
    assert not me.knows_gone(me)


class UnavailableValidator:
    """A scanner that is never reachable: the pipeline retries, then gives up."""

    name = "unavailable"

    async def check(self, candidate: Candidate) -> Verdict:
        return Verdict.retry("scanner unreachable")


async def test_an_operator_retries_files_the_pipeline_gave_up_on(setup: Setup) -> None:
    """`tusserver pipeline retry --failed`: once the cause is fixed, a failed file commits."""
    config = setup.config.replace(pipeline_max_attempts=2)
    rt = await open_runtime(
        config, objects=setup.object_store(), validators=[UnavailableValidator()]
    )
    try:
        upload_id = await finished_upload(rt, DATA)
        await work_until_done(rt, upload_id)
        [row] = await rows_for(rt, upload_id)
        assert row["status"] == FileStatus.FAILED.value, row
        assert "gave up after 2 attempts" in row["reason"]
    finally:
        await drop_runtime(rt)

    rt = await open_runtime(config, objects=setup.object_store())  # the scanner is back
    try:
        assert await rt.files.requeue_failed(dt.datetime.now(dt.UTC)) == 1
        [row] = await rows_for(rt, upload_id)
        assert (row["status"], row["attempts"], row["reason"]) == ("received", 0, None)
        await work_until_done(rt, upload_id)
        await assert_committed_once(setup, rt, upload_id, DATA)
        assert await rt.files.requeue_failed(dt.datetime.now(dt.UTC)) == 0
    finally:
        await drop_runtime(rt)


# --- a worker that stalled past its lease --------------------------------------------------


async def test_a_worker_that_stalled_past_its_lease_leaves_the_file_to_the_one_that_took_it(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stalls in the middle of a file (a long GC pause, a frozen VM, the catalog
    unreachable) until its lease runs out; another instance takes the file and commits it.
    When the first worker wakes up, its outcome is not written over the other's: the file
    is committed once, one commit event, its object and row intact."""
    committed: list[str] = []

    async def on_commit(rec: Any) -> None:
        committed.append(rec.id)

    blocking = BlockingValidator()
    stalled = await open_runtime(
        setup.config,
        objects=setup.object_store(),
        validators=[ChecksumValidator(), blocking],
        hooks=Hooks(post_commit=[on_commit]),
    )
    stalled.pipeline.lease = dt.timedelta(seconds=0.4)
    upload_id = await finished_upload(stalled, DATA)
    first = asyncio.create_task(stalled.pipeline.run_due_once())
    await asyncio.wait_for(blocking.entered.wait(), 10)
    await asyncio.sleep(0.5)  # its lease has run out

    later = dt.timedelta(minutes=16)  # past the stalled worker's lease
    monkeypatch.setattr(
        "tusserver.app.Pipeline",
        functools.partial(pipeline_module.Pipeline, clock=lambda: dt.datetime.now(dt.UTC) + later),
    )
    other = await open_runtime(
        setup.config, objects=setup.object_store(), hooks=Hooks(post_commit=[on_commit])
    )
    try:
        await work_until_done(other, upload_id)
        [row] = await rows_for(other, upload_id)
        assert row["status"] == FileStatus.COMMITTED.value
        await other.hooks.drain()
        assert committed == [row["id"]]

        blocking.open.set()  # the stalled worker wakes up
        await asyncio.wait_for(first, 20)
        await stalled.hooks.drain()
        assert committed == [row["id"]], "the stalled worker committed the file a second time"
        assert await rows_for(other, upload_id) == [row]
        await assert_committed_once(setup, other, upload_id, DATA)
    finally:
        await drop_runtime(other)
        await drop_runtime(stalled)


async def test_a_worker_that_stalled_past_its_lease_does_not_reject_a_file_another_took(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same stall, and the stalled worker's validator refuses the file (a verdict that
    can differ between attempts: a scanner's answer): the file the other worker committed
    keeps its object and stays committed."""

    class RefusesWhenOpened(BlockingValidator):
        async def check(self, candidate: Candidate) -> Verdict:
            await super().check(candidate)
            return Verdict.reject("refused late", category="other")

    blocking = RefusesWhenOpened()
    stalled = await open_runtime(
        setup.config, objects=setup.object_store(), validators=[ChecksumValidator(), blocking]
    )
    stalled.pipeline.lease = dt.timedelta(seconds=0.4)
    upload_id = await finished_upload(stalled, DATA)
    first = asyncio.create_task(stalled.pipeline.run_due_once())
    await asyncio.wait_for(blocking.entered.wait(), 10)
    await asyncio.sleep(0.5)  # its lease has run out

    later = dt.timedelta(minutes=16)
    monkeypatch.setattr(
        "tusserver.app.Pipeline",
        functools.partial(pipeline_module.Pipeline, clock=lambda: dt.datetime.now(dt.UTC) + later),
    )
    other = await open_runtime(setup.config, objects=setup.object_store())
    try:
        await work_until_done(other, upload_id)
        blocking.open.set()
        await asyncio.wait_for(first, 20)
        await assert_committed_once(setup, other, upload_id, DATA)
    finally:
        await drop_runtime(other)
        await drop_runtime(stalled)
