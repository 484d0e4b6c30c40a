"""Database URLs as PostgreSQL tools write them, and unusable settings at start: the real
``tusserver`` command against the real PostgreSQL and SeaweedFS says one line naming the
setting and the fix, exits non-zero, and ``tusserver check`` says the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import services
from tests.services import PostgresServer, SeaweedS3, find_pg_bin, free_port

from .helpers import describe, popen, run

pytestmark = pytest.mark.e2e


def _failure_line(res: subprocess.CompletedProcess[str]) -> str:
    """Non-zero, no traceback, exactly one line on stderr: returned without ``tusserver: ``."""
    assert res.returncode != 0, describe(res)
    assert "Traceback" not in res.stderr + res.stdout, describe(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, describe(res)
    assert lines[0].startswith("tusserver: "), describe(res)
    return lines[0].removeprefix("tusserver: ")


def _finish(proc: subprocess.Popen[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what} did not stop: it ignored the bad setting\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _all_say(data: Path, settings: dict[str, str], setting: str, *words: str) -> str:
    """serve, migrate and check all refuse with the same line naming ``setting``.

    The three run side by side (each on its own data directory): a loaded machine makes
    every start of the CLI slow, and they share nothing."""
    commands = (("serve", ["--port", str(free_port())]), ("migrate", []), ("check", []))
    procs = {
        cmd: popen(["--data-dir", data / cmd, cmd, *extra], settings)
        for cmd, extra in (*commands, ("audit", []))
    }
    done = {cmd: _finish(proc, cmd) for cmd, proc in procs.items()}
    served = _failure_line(done["serve"])
    if not setting.startswith("s3_"):  # (the audit log needs the database only)
        assert _failure_line(done["audit"]) == served
    assert served.startswith(f"{setting}: "), served
    for word in words:
        assert word in served, served
    assert not (data / "serve" / "objects").exists(), "a refused start must not get that far"
    migrated = done["migrate"]
    if setting.startswith("s3_"):  # migrate needs no object store
        assert migrated.returncode == 0, describe(migrated)
    else:
        assert _failure_line(migrated) == served
    checked = done["check"]
    assert checked.returncode != 0, describe(checked)
    assert "Traceback" not in checked.stdout + checked.stderr, describe(checked)
    fails = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, describe(checked)
    assert fails[0].endswith(": " + served), describe(checked)
    return served


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgresql_urls_use_asyncpg(pg_url: str, tmp_path: Path, scheme: str) -> None:
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    name = f"tus_url_{os.urandom(4).hex()}"
    services.create_database(host, int(port), name)
    try:
        url = f"{scheme}://postgres@{host_port}/{name}"
        settings = {"TUSSERVER_DATABASE_URL": url}
        args: list[str | Path] = ["--data-dir", tmp_path / "data"]
        migrated = run([*args, "migrate"], settings)
        assert migrated.returncode == 0, describe(migrated)
        assert migrated.stdout.strip() and "(empty)" not in migrated.stdout, describe(migrated)
        checking = popen([*args, "check"], settings)
        adding = popen([*args, "user", "add", "alice"], settings, stdin=subprocess.PIPE)
        out, err = adding.communicate("a long password\n", timeout=90)
        assert adding.returncode == 0, (out, err)
        checked = _finish(checking, "check")
        assert checked.returncode == 0, describe(checked)
        assert "ok    database (postgresql)" in checked.stdout, describe(checked)
        # The same catalog through the plain and the explicit SQLAlchemy URL.
        explicit = {"TUSSERVER_DATABASE_URL": f"postgresql+asyncpg://postgres@{host_port}/{name}"}
        listings = [popen([*args, "user", "list"], env) for env in (settings, explicit)]
        for proc in listings:
            listed = _finish(proc, "user list")
            assert listed.returncode == 0 and listed.stdout.startswith("alice\t"), describe(listed)
    finally:
        services.drop_database(host, int(port), name)


def test_unknown_scheme_and_sync_driver(tmp_path: Path) -> None:
    cases = [
        ("mysql://tus@127.0.0.1/tus", ["serve", "migrate", "check"], "unsupported scheme 'mysql'"),
        ("postgresql+psycopg2://tus@127.0.0.1/tus", ["serve"], "'psycopg2' is synchronous"),
        ("just-a-name", ["migrate"], "not a URL"),
    ]
    procs = [
        (words, popen(["--data-dir", tmp_path / "data", command], {"TUSSERVER_DATABASE_URL": url}))
        for url, commands, words in cases
        for command in commands
    ]  # side by side: each is a separate process start
    for words, proc in procs:
        res = _finish(proc, "the command")
        line = _failure_line(res)
        assert "database_url: " in line and words in line, describe(res)
        assert "postgresql://user:password@host:port/db" in line, describe(res)
    assert not (tmp_path / "data").exists()


def test_driver_not_installed(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    import importlib.util

    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg is installed here: no missing driver to show")
    settings = {"TUSSERVER_DATABASE_URL": "postgresql+psycopg://tus@127.0.0.1/tus"}
    line = _all_say(tmp_path / "data", settings, "database_url", "psycopg", "not installed")
    assert "pip install" in line


# --- PostgreSQL -------------------------------------------------------------------------------


def test_database_unreachable(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = {"TUSSERVER_DATABASE_URL": f"postgresql://tus:secret@127.0.0.1:{port}/tus"}
    line = _all_say(tmp_path / "data", settings, "database_url", f"127.0.0.1:{port}", "start it")
    assert "secret" not in line


def _require_passwords(server: PostgresServer, password: str) -> None:
    """Give the superuser a password and make TCP connections prove it (scram-sha-256)."""
    psql = str(find_pg_bin() / "psql")
    subprocess.run(
        [psql, "-h", server.host, "-p", str(server.port), "-U", server.user, "-d", "postgres",
         "-c", f"ALTER USER {server.user} PASSWORD '{password}'"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    hba = server.data_dir / "pg_hba.conf"
    lines = [
        line.replace("trust", "scram-sha-256") if line.startswith("host") else line
        for line in hba.read_text().splitlines()
    ]
    hba.write_text("\n".join(lines) + "\n")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    env = {**os.environ, "PGPASSWORD": "not-the-password", "PGCONNECT_TIMEOUT": "5"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the reload is asynchronous
        probe = subprocess.run(
            [psql, "-h", server.host, "-p", str(server.port), "-U", server.user, "-d", "tus",
             "-c", "SELECT 1"],
            env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            return
        time.sleep(0.2)
    pytest.fail("PostgreSQL kept accepting any password")


def test_wrong_database_password_and_missing_database(
    private_postgres: PostgresServer, tmp_path: Path
) -> None:
    _require_passwords(private_postgres, "right-password")
    where = f"{private_postgres.host}:{private_postgres.port}"
    wrong = {"TUSSERVER_DATABASE_URL": f"postgresql://postgres:wrong-password@{where}/tus"}
    line = _all_say(tmp_path / "a", wrong, "database_url", "refused user 'postgres'", "password")
    assert "wrong-password" not in line

    missing = {"TUSSERVER_DATABASE_URL": f"postgresql://postgres:right-password@{where}/nope"}
    _all_say(tmp_path / "b", missing, "database_url", "'nope' does not exist", "createdb")

    right = {"TUSSERVER_DATABASE_URL": f"postgresql://postgres:right-password@{where}/tus"}
    ok = run(["--data-dir", tmp_path / "c", "check"], right)
    assert ok.returncode == 0 and "ok    database (postgresql)" in ok.stdout, describe(ok)


# --- S3 ---------------------------------------------------------------------------------------


def _s3_settings(endpoint: str, access: str, secret: str, bucket: str) -> dict[str, str]:
    return {
        "TUSSERVER_OBJECT_STORE": "s3",
        "TUSSERVER_S3_ENDPOINT": endpoint,
        "TUSSERVER_S3_ACCESS_KEY": access,
        "TUSSERVER_S3_SECRET_KEY": secret,
        "TUSSERVER_S3_BUCKET": bucket,
        "TUSSERVER_S3_SECURE": "false",
        "TUSSERVER_S3_REGION": "us-east-1",
    }


@pytest.mark.s3
def test_wrong_s3_credentials(s3_server: object, tmp_path: Path) -> None:
    info = s3_server
    settings = _s3_settings(
        info.endpoint,  # type: ignore[attr-defined]
        info.access_key,  # type: ignore[attr-defined]
        "definitely-not-the-secret",
        info.bucket,  # type: ignore[attr-defined]
    )
    line = _all_say(tmp_path / "data", settings, "s3_access_key", "refused the credentials")
    assert "s3_secret_key" in line and "definitely-not" not in line


def test_s3_unreachable(tmp_path: Path) -> None:
    settings = _s3_settings(f"127.0.0.1:{free_port()}", "key", "secret", "tus")
    _all_say(tmp_path / "data", settings, "s3_endpoint", "cannot reach S3", "s3_secure")


class _RestrictedSeaweed(SeaweedS3):
    """SeaweedFS with a second identity that may read and write but not create buckets."""

    def _prepare(self) -> None:
        super()._prepare()
        identities = json.loads(self.config_path.read_text())
        identities["identities"].append(
            {
                "name": "writer",
                "credentials": [{"accessKey": "writer-key", "secretKey": "writer-secret"}],
                "actions": ["Read", "List", "Tagging", "Write"],
            }
        )
        self.config_path.write_text(json.dumps(identities))


def test_missing_bucket(tmp_path: Path) -> None:
    with _RestrictedSeaweed() as s3:
        s3.ensure_bucket("present")
        writer = _s3_settings(s3.endpoint, "writer-key", "writer-secret", "absent")
        _all_say(tmp_path / "a", writer, "s3_bucket", "'absent' does not exist", "create it")
        # An existing bucket works for the same identity.
        present = _s3_settings(s3.endpoint, "writer-key", "writer-secret", "present")
        ok = run(["--data-dir", tmp_path / "b", "check"], present)
        assert ok.returncode == 0 and "ok    object store (s3)" in ok.stdout, describe(ok)
        # Credentials that may create buckets get theirs made at start, as documented.
        admin = _s3_settings(s3.endpoint, s3.access_key, s3.secret_key, "made-at-start")
        ok = run(["--data-dir", tmp_path / "c", "check"], admin)
        assert ok.returncode == 0, describe(ok)
        assert s3.client().bucket_exists("made-at-start")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line(tmp_path: Path, workers: str) -> None:
    """The port taken by another server (a second `serve --workers` too, which would
    otherwise share it) is refused in one line naming the setting, before any start-up."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run(
            ["--data-dir", tmp_path / "data", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", workers],
            {},
        )  # fmt: skip
    line = _failure_line(res)
    assert line.startswith("port: ") and str(port) in line, line
    assert res.returncode == 2
    assert not (tmp_path / "data" / "objects").exists(), "a refused start must not get that far"
