"""The ``tusserver`` command as an operator uses it: check, user, config show, migrate, and
the one-line answers to configuration mistakes (never a traceback)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

import tusserver.catalog.migrate as migrate_module
from tests.services import PostgresServer

from .helpers import describe, popen, run

pytestmark = pytest.mark.e2e


def _head_revision() -> str:
    head = ScriptDirectory(str(migrate_module._SCRIPTS)).get_current_head()
    assert head
    return head


def _assert_clean_failure(res: subprocess.CompletedProcess[str], key: str) -> None:
    """Non-zero, no traceback, one line on stderr that names ``key``."""
    assert res.returncode != 0, describe(res)
    assert "Traceback" not in res.stderr + res.stdout, describe(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, describe(res)
    assert key in lines[0], describe(res)


def test_check_reports_the_database(private_postgres: PostgresServer, tmp_path: Path) -> None:
    settings = {"TUSSERVER_DATABASE_URL": private_postgres.url("tus")}
    args = ["--data-dir", tmp_path / "data", "check"]

    ok = run(args, settings)
    assert ok.returncode == 0, describe(ok)
    assert "ok    database (postgresql)" in ok.stdout, describe(ok)
    assert "ok    object store (local)" in ok.stdout, describe(ok)
    assert "FAIL" not in ok.stdout, describe(ok)

    private_postgres.stop_server()
    down = run(args, settings)
    assert down.returncode == 1, describe(down)
    assert "Traceback" not in down.stdout + down.stderr, describe(down)
    fails = [line for line in down.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL  database"), describe(down)
    assert "ok    object store (local)" in down.stdout, describe(down)


def test_user_add_list_set_disable(tmp_path: Path) -> None:
    data = ["--data-dir", tmp_path / "data"]
    # Independent of the rest (its own data directory): runs alongside.
    bad = popen(
        ["--data-dir", tmp_path / "other", "user", "add", "bad name!"], stdin=subprocess.PIPE
    )
    bad_out, bad_err = bad.communicate("password123\n", timeout=90)

    added = run([*data, "user", "add", "alice"], stdin="correct horse battery\n")
    assert added.returncode == 0, describe(added)
    user_id = added.stdout.strip().splitlines()[-1]
    assert len(user_id) >= 16, describe(added)

    listed = run([*data, "user", "list"])
    assert listed.returncode == 0, describe(listed)
    assert f"alice\tuser\tactive\t{user_id}\t-" in listed.stdout.splitlines(), describe(listed)

    promoted = run([*data, "user", "set", "alice", "--role", "admin", "--quota", "1000000"])
    assert promoted.returncode == 0, describe(promoted)
    listed = run([*data, "user", "list"])
    line = f"alice\tadmin\tactive\t{user_id}\t1000000"
    assert line in listed.stdout.splitlines(), describe(listed)
    nothing = run([*data, "user", "set", "alice"])
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr, describe(nothing)
    negative = run([*data, "user", "set", "alice", "--quota", "-5"])
    assert negative.returncode == 2 and "Traceback" not in negative.stderr, describe(negative)
    back = run([*data, "user", "set", "alice", "--role", "user", "--no-quota"])
    assert back.returncode == 0, describe(back)

    disabled = run([*data, "user", "disable", "alice"])
    assert disabled.returncode == 0, describe(disabled)
    listed = run([*data, "user", "list"])
    line = f"alice\tuser\tdisabled\t{user_id}\t-"
    assert line in listed.stdout.splitlines(), describe(listed)

    res = subprocess.CompletedProcess(bad.args, bad.returncode, bad_out, bad_err)
    assert bad.returncode == 2, describe(res)
    assert "Traceback" not in bad_err, describe(res)
    assert "invalid username" in bad_err, describe(res)


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    res = run(
        ["--data-dir", tmp_path / "data", "config", "show"],
        {
            "TUSSERVER_DATABASE_URL": "postgresql+asyncpg://tus:hunter2@db.internal/tus",
            "TUSSERVER_JWT_SECRET": "s3cr3t-value-that-must-never-be-printed",
            "TUSSERVER_WEBHOOK_SECRET": "webhook-signing-key",
            "TUSSERVER_PORT": "8099",
        },
    )
    assert res.returncode == 0, describe(res)
    shown = json.loads(res.stdout)
    assert shown["database_url"] == "***"
    assert shown["jwt_secret"] == "***"
    assert shown["webhook_secret"] == "***"
    assert shown["s3_secret_key"] == ""  # unset: nothing to hide
    assert shown["port"] == 8099
    for secret in ("hunter2", "s3cr3t-value", "webhook-signing-key", "db.internal"):
        assert secret not in res.stdout + res.stderr


def test_operator_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    toml = tmp_path / "tusserver.toml"
    toml.write_text('port = 8080\ncolour = "blue"\n')
    key = tmp_path / "key.pem"
    key.write_text("not really a key\n")
    data = ["--data-dir", tmp_path / "data"]
    cases: dict[str, tuple[list[str | Path], dict[str, str]]] = {
        "TUSSERVER_FOO": ([*data, "serve"], {"TUSSERVER_FOO": "1"}),
        "TUSSERVER_PORT": ([*data, "serve"], {"TUSSERVER_PORT": "abc"}),
        "colour": ([*data, "--config", toml, "serve"], {}),
        "tls_cert_file": (
            [*data, "serve"],
            {
                "TUSSERVER_TLS_CERT_FILE": str(tmp_path / "missing-cert.pem"),
                "TUSSERVER_TLS_KEY_FILE": str(key),
            },
        ),
        "jwt_secret": (
            [*data, "serve"],
            {"TUSSERVER_PRODUCTION": "true", "TUSSERVER_AUTH": "jwt"},
        ),
    }
    # All at once: each is a separate process start, and none touches shared state.
    procs = {name: popen(args, env) for name, (args, env) in cases.items()}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:  # it started serving: the mistake went unnoticed
                proc.kill()
                proc.wait()
        _assert_clean_failure(
            subprocess.CompletedProcess(proc.args, proc.returncode, out, err), name
        )
    assert not (tmp_path / "data").exists(), "a refused configuration must not touch the data dir"


def test_migrate_current_downgrade_upgrade_on_sqlite(tmp_path: Path) -> None:
    head = _head_revision()
    data = ["--data-dir", tmp_path / "data"]
    db_path = tmp_path / "data" / "tusserver.db"

    def tables() -> set[str]:
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {r[0] for r in rows} - {"alembic_version"}

    up = run([*data, "migrate", "upgrade"])
    assert up.returncode == 0 and up.stdout.strip() == head, describe(up)
    migrated = tables()
    assert {"uploads", "files"} <= migrated

    current = run([*data, "migrate", "current"])
    assert current.returncode == 0 and current.stdout.strip() == head, describe(current)

    down = run([*data, "migrate", "downgrade", "base"])
    assert down.returncode == 0 and down.stdout.strip() == "(empty)", describe(down)
    assert tables() == set()

    again = run([*data, "migrate", "upgrade"])
    assert again.returncode == 0 and again.stdout.strip() == head, describe(again)
    assert tables() == migrated


def test_the_fast_head_check_agrees_with_alembic() -> None:
    """A server on an up-to-date catalog skips alembic by this reading of the scripts."""
    assert migrate_module.head_revision() == (
        ScriptDirectory(str(migrate_module._SCRIPTS)).get_current_head()
    )
