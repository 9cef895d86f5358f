"""An Experiment's arms in both renderers: the Triton router's ConfigMap and the RayService's ingress user_config
serve one weighted variant per arm with unit enrolment, the salt and the outcomes metric; a workload per arm version."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import ExperimentArms, Routing
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Owner
from sluice.operator.render.ray import RayRenderer
from sluice.operator.render.triton import TritonRenderer, router_serving_config

OWNER = Owner(name="fraud", namespace="default", uid="6c1b2a3d-0000-4000-8000-000000000009")
V1 = VersionRef(version="v1", uri="s3://models/fraud/v1.onnx")
V2 = VersionRef(version="v2", uri="s3://models/fraud/v2.onnx")
ARMS = ExperimentArms(
    "fraud-ab", (("control", V1, 30), ("treatment", V2, 70)), "x-user-id", "uid-7", "converted", "conversion"
)
CONFIG = OperatorConfig(router_image="registry.example/sluice-serving:1", triton_image="registry.example/triton:1")


def spec(backend: str) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"backend": backend, "model": {"name": "fraud", "uri": V1.uri, "version": "v1"}}
    )


def _check(config: dict[str, Any]) -> None:
    assert [(v["name"], v["version"], v["weight"]) for v in config["variants"]] == [
        ("control", "v1", 30),
        ("treatment", "v2", 70),
    ]
    assert (config["enrolment"], config["sticky_header"], config["sticky_salt"]) == ("unit", "x-user-id", "uid-7")
    assert config["control_variant"] == "control"
    assert config["outcomes"]["metrics"] == {"converted": "conversion"}


def test_triton_router_serves_the_arms() -> None:
    desired = Desired(Routing(stable=V1), (V1, V2), arms=ARMS)
    config = router_serving_config(OWNER, spec("triton"), desired).model_dump(mode="json")
    _check(config)
    assert all(v["endpoint"] for v in config["variants"])  # each arm points at its version's tritonserver
    kinds = [
        (c["kind"], c["metadata"]["name"]) for c in TritonRenderer().children(OWNER, spec("triton"), desired, CONFIG)
    ]
    assert sum(1 for kind, _ in kinds if kind == "Deployment") == 3  # v1, v2 and the router


def test_ray_ingress_serves_the_arms_and_without_arms_the_routing() -> None:
    (rs,) = RayRenderer().children(OWNER, spec("ray"), Desired(Routing(stable=V1), (V1, V2), arms=ARMS), CONFIG)
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    ingress = next(d for d in app["deployments"] if d["user_config"] is not None and "config" in d["user_config"])
    _check(ingress["user_config"]["config"])
    (plain,) = RayRenderer().children(OWNER, spec("ray"), Desired(Routing(stable=V1), (V1,)), CONFIG)
    text = json.dumps(yaml.safe_load(plain["spec"]["serveConfigV2"]))
    assert "uid-7" not in text
    assert '"enrolment": "all"' in text


def test_the_annotation_round_trips_and_refuses_garbage() -> None:
    assert ExperimentArms.from_json(ARMS.to_json()) == ARMS
    assert ARMS.with_weights({"control": 5, "treatment": 95}).arms[1][2] == 95
    with pytest.raises(ValueError, match=r"sluice\.dev/experiment-arms"):
        ExperimentArms.from_json('{"arms": 3}')
