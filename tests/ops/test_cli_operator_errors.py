"""The tusserver command on an operator's bad input: clear one-line errors, right exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tusserver import cli
from tusserver.cli import main


@pytest.fixture(autouse=True)
def _quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "configure_logging", lambda **_kw: None)


def test_a_negative_quota_is_refused_by_user_add_and_user_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative quota would refuse every upload of the user: both commands refuse it
    (argparse's usage error, exit status 2), and nothing is stored."""
    data = ["--data-dir", str(tmp_path / "data")]
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main([*data, "user", "add", "bob"]) == 0
    for argv in (["user", "set", "bob"], ["user", "add", "alice"]):
        argv = [*argv, "--quota", "-5"]
        monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
        with pytest.raises(SystemExit) as exited:
            main([*data, *argv])
        assert exited.value.code == 2
        assert "must not be negative" in capsys.readouterr().err
    assert main([*data, "user", "list"]) == 0
    listed = capsys.readouterr().out
    assert "alice" not in listed and "bob" in listed


def test_audit_with_an_age_too_far_back_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main([*data, "migrate"]) == 0
    capsys.readouterr()
    # 10^7 days is before year 1: should be "tusserver: ..." and exit 2, not a traceback.
    assert main([*data, "audit", "--since", "10000000d"]) == 2
    assert main([*data, "audit", "--since", "9999999999999d"]) == 2


def test_migrate_to_an_unknown_revision_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert main([*data, "migrate"]) == 0
    capsys.readouterr()
    # A typo in the revision: "tusserver: ..." and exit 2, like every other operator mistake.
    assert main([*data, "migrate", "upgrade", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_audit_of_an_empty_data_dir_is_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator points at a data directory no server ever used (a typo in --data-dir):
    # `user list` prints nothing and exits 0; `audit` should not die with "no such table".
    data = ["--data-dir", str(tmp_path / "typo")]
    assert main([*data, "user", "list"]) == 0
    other = ["--data-dir", str(tmp_path / "typo2")]
    code = main([*other, "audit"])
    assert code in (0, 2)


def test_a_password_on_a_crlf_line_has_no_carriage_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\r\n"))
    assert main([*data, "user", "add", "carol"]) == 0
    import asyncio

    from auth.passwords import verify_password_or_dummy
    from auth.users import UserRepository
    from tusserver.catalog.db import create_database
    from tusserver.config import TusServerConfig

    async def check() -> bool:
        config = TusServerConfig(data_dir=tmp_path / "data")
        db = create_database(config.effective_database_url)
        try:
            user = await UserRepository(db).by_name("carol")
            assert user is not None
            return await verify_password_or_dummy("correct horse battery", user.password_hash)
        finally:
            await db.dispose()

    assert asyncio.run(check())


@pytest.mark.parametrize("content", ["[]", "null", '"x"', '{"a": 1, "b": "http://x/1"}'])
def test_the_upload_clients_resume_file_of_another_shape_is_ignored(
    tmp_path: Path, content: str
) -> None:
    from tusserver.client import ResumeStore

    path = tmp_path / "resume.json"
    path.write_text(content)
    store = ResumeStore(path)
    assert store.get("a") is None
    store.put("k", "http://server/uploads/1")
    assert ResumeStore(path).get("k") == "http://server/uploads/1"
