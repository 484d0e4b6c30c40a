"""Dependencies point one way (docs/architecture.md), and a machine checks it.

``lint-imports`` checks the import-linter contracts of pyproject.toml; the other tests import
modules alone in a fresh interpreter, as an embedding application or a tool would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    # This checkout first, whatever is installed in the environment.
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_import_contracts_are_kept() -> None:
    tool = BIN / "lint-imports"
    if not tool.exists():
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)")
    done = subprocess.run(
        [str(tool), "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_ruff_is_clean() -> None:
    tool = BIN / "ruff"
    if not tool.exists():
        pytest.fail("ruff is missing: install the dev extra")
    done = subprocess.run(
        [str(tool), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize("module", ["auth.gateway", "auth.users", "storage_backends.base"])
def test_lower_packages_import_alone(module: str) -> None:
    done = _python(f"import {module}")
    assert done.returncode == 0, done.stderr[-3000:]


def test_parsing_headers_loads_no_database_and_hashes_no_password() -> None:
    done = _python(
        """
        import hashlib, sys

        def refuse(*args, **kwargs):
            raise AssertionError("scrypt ran at import time")

        hashlib.scrypt = refuse
        import tusserver.protocol.headers
        import tusserver.protocol.sfv
        import auth.passwords
        loaded = [m for m in sys.modules if m.split(".")[0] in ("sqlalchemy", "aiosqlite")]
        assert not loaded, loaded
        assert "tusserver.app" not in sys.modules
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_server_without_auth_or_encryption_loads_neither_pyjwt_nor_cryptography() -> None:
    """Together they cost about 9 MiB of resident memory: loaded when a token is made or
    checked, or a key is used, not by importing the server."""
    done = _python(
        """
        import sys
        import tusserver.cli, tusserver.app, tusserver.startup, tusserver.middleware
        import tusserver.pipeline.pipeline, auth.gateway, auth.tokens
        from storage_backends.encryption import EncryptionKeyError, IntegrityError, KeyRing
        loaded = [m for m in sys.modules if m.split(".")[0] in ("jwt", "cryptography")]
        assert not loaded, loaded
        from storage_backends.encryption import EncryptedChunkStore, segment_count
        assert "cryptography" in sys.modules
        assert EncryptedChunkStore.__module__ == "storage_backends.encryption.chunks"
        assert segment_count(0, 16, finished=True) == 1
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_server_on_sqlite_loads_no_postgresql_dialect() -> None:
    done = _python(
        """
        import sys
        import tusserver.cli, tusserver.app, tusserver.catalog.analytics
        loaded = [m for m in sys.modules if m.startswith("sqlalchemy.dialects.postgresql")]
        assert not loaded, loaded
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
