"""examples/grafana/tusserver.json: a dashboard Grafana can import, whose queries name only
metrics the real server exports on /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.app_fixtures import MakeClient
from tests.auth.helpers import auth_client, bearer, create_upload, make_users, patch

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "tusserver.json"
#: Exported by the pipeline's backlog gauges (tusserver.pipeline.backlog).
BACKLOG = {"tusserver_pipeline_backlog_files", "tusserver_pipeline_backlog_oldest_seconds"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def test_dashboard_is_importable_json() -> None:
    dash = _dashboard()
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    inputs = {i["name"] for i in dash["__inputs"] if i["type"] == "datasource"}
    assert inputs == {"DS_PROMETHEUS"}
    variables = {v["name"] for v in dash["templating"]["list"]}
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 15
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, p["title"]
    for p in graphs:
        assert p["type"] in ("timeseries", "stat"), p["type"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert p["description"], f"panel {p['title']!r} must say what it answers"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"], p["title"]
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, (p["title"], var)
    # The panels docs/operations.md explains are the dashboard's panels.
    ops = (DASHBOARD.parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [p["title"] for p in graphs if f"**{p['title']}**" not in ops]
    assert not missing, f"docs/operations.md does not explain: {missing}"


def _names(exposition: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


async def test_every_metric_the_dashboard_queries_is_exported(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    owner = (await make_users(client, owner="user"))["owner"]
    # Exercise the server so that the series behind the panels exist.
    resp = await client.post(
        "/api/v1/auth/login", json={"username": owner.name, "password": "wrong one!"}
    )
    assert resp.status == 401
    path = await create_upload(client, owner.access, 5)
    assert (await patch(client, owner.access, path, 0, b"hello")).status == 204
    assert (await client.get("/api/v1/files", headers=bearer(owner.access))).status == 200
    text = await (await client.get("/metrics")).text()
    exported = _names(text)
    queried = {
        name
        for p in _panels(_dashboard())
        for t in p.get("targets", [])
        for name in re.findall(r"\b(tusserver_[a-z0-9_]+)", t["expr"])
    }
    assert len(queried) >= 20
    assert queried >= BACKLOG, "the dashboard shows no pipeline backlog"
    missing = sorted(queried - exported)
    assert not missing, f"the dashboard queries metrics /metrics does not export: {missing}"
    # Samples the panels plot right away (not just declared families).
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for name in (
        "tusserver_uploads_total",
        "tusserver_bytes_received_total",
        "tusserver_patch_duration_seconds_bucket",
        "tusserver_signin_failures_total",
        "tusserver_dependency_up",
        "tusserver_data_dir_free_bytes",
    ):
        assert name in samples, name
