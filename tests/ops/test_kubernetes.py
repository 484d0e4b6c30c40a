"""examples/kubernetes: valid against the Kubernetes schemas (offline), and consistent with
the server: real commands, real settings, probes on the real endpoints, selectors that match."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tusserver.cli import _parser
from tusserver.config import TusServerConfig, load_config
from tusserver.pipeline.backlog import BACKLOG_FILES

DIR = Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
K8S_VERSION = "1.30.0"


def _docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DIR.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _docs() if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    docs = _docs()
    kinds = {d["kind"] for d in docs}
    assert {
        "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "ScaledObject",
    } <= kinds  # fmt: skip
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: checked by hand below
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {exc.path}")


def test_a_broken_manifest_is_refused() -> None:
    """The validation above can fail: an unknown field and a wrong type are caught."""
    api = _one("Deployment", "tusserver-api")
    bad = {**api, "spec": {**api["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = {**api, "spec": {**api["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_configuration_is_real_settings() -> None:
    env: dict[str, str] = {}
    for doc in _by_kind("ConfigMap") + _by_kind("Secret"):
        env.update(doc.get("data", {}))
        env.update(doc.get("stringData", {}))
    config = load_config(environ=env)  # unknown keys or bad values raise ConfigError
    assert config.database_url.startswith("postgresql+asyncpg://")
    assert config.chunk_store == config.object_store == "s3"
    assert config.locker == "postgres" and config.production
    names = {f"TUSSERVER_{f.name.upper()}" for f in dataclasses.fields(TusServerConfig)}
    assert set(env) <= names
    secret = _one("Secret", "tusserver")["stringData"]
    for key in ("TUSSERVER_DATABASE_URL", "TUSSERVER_S3_SECRET_KEY", "TUSSERVER_JWT_SECRET"):
        assert key in secret, f"{key} belongs in the Secret"


def test_deployments_run_the_roles_with_probes_resources_and_no_root() -> None:
    config = TusServerConfig()
    for name, command, port in (
        ("tusserver-api", ["serve", "--role", "api"], config.port),
        ("tusserver-worker", ["worker"], config.worker_port),
    ):
        dep = _one("Deployment", name)
        c = _container(dep)
        assert c["args"][0] == "tusserver" and c["args"][1:] == command
        args = _parser().parse_args(c["args"][1:])
        assert args.command == command[0]
        assert [p["containerPort"] for p in c["ports"]] == [port]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), name
        pod_sec = dep["spec"]["template"]["spec"]["securityContext"]
        assert pod_sec["runAsNonRoot"] is True and pod_sec["runAsUser"] != 0
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pdbs = [
            p
            for p in _by_kind("PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(pdbs) == 1, f"{name}: one PodDisruptionBudget, not {len(pdbs)}"


def test_the_service_reaches_the_api_pods_only() -> None:
    service = _one("Service", "tusserver")
    api_labels = _one("Deployment", "tusserver-api")["spec"]["template"]["metadata"]["labels"]
    worker = _one("Deployment", "tusserver-worker")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()
    assert not service["spec"]["selector"].items() <= worker.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_hpa_scales_the_api_on_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler", "tusserver-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "tusserver-api",
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_keda_scales_the_workers_on_the_backlog_metric() -> None:
    (obj,) = _by_kind("ScaledObject")
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    spec = obj["spec"]
    allowed = {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers",
    }  # fmt: skip
    assert set(spec) <= allowed, set(spec) - allowed
    target = spec["scaleTargetRef"]
    assert target["name"] == "tusserver-worker"
    assert target.get("kind", "Deployment") == "Deployment"
    _one("Deployment", target["name"])
    assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith(("http://", "https://"))
    assert BACKLOG_FILES in meta["query"]
    # KEDA reads trigger metadata as strings
    assert all(isinstance(v, str) for v in meta.values())
    assert float(meta["threshold"]) > 0


def _service_links(service: dict[str, Any]) -> dict[str, str]:
    """The variables kubelet gives every pod of the namespace for ``service`` (Docker-link
    style), unless the pod spec says ``enableServiceLinks: false``."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    host = "10.0.0.10"
    env = {f"{name}_SERVICE_HOST": host}
    for i, port in enumerate(service["spec"]["ports"]):
        number, proto = port["port"], port.get("protocol", "TCP")
        if i == 0:
            env[f"{name}_SERVICE_PORT"] = str(number)
            env[f"{name}_PORT"] = f"{proto.lower()}://{host}:{number}"
        if "name" in port:
            env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
        pre = f"{name}_PORT_{number}_{proto}"
        env.update({pre: f"{proto.lower()}://{host}:{number}", f"{pre}_PROTO": proto.lower(),
                    f"{pre}_PORT": str(number), f"{pre}_ADDR": host})  # fmt: skip
    return env


def test_the_pods_start_beside_the_services_of_the_namespace() -> None:
    """A Service named tusserver gives every pod TUSSERVER_SERVICE_HOST, TUSSERVER_PORT=
    tcp://... and more, which the server refuses as unknown settings: the pods turn them off
    (enableServiceLinks: false), or they would never start."""
    links: dict[str, str] = {}
    for service in _by_kind("Service"):
        links.update(_service_links(service))
    assert any(k.startswith("TUSSERVER_") for k in links)  # the case is real
    for deployment in _by_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod.get("enableServiceLinks") is False, deployment["metadata"]["name"]
