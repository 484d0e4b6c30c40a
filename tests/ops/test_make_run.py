"""``make run PORT=... HOST=...``: the README's command serves where it is told, and the server
says when it stops. The Makefile runs for real; its install step is skipped by giving it a
virtualenv whose install stamp is fresh and whose ``tusserver`` runs this checkout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.services import free_port

from .helpers import cli_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _fake_venv(path: Path) -> Path:
    """bin/python and bin/tusserver running this checkout; the install stamp up to date."""
    bin_dir = path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = bin_dir / "tusserver"
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m tusserver.cli "$@"\n'
    )
    script.chmod(0o755)
    (path / ".run-deps").touch()  # newer than setup.cfg: make does not reinstall
    return path


def test_make_run_with_port_and_host(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.fail("make is missing")
    if subprocess.run(
        [sys.executable, str(ROOT / "scripts/node_modules_current.py")], check=False
    ).returncode:
        pytest.fail("node_modules does not match package-lock.json: run `npm ci`")
    venv = _fake_venv(tmp_path / "venv")
    port = free_port()
    host = "127.0.0.2"  # not the default: proves HOST got through
    log_path = tmp_path / "make-run.log"
    env = cli_env({"HOST": "192.0.2.1", "PORT": "1"})  # the environment's must not count
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "run", f"PORT={port}",
             f"HOST={host}", f"VENV={venv}", f"DATA_DIR={tmp_path / 'data'}",
             f"PYTHON={sys.executable}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://{host}:{port}/app/", timeout=10) as r:
            assert r.status == 200
            assert "/vendor/uppy.min.js?v=" in r.read().decode()
        with pytest.raises(OSError):  # not on the default address
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (tmp_path / "data" / "tusserver.db").exists()  # DATA_DIR got through too
        # make's recipe exec-ed the server: make's only child.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        server_pid = int(children[0])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # as Ctrl-C reaches make and the server
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # make may end first; the server finishes its requests, then says it stopped.
    deadline = time.monotonic() + 60
    while Path(f"/proc/{server_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = log_path.read_text()
    assert "npm ci" not in out, out  # node_modules matches the lock file
    assert "tusserver ready" in out, out
    assert "tusserver stopping" in out and "tusserver stopped" in out, out
    assert out.index("tusserver stopping") < out.index("tusserver stopped")
