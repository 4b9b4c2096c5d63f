"""The Kubernetes manifests in ``deploy/k8s/``, validated against the schemas and each other.

Core kinds against Kubernetes' OpenAPI schemas, strictly (``kubernetes-validate``, which ships
them); the ServiceMonitor against prometheus-operator's CRD models (cloudcoil's generated
pydantic models, with unknown fields caught by a round trip). Then what ties the files together:
the ConfigMap holds valid ``babelgate serve`` settings, the Deployment takes its secrets from the
Secret's keys, probes ``/health`` and mounts the artifact, the Service selects its pods by the
named port, and the ServiceMonitor scrapes that port's ``/metrics``.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from babelgate.server.settings import ServeSettings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
CORE = ("configmap.yaml", "deployment.yaml", "service.yaml", "secret.example.yaml")


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", CORE)
def test_core_manifests_match_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(manifest(name), kubernetes_validate.latest_version(), strict=True)


def test_strict_validation_rejects_a_misspelled_field() -> None:
    broken = manifest("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_service_monitor_matches_the_prometheus_operator_crd() -> None:
    raw = manifest("servicemonitor.yaml")
    model = ServiceMonitor.model_validate(raw)
    assert model.model_dump(by_alias=True, exclude_unset=True) == raw  # no unknown field


def test_kustomization_applies_everything_but_the_secret_example() -> None:
    listed = manifest("kustomization.yaml")["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(listed) == sorted(on_disk - {"secret.example.yaml"})


def test_configmap_holds_valid_serve_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = manifest("configmap.yaml")["data"]
    for key, value in data.items():
        assert key.startswith("BABELGATE_"), key
        monkeypatch.setenv(key, value)
    settings = ServeSettings()  # validates every value as `babelgate serve` would
    assert settings.artifact == data["BABELGATE_ARTIFACT"]


def test_deployment_service_and_monitor_fit_together() -> None:
    deployment, service = manifest("deployment.yaml"), manifest("service.yaml")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # a slow start is fine
    assert container["resources"]["requests"] and container["resources"]["limits"]

    secret = manifest("secret.example.yaml")
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(from_secret) == {"BABELGATE_API_KEY", "BABELGATE_ADMIN_TOKEN",
                                "BABELGATE_STATE_URL"}  # fmt: skip
    for ref in from_secret.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert ServeSettings(state_url=secret["stringData"]["state-url"]).state_url is not None
    (config,) = container["envFrom"]
    assert config["configMapRef"]["name"] == manifest("configmap.yaml")["metadata"]["name"]

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    artifact = manifest("configmap.yaml")["data"]["BABELGATE_ARTIFACT"]
    assert artifact.startswith(mounts["artifacts"] + "/")
    assert {v["name"] for v in pod["spec"]["volumes"]} == set(mounts)

    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = manifest("servicemonitor.yaml")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("http", "/metrics")]
