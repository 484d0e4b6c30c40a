"""Processes on one data directory (SQLite + the local chunk store) either share it with
lock files (``serve --workers N``, ``serve --role api``, ``tusserver worker``) or keep their
upload locks in memory (a lone ``serve``). The two kinds cannot be mixed: a lone ``serve``
does not see the lock files, so a PATCH on it and a PATCH on another process were both
acknowledged for the same offset and their bytes interleaved in the file. Such a second
process is refused at start, before it serves anything; processes that share start side by
side.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tusserver.testing import HOST, clean_environ, free_port, tusserver_command

from ..e2e.server import _defaults
from .conftest import RoleFactory

pytestmark = [pytest.mark.e2e]

_ENV = {"TUSSERVER_SWEEP_INTERVAL": "0", "TUSSERVER_PIPELINE_POLL_INTERVAL": "0.2"}


def _start_second(data_dir: Path, kind: str) -> subprocess.CompletedProcess[str]:
    """Start a second process on ``data_dir``; it must exit by itself (it is refused)."""
    args = ["worker"] if kind == "worker" else ["serve", "--role", kind]
    argv = [*tusserver_command(), "--data-dir", str(data_dir), *args]
    argv += ["--host", HOST, "--port", str(free_port())]
    env = {**clean_environ(), **_defaults(), **_ENV}
    try:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"a {kind} process started beside the first one on {data_dir}: it was not refused"
        ) from exc


@pytest.mark.parametrize(
    ("first", "second"),
    [("all", "all"), ("all", "api"), ("all", "worker"), ("api", "all")],
)
def test_a_lone_server_and_another_process_on_one_data_dir_are_refused(
    role_factory: RoleFactory, tmp_path: Path, first: str, second: str
) -> None:
    shared = tmp_path / "shared"
    running = role_factory(first, _ENV, data_dir=shared)
    done = _start_second(shared, second)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "data_dir" in done.stderr and "in use" in done.stderr, done.stderr
    assert str(shared) in done.stderr, done.stderr
    # the first one goes on serving
    assert running.running


def test_processes_that_share_a_data_dir_start_side_by_side(
    role_factory: RoleFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    api = role_factory("api", _ENV, data_dir=shared)
    other_api = role_factory("api", _ENV, data_dir=shared)
    worker = role_factory("worker", _ENV, data_dir=shared)
    assert api.running and other_api.running and worker.running
    # once they are gone, a lone server may have the directory
    for proc in (api, other_api, worker):
        proc.terminate()
    alone = role_factory("all", _ENV, data_dir=shared)
    assert alone.running
