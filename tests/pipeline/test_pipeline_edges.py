"""Pipeline recovery edges: a worker that dies on a file, a rejection after a stored object,
the note of an unscanned file, backoff between workers, many orphaned uploads."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update

from tests.pipeline.test_pipeline_crash import (
    DATA,
    Setup,
    SimulatedCrash,
    drop_runtime,
    finished_upload,
    open_runtime,
    rows_for,
    setup,  # noqa: F401  (fixture)
)
from tusserver.catalog.schema import files as files_table
from tusserver.pipeline.validators import Candidate, ChecksumValidator, Verdict


class PoisonValidator:
    """A file whose check kills the process every time (a libmagic/clamd-client crash, an
    OOM kill): it never returns, so no _retry() ever runs."""

    name = "poison"

    def __init__(self) -> None:
        self.calls = 0

    async def check(self, candidate: Candidate) -> Verdict:
        self.calls += 1
        raise SimulatedCrash("the process dies on this file")


async def test_a_file_that_kills_its_worker_is_not_retried_past_max_attempts(
    setup: Setup,  # noqa: F811
) -> None:
    config = setup.config.replace(pipeline_max_attempts=3)
    poison = PoisonValidator()
    rt = await open_runtime(
        config, objects=setup.object_store(), validators=[ChecksumValidator(), poison]
    )
    try:
        upload_id = await finished_upload(rt, DATA)
        for _ in range(8):
            # Each round: the worker claims the file and dies; its successor on the same host
            # takes the dead holder's lease back at once (take_back_leases).
            with contextlib.suppress(SimulatedCrash):
                await rt.pipeline.run_due_once()
            async with rt.db.engine.begin() as conn:
                await conn.execute(update(files_table).values(lease_until=None))
        [row] = await rows_for(rt, upload_id)
        assert poison.calls <= config.pipeline_max_attempts, (
            f"processed {poison.calls} times, attempts={row['attempts']}, status={row['status']}"
        )
        assert row["status"] == "failed"
        assert "gave up after 3 attempts: the worker stopped" in row["reason"]
    finally:
        await drop_runtime(rt)


class VirusNowKnown:
    """The scanner after a signature update: this file is a virus now."""

    name = "clamav"

    async def check(self, candidate: Candidate) -> Verdict:
        return Verdict.reject("virus found: Win.Test.New", category="virus")


async def test_a_file_rejected_on_its_retry_leaves_no_object_behind(
    setup: Setup,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Crash after the object was written (the chunk copy still there: S3 objects keep the
    local chunk file until the commit), the retry validates again and rejects: the object of
    a rejected file must not stay in the object store (never purged, counted nowhere)."""
    from tests.pipeline.test_pipeline_crash import CrashAfterPut

    if setup.s3 is None:
        pytest.skip("the local object store moves the chunk copy: the retry commits it")
    rt = await open_runtime(setup.config, objects=CrashAfterPut(setup.object_store()))
    upload_id = await finished_upload(rt, DATA)
    with pytest.raises(SimulatedCrash):
        await rt.pipeline.run_due_once()
    [row] = await rows_for(rt, upload_id)
    assert setup.stored_objects() == [row["storage_key"]]
    await drop_runtime(rt)

    rt = await open_runtime(
        setup.config,
        objects=setup.object_store(),
        validators=[ChecksumValidator(), VirusNowKnown()],
    )
    try:
        async with rt.db.engine.begin() as conn:  # the dead worker's lease is taken back
            await conn.execute(update(files_table).values(lease_until=None))
        await rt.pipeline.run_due_once()
        [row] = await rows_for(rt, upload_id)
        assert row["status"] == "rejected", row
        # The quarantine ends: its bytes go.
        async with rt.db.engine.begin() as conn:
            await conn.execute(
                update(files_table).values(
                    quarantine_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
                )
            )
        assert await rt.pipeline.purge_quarantine() == 1
        assert setup.stored_objects() == [], "the rejected file's object is left in the store"
    finally:
        await drop_runtime(rt)


async def test_the_not_scanned_note_survives_a_crash_after_the_object_write(
    setup: Setup,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """clamd optional and unreachable: the file is committed unscanned, with a note saying so.
    A crash after the object write, finished by the next process (_recover_missing), must not
    turn it into a file that looks scanned (reason None)."""
    from tests.pipeline.test_pipeline_crash import CrashAfterPut, restart_and_finish
    from tusserver.pipeline.clamav import ClamdClient
    from tusserver.pipeline.validators import ClamAVValidator

    if setup.s3 is not None:
        pytest.skip("S3 objects keep the chunk copy: the retry validates again (no recovery)")
    unreachable = ClamAVValidator(ClamdClient("tcp://127.0.0.1:1", timeout=2), required=False)
    rt = await open_runtime(
        setup.config,
        objects=CrashAfterPut(setup.object_store()),
        validators=[ChecksumValidator(), unreachable],
    )
    upload_id = await finished_upload(rt, DATA)
    with pytest.raises(SimulatedCrash):
        await rt.pipeline.run_due_once()
    await drop_runtime(rt)

    rt = await restart_and_finish(setup, monkeypatch, upload_id)
    try:
        [row] = await rows_for(rt, upload_id)
        assert row["status"] == "committed", row
        assert row["reason"] and "not scanned" in row["reason"], (
            f"committed unscanned but reason={row['reason']!r}"
        )
    finally:
        await drop_runtime(rt)


class ScannerDown:
    """clamd unreachable: every file is to be retried (after the backoff)."""

    name = "clamav"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.during_first: Any = None

    async def check(self, candidate: Candidate) -> Verdict:
        self.calls[candidate.sha256] = self.calls.get(candidate.sha256, 0) + 1
        if self.during_first is not None:
            hook, self.during_first = self.during_first, None
            await hook()
        return Verdict.retry("waiting for the virus scanner")


async def test_a_file_put_into_backoff_by_another_worker_is_not_retried_at_once(
    setup: Setup,  # noqa: F811
) -> None:
    """Worker 1 lists A and X as due; while it works on A, worker 2 (another instance) takes
    X, which is to be retried in an hour. Worker 1 then claims X from its stale list and
    processes it again at once: the backoff is bypassed (attempts burnt, retry storm)."""
    from tests.pipeline.test_local_pipeline import png_bytes

    if setup.s3 is not None:
        pytest.skip("the store does not matter")
    config = setup.config.replace(pipeline_retry_base=3600.0, pipeline_retry_max=3600.0)
    down1, down2 = ScannerDown(), ScannerDown()
    rt1 = await open_runtime(config, objects=setup.object_store(), validators=[down1])
    rt2 = await open_runtime(config, objects=setup.object_store(), validators=[down2])
    try:
        await finished_upload(rt1, DATA)
        other = png_bytes(extra=1234)
        await finished_upload(rt1, other)

        async def second_worker() -> None:
            assert await rt2.pipeline.run_due_once() == 1

        down1.during_first = second_worker
        await rt1.pipeline.run_due_once()
        total = {
            k: down1.calls.get(k, 0) + down2.calls.get(k, 0) for k in {*down1.calls, *down2.calls}
        }
        assert max(total.values()) == 1, f"a file was scanned twice within its backoff: {total}"
    finally:
        await drop_runtime(rt2)
        await drop_runtime(rt1)


async def test_recovery_at_start_takes_in_every_finished_upload_without_a_file(
    setup: Setup,  # noqa: F811
) -> None:
    """More than 100 finished uploads left without a file row (an older version's crash):
    recover() takes 100 and stops; nothing takes the others in until the next restart."""
    if setup.s3 is not None:
        pytest.skip("the store does not matter")
    rt = await open_runtime(setup.config, objects=setup.object_store())
    rt.uploads.on_finished = None  # finished as an older version could leave them
    for i in range(105):
        await finished_upload(rt, b"%d " % i + b"x" * 100)
    assert len(await rt.files.finished_uploads_without_file(limit=1000)) == 105
    await drop_runtime(rt)

    rt = await open_runtime(setup.config, objects=setup.object_store())  # recover() runs
    try:
        left = await rt.files.finished_uploads_without_file(limit=1000)
        assert left == [], f"{len(left)} finished uploads still have no file row"
    finally:
        await drop_runtime(rt)
