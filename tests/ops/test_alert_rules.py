"""examples/prometheus/alerts.yml: valid rules, and each alert fires (and only then) on the
recorded series of alerts_test.yml (promtool, from the Debian package `prometheus`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tusserver.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "examples" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: scripts/setup-test-env.sh installs `prometheus`")
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_are_valid() -> None:
    res = _run("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alert_rules_fire_on_recorded_series() -> None:
    res = _run("test", "rules", "alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_exercised_and_names_only_exported_metrics() -> None:
    rules = (RULES / "alerts.yml").read_text()
    tests = (RULES / "alerts_test.yml").read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)", rules, re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", tests))
    assert alerts and alerts == tested, alerts ^ tested
    exported = _exported_names()
    named = set(re.findall(r"\b(tusserver_[a-z0-9_]+)", rules))
    unknown = {n for n in named if n not in exported}
    assert not unknown, f"alerts.yml names metrics the server does not export: {unknown}"


def _exported_names() -> set[str]:
    """Sample names of the server's registry, plus the pipeline backlog gauges that the
    worker role exports (tusserver.pipeline.backlog)."""
    names = {sample.name for family in Metrics().registry.collect() for sample in family.samples}
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.add(family.name)
    return names | {"tusserver_pipeline_backlog_files", "tusserver_pipeline_backlog_oldest_seconds"}
