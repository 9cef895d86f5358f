"""ServiceMonitors for each ModelDeployment's router and model servers: off by default, valid against
prometheus-operator's own CRD when on, and selecting exactly the Services (and ports) that serve /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sluice.api.model_deployment import Backend, ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import Routing
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Object, Owner, renderer_for
from sluice.operator.render.meta import COMPONENT_LABEL

CRD = Path(__file__).resolve().parents[1] / "schemas" / "monitoring.coreos.com_servicemonitors.yaml"
K8S_VERSION = "1.33"
OWNER = Owner(name="fraud", namespace="models", uid="6c1b2a3d-0000-4000-8000-000000000009")
V1 = VersionRef(version="v1", uri="s3://models/fraud/v1.onnx")
V2 = VersionRef(version="v2", uri="gs://models/fraud/v2.onnx")
ON = OperatorConfig(service_monitors=True, monitor_interval="30s", monitor_labels={"release": "prometheus"})


def _children(backend: str, config: OperatorConfig) -> list[Object]:
    spec = ModelDeploymentSpec.model_validate(
        {"backend": backend, "model": {"name": "fraud", "uri": V2.uri, "version": V2.version}}
    )
    desired = Desired(Routing(V1, V2, 20, 0), (V1, V2))
    return renderer_for(Backend(backend)).children(OWNER, spec, desired, config)


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _selected(monitor: Object, objects: list[Object]) -> list[Object]:
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    return [o for o in objects if o["kind"] == "Service" and wanted <= o["metadata"]["labels"].items()]


@pytest.mark.parametrize("backend", ["triton", "ray"])
def test_no_monitors_unless_the_chart_enables_them(backend: str) -> None:
    kinds = {o["kind"] for o in _children(backend, OperatorConfig())}
    assert "ServiceMonitor" not in kinds


def test_triton_monitors_scrape_the_router_and_every_tritonserver() -> None:
    objects = _children("triton", ON)
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"fraud-router", "fraud-tritonserver"}
    validator = jsonschema.Draft7Validator(_spec_schema())
    for monitor in monitors.values():
        validator.validate(monitor["spec"])
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["models"]}
        assert monitor["spec"]["endpoints"][0]["interval"] == "30s"
        (relabel,) = monitor["spec"]["endpoints"][0]["relabelings"]
        assert relabel == {
            "sourceLabels": ["__meta_kubernetes_service_label_sluice_dev_model_deployment"],
            "targetLabel": "model_deployment",
        }
    (router,) = _selected(monitors["fraud-router"], objects)
    assert router["metadata"]["name"] == "fraud-router"
    assert {p["name"] for p in router["spec"]["ports"]} >= {"http"}
    servers = _selected(monitors["fraud-tritonserver"], objects)
    assert sorted(s["metadata"]["name"] for s in servers) == ["fraud-v1", "fraud-v2"]
    assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in servers)
    assert monitors["fraud-tritonserver"]["spec"]["endpoints"][0]["port"] == "metrics"


def test_ray_monitor_scrapes_a_service_over_the_head_pods_serve_port() -> None:
    objects = _children("ray", ON)
    (rayservice,) = [o for o in objects if o["kind"] == "RayService"]
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    jsonschema.Draft7Validator(_spec_schema()).validate(monitor["spec"])
    (service,) = _selected(monitor, objects)
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    assert service["metadata"]["labels"][COMPONENT_LABEL] == "serve-metrics"
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    head_labels = {**head["metadata"]["labels"], "ray.io/node-type": "head"}  # KubeRay adds the node type
    assert service["spec"]["selector"].items() <= head_labels.items()
    serve_ports = {p["containerPort"] for c in head["spec"]["containers"] for p in c.get("ports", [])}
    assert service["spec"]["ports"][0]["targetPort"] in serve_ports
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_monitor_settings_come_from_the_environment_and_bad_values_are_named() -> None:
    env = {
        "SLUICE_SERVICE_MONITORS": "true",
        "SLUICE_MONITOR_INTERVAL": "1m",
        "SLUICE_MONITOR_LABELS": '{"release": "kube-prometheus"}',
    }
    config = OperatorConfig.from_env(env)
    assert (config.service_monitors, config.monitor_interval, dict(config.monitor_labels)) == (
        True,
        "1m",
        {"release": "kube-prometheus"},
    )
    assert not OperatorConfig.from_env({}).service_monitors
    for name, value in (
        ("SLUICE_SERVICE_MONITORS", "yes"),
        ("SLUICE_MONITOR_INTERVAL", "soon"),
        ("SLUICE_MONITOR_LABELS", '{"a": 1}'),
    ):
        with pytest.raises(ValueError, match=name):
            OperatorConfig.from_env({**env, name: value})
