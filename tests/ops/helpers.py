"""Running the ``tusserver`` command as an operator would, and reading ``/metrics``."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import _command

#: A CLI call never takes this long, even on a loaded machine; a hang is a failure.
CLI_TIMEOUT = 90.0


def cli_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any TUSSERVER_* / TUSUP_* setting, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TUSSERVER_", "TUSUP_")) or k.startswith("TUSSERVER_TEST_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings or {})
    return env


def cli_command(args: Sequence[str | Path]) -> list[str]:
    return [*_command(), *(str(a) for a in args)]


def popen(
    args: Sequence[str | Path], settings: Mapping[str, str] | None = None, **kwargs: object
) -> subprocess.Popen[str]:
    """Start ``tusserver ARGS`` (stdout/stderr piped, text)."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        cli_command(args),
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run(
    args: Sequence[str | Path],
    settings: Mapping[str, str] | None = None,
    *,
    stdin: str | None = None,
    timeout: float = CLI_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``tusserver ARGS`` to completion."""
    return subprocess.run(
        cli_command(args),
        env=cli_env(settings),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse Prometheus text: {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return samples(resp.read().decode())
