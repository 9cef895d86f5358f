"""backend ray renders one RayService that KubeRay's own schema accepts, that Serve can build, and whose cluster never
changes for a rollout: weights move only the ingress user_config, a new version only the application's args."""

from __future__ import annotations

import copy
import functools
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import Routing
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Owner, renderer_for
from sluice.operator.render.gpu import GPU_RESOURCE, insufficient_gpu, placement
from sluice.operator.render.meta import owner_reference
from sluice.operator.render.ray import RayRenderer
from sluice.serving.ray.spec import INGRESS_NAME, deployment_name

SCHEMAS = Path(__file__).resolve().parents[2] / "tests" / "schemas"
RAY_CRD = SCHEMAS / "ray.io_rayservices.yaml"
K8S_VERSION = "1.33"
OWNER = Owner(name="iris", namespace="default", uid="6c1b2a3d-0000-4000-8000-000000000001")
V1 = VersionRef(version="v1", uri="s3://models/iris/v1.onnx", sha256="a" * 64)
V2 = VersionRef(version="v2.0", uri="s3://models/iris/v2.onnx")
V3 = VersionRef(version="v3", uri="s3://models/iris/v3.onnx")
CHART = OperatorConfig(
    gpu_node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"},
    gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def make_spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"name": "iris", "uri": "s3://models/iris/v2.onnx", "version": "v2.0"}, **extra}
    )


def canary(weight: int, mirror: int = 0) -> Desired:
    return Desired(Routing(stable=V1, canary=V2, canary_weight=weight, mirror_percent=mirror), (V1, V2))


def render(spec: ModelDeploymentSpec, desired: Desired, config: OperatorConfig = CHART) -> dict[str, Any]:
    children = RayRenderer().children(OWNER, spec, desired, config)
    assert len(children) == 1
    return children[0]


def serve(rs: dict[str, Any]) -> dict[str, Any]:
    text = rs["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay's field is a string
    parsed: dict[str, Any] = yaml.safe_load(text)
    return parsed


def crd_schema(part: str) -> jsonschema.Draft202012Validator:
    """A validator for the `spec` or `status` sub-schema of KubeRay's v1 RayService CRD (parsed once: 18k lines)."""
    return _validators()[part]


@functools.cache
def _validators() -> dict[str, jsonschema.Draft202012Validator]:
    crd = yaml.load(RAY_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    props = v1["schema"]["openAPIV3Schema"]["properties"]
    return {part: jsonschema.Draft202012Validator(props[part]) for part in ("spec", "status")}


def pruned(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of `obj` the API server would silently drop: structural schemas prune what they do not name."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, dict) and "properties" in schema:
        out = []
        for key, value in obj.items():
            if key in schema["properties"]:
                out += pruned(value, schema["properties"][key], f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
        return out
    if isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [p for k, v in obj.items() for p in pruned(v, schema["additionalProperties"], f"{path}.{k}")]
    if isinstance(obj, list) and "items" in schema:
        return [p for i, v in enumerate(obj) for p in pruned(v, schema["items"], f"{path}[{i}]")]
    return []


def validate_rayservice(rs: dict[str, Any]) -> None:
    crd_schema("spec").validate(rs["spec"])
    assert pruned(rs["spec"], crd_schema("spec").schema) == []
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for t in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **t["metadata"]}, "spec": t["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


SPECS = {
    "cpu": make_spec(),
    "gpu": make_spec(resources={"gpu": 2, "cpu": "4", "memory": "16Gi"}),
    "gpu-own-placement": make_spec(
        resources={
            "gpu": 1,
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule", "tolerationSeconds": 30}],
        }
    ),
    "autoscaling": make_spec(scaling={"autoscaling": {"minReplicas": 1, "maxReplicas": 3}}),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_rendered_rayservice_validates_against_kuberay_and_kubernetes(name: str) -> None:
    rs = render(SPECS[name], canary(10, 20))
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    validate_rayservice(rs)


def test_a_misspelt_field_would_be_caught() -> None:
    rs = render(SPECS["autoscaling"], canary(10))
    rs["spec"]["rayClusterConfig"]["enableInTreeAutoscalin"] = True
    assert pruned(rs["spec"], crd_schema("spec").schema) == [".rayClusterConfig.enableInTreeAutoscalin"]


def test_serve_config_builds_with_ray_serve() -> None:
    pytest.importorskip("ray.serve", reason="ray[serve] is in the test extra; the operator itself never imports it")
    from ray.serve.schema import ServeDeploySchema

    from sluice.serving.ray.app import build_app

    for spec in SPECS.values():
        config = serve(render(spec, canary(10, 20)))
        ServeDeploySchema.model_validate(config)  # Serve's own schema of a config file / serveConfigV2
        [app] = config["applications"]
        built = build_app(app["args"])
        assert built is not None


def test_weight_change_touches_only_the_ingress_user_config() -> None:
    spec = make_spec()
    a, b = render(spec, canary(10)), render(spec, canary(50, mirror=30))
    assert a["spec"]["rayClusterConfig"] == b["spec"]["rayClusterConfig"]
    assert a["metadata"] == b["metadata"]
    sa, sb = serve(a), serve(b)
    ua = sa["applications"][0]["deployments"][0].pop("user_config")
    ub = sb["applications"][0]["deployments"][0].pop("user_config")
    assert sa == sb  # everything but the user_config: identical (args, import path, http options)
    assert sa["applications"][0]["deployments"][0]["name"] == INGRESS_NAME
    assert [v["weight"] for v in ua["config"]["variants"]] == [90, 10]
    assert [v["weight"] for v in ub["config"]["variants"]] == [50, 50]
    assert ub["config"]["mirror"] == {"variant": "canary", "percent": 30}


def test_weight_change_with_autoscaling_still_touches_only_the_user_config() -> None:
    spec = SPECS["autoscaling"]
    sa, sb = serve(render(spec, canary(5))), serve(render(spec, canary(95)))
    for s in (sa, sb):
        s["applications"][0]["deployments"][0].pop("user_config")
    assert sa == sb


def test_new_version_changes_args_but_never_the_cluster() -> None:
    for spec in SPECS.values():
        before = render(spec, Desired(Routing(stable=V1), (V1,)))
        after = render(spec, canary(0))
        assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
        args_before, args_after = (serve(x)["applications"][0]["args"] for x in (before, after))
        assert [v["version"] for v in args_before["config"]["variants"]] == ["v1"]
        assert [v["version"] for v in args_after["config"]["variants"]] == ["v1", "v2.0"]


def test_rendering_is_deterministic() -> None:
    spec = SPECS["gpu"]
    first = render(spec, canary(25, 10))
    again = render(make_spec(resources={"gpu": 2, "cpu": "4", "memory": "16Gi"}), canary(25, 10))
    assert json.dumps(first, sort_keys=False) == json.dumps(again, sort_keys=False)
    assert first["spec"]["serveConfigV2"] == again["spec"]["serveConfigV2"]


def test_versions_that_differ_only_in_unsafe_characters_get_distinct_deployments() -> None:
    names = {v: deployment_name(v) for v in ("v1", "v1-0", "v1.0", "v1_0", "v1/0", "v1+0")}
    assert names["v1"] == "model-v1"  # safe labels keep their plain, readable name
    assert names["v1-0"] == "model-v1-0"
    assert len(set(names.values())) == len(names)
    assert names["v1.0"].startswith("model-v1-0-")
    assert deployment_name("v1.0") == names["v1.0"]  # a hash of the label: the same in every process


def test_blue_green_old_version_keeps_a_serve_deployment_without_traffic() -> None:
    switched = Desired(Routing(stable=V2), (V2, V1))  # after the switch, v1 kept for a fast undo
    config = serve(render(make_spec(), switched))
    [app] = config["applications"]
    variants = app["deployments"][0]["user_config"]["config"]["variants"]
    assert [(v["name"], v["version"], v["weight"]) for v in variants] == [
        ("stable", "v2.0", 100),
        ("previous", "v1", 0),
    ]
    assert {v["version"] for v in app["args"]["config"]["variants"]} == {"v1", "v2.0"}
    pytest.importorskip("ray.serve", reason="ray[serve] is in the test extra")
    from sluice.serving.ray.app import build_app

    built: Any = build_app(app["args"])
    deployments = _deployment_names(built)
    assert {deployment_name("v1"), deployment_name("v2.0"), INGRESS_NAME} <= deployments


def _deployment_names(app: Any) -> set[str]:
    """Names of every deployment bound into a Serve application (ingress and its model handles)."""
    names = {app._bound_deployment.name}
    bound = app._bound_deployment
    for arg in [*bound.init_args, *bound.init_kwargs.values()]:
        for value in arg.values() if isinstance(arg, dict) else [arg]:
            if hasattr(value, "_bound_deployment"):
                names |= _deployment_names(value)
    return names


def test_children_carry_labels_and_controller_owner_reference() -> None:
    rs = render(make_spec(), canary(10))
    assert rs["metadata"]["name"] == "iris"
    assert rs["metadata"]["namespace"] == "default"
    assert rs["metadata"]["ownerReferences"] == [owner_reference(OWNER)]
    expected = {
        "app.kubernetes.io/name": "sluice-model",
        "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/managed-by": "sluice-operator",
        "sluice.dev/model-deployment": "iris",
    }
    assert rs["metadata"]["labels"] == expected
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["template"]["metadata"]["labels"] == expected
    assert cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"] == expected


def test_head_runs_no_models_and_pods_are_restricted() -> None:
    cluster = render(SPECS["gpu"], canary(10))["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    assert GPU_RESOURCE not in json.dumps(head)
    for t in [head["template"], cluster["workerGroupSpecs"][0]["template"]]:
        assert t["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in t["spec"]["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_ray_pods_mount_the_optional_admin_token_secret() -> None:
    """The ingress (the router) reads its admin token from the same optional Secret as Triton's router."""
    cluster = render(SPECS["gpu"], canary(10))["spec"]["rayClusterConfig"]
    for t in [cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]]:
        [volume] = [v for v in t["spec"]["volumes"] if "secret" in v]
        assert volume["secret"] == {"secretName": "iris-router-admin", "optional": True}
        [container] = t["spec"]["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert {"name": "SLUICE_ADMIN_TOKEN_FILE", "value": f"{mount['mountPath']}/token"} in container["env"]


def test_gpu_workers_use_chart_defaults_unless_the_spec_names_its_own() -> None:
    worker = _worker(render(SPECS["gpu"], canary(10)))
    assert worker["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "2"
    assert worker["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    own = _worker(render(SPECS["gpu-own-placement"], canary(10)))
    assert own["nodeSelector"] == {"pool": "a100"}
    assert own["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule", "tolerationSeconds": 30}
    ]
    assert serve(render(SPECS["gpu"], canary(10)))["applications"][0]["args"]["config"]["gpus_per_replica"] == 2.0


def test_cpu_models_get_no_gpu_fields_and_no_gpu_node_pinning() -> None:
    rs = render(SPECS["cpu"], canary(10))
    assert GPU_RESOURCE not in json.dumps(rs["spec"]["rayClusterConfig"])
    worker = _worker(rs)
    assert "nodeSelector" not in worker
    assert "tolerations" not in worker
    resources, selector, tolerations = placement(SPECS["cpu"].resources, CHART)
    assert resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    assert (selector, tolerations) == ({}, [])


def test_worker_group_sizes_for_two_versions_and_autoscaling() -> None:
    fixed = render(make_spec(scaling={"replicas": 3}), canary(10))["spec"]["rayClusterConfig"]
    group = fixed["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (6, 6, 6)
    assert "enableInTreeAutoscaling" not in fixed
    assert (
        serve(render(make_spec(scaling={"replicas": 3}), canary(10)))["applications"][0]["args"]["model_replicas"] == 3
    )
    auto = render(SPECS["autoscaling"], canary(10))
    group = auto["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert auto["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 6)
    overrides = serve(auto)["applications"][0]["deployments"][1:]
    assert [d["name"] for d in overrides] == [deployment_name("v1"), deployment_name("v2.0")]
    assert all(d["autoscaling_config"]["max_replicas"] == 3 for d in overrides)


def _worker(rs: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    return spec


# --- readiness, from status as KubeRay writes it ---------------------------------------------------------------


def deployment_status(status: str, message: str = "") -> dict[str, str]:
    return {"status": status, "message": message} if message else {"status": status}


def service_status(app: str, deps: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "rayClusterName": "iris-raycluster-abcde",
        "applicationStatuses": {"iris": {"status": app, "serveDeploymentStatuses": deps}},
    }


def live(status: dict[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    rs = render(make_spec(), canary(10))
    if status is not None:
        crd_schema("status").validate(status)
        rs["status"] = status
    return {("RayService", "iris"): rs}


def ready(version: str, status: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None) -> Any:
    return RayRenderer().ready(OWNER, make_spec(), version, live(status), pods or [])


HEALTHY = {
    INGRESS_NAME: deployment_status("HEALTHY"),
    deployment_name("v1"): deployment_status("HEALTHY"),
    deployment_name("v2.0"): deployment_status("HEALTHY"),
}


def test_ready_when_the_version_and_ingress_are_healthy_on_the_active_cluster() -> None:
    status = {"serviceStatus": "Running", "activeServiceStatus": service_status("RUNNING", HEALTHY)}
    assert ready("v1", status).ready
    assert ready("v2.0", status).ready
    missing = ready("v9", status)
    assert not missing.ready
    assert deployment_name("v9") in missing.reason


def test_stable_stays_ready_while_the_canary_deploys() -> None:
    deps = {**HEALTHY, deployment_name("v2.0"): deployment_status("UPDATING")}
    status = {"activeServiceStatus": service_status("DEPLOYING", deps)}
    assert ready("v1", status).ready
    canary_ready = ready("v2.0", status)
    assert not canary_ready.ready
    assert "UPDATING" in canary_ready.reason
    assert not canary_ready.insufficient_gpu


def test_unhealthy_and_missing_status_are_not_ready() -> None:
    deps = {**HEALTHY, deployment_name("v1"): deployment_status("UNHEALTHY", "replica crashed: CUDA OOM")}
    unhealthy = ready("v1", {"activeServiceStatus": service_status("UNHEALTHY", deps)})
    assert not unhealthy.ready
    assert "CUDA OOM" in unhealthy.reason
    assert not ready("v1", {}).ready
    no_child = RayRenderer().ready(OWNER, make_spec(), "v1", {}, [])
    assert not no_child.ready
    assert "not created" in no_child.reason
    failed = ready("v1", {"activeServiceStatus": service_status("DEPLOY_FAILED", HEALTHY)})
    assert not failed.ready


def test_only_a_deploy_failed_deployment_counts_as_failed() -> None:
    """An Experiment stops an arm at once on DEPLOY_FAILED; UPDATING and UNHEALTHY may still recover."""
    message = "replica failed to start: cannot load model"
    deps = {**HEALTHY, deployment_name("v2.0"): deployment_status("DEPLOY_FAILED", message)}
    result = ready("v2.0", {"activeServiceStatus": service_status("DEPLOYING", deps)})
    assert not result.ready
    assert result.failed
    assert message in result.reason
    assert not ready("v1", {"activeServiceStatus": service_status("DEPLOYING", deps)}).failed
    for state in ("UPDATING", "UNHEALTHY"):
        deps = {**HEALTHY, deployment_name("v2.0"): deployment_status(state)}
        result = ready("v2.0", {"activeServiceStatus": service_status("DEPLOYING", deps)})
        assert not result.ready
        assert not result.failed


def test_pending_cluster_is_not_ready_until_kuberay_moves_traffic() -> None:
    status = {"pendingServiceStatus": service_status("RUNNING", HEALTHY)}
    pending = ready("v1", status)
    assert not pending.ready
    assert "pending" in pending.reason


def test_unschedulable_gpu_worker_is_reported_as_insufficient_gpu() -> None:
    deps = {**HEALTHY, deployment_name("v2.0"): deployment_status("UPDATING")}
    status = {"activeServiceStatus": service_status("DEPLOYING", deps)}
    pod = worker_pod("Unschedulable", UNSCHEDULABLE)
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    result = ready("v2.0", status, [pod])
    assert not result.ready
    assert result.insufficient_gpu
    assert UNSCHEDULABLE in result.reason
    assert ready("v1", status, [pod]).ready  # stable keeps serving: its replicas are placed already
    other_owner = worker_pod("Unschedulable", UNSCHEDULABLE, deployment="other")
    assert not ready("v2.0", status, [other_owner]).insufficient_gpu


def test_serve_message_about_unplaceable_gpu_replicas_is_insufficient_gpu() -> None:
    message = (
        "Deployment 'model-v2_0' in application 'iris' has 1 replicas that have taken more than 30s to be scheduled. "
        'Resources required for each replica: {"CPU": 0.5, "GPU": 1.0}, total resources available: {"CPU": 3.0}.'
    )
    deps = {**HEALTHY, deployment_name("v2.0"): deployment_status("UPDATING", message)}
    result = ready("v2.0", {"activeServiceStatus": service_status("DEPLOYING", deps)})
    assert result.insufficient_gpu
    assert "to be scheduled" in result.reason


def worker_pod(reason: str, message: str, deployment: str = "iris") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{deployment}-raycluster-abcde-models-worker-x1",
            "labels": {
                "sluice.dev/model-deployment": deployment,
                "ray.io/node-type": "worker",
                "ray.io/group": "models",
            },
        },
        "spec": {"containers": [{"name": "ray-worker", "image": "img"}]},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": reason, "message": message}],
        },
    }


def test_insufficient_gpu_needs_unschedulable_for_gpus() -> None:
    assert insufficient_gpu([worker_pod("Unschedulable", UNSCHEDULABLE)]) == UNSCHEDULABLE
    assert insufficient_gpu([worker_pod("Unschedulable", "0/3 nodes are available: 3 Insufficient cpu.")]) is None
    assert insufficient_gpu([worker_pod("SchedulingGated", UNSCHEDULABLE)]) is None
    running = copy.deepcopy(worker_pod("Unschedulable", UNSCHEDULABLE))
    running["status"] = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    assert insufficient_gpu([running]) is None


def test_renderer_for_ray_is_the_ray_renderer() -> None:
    from sluice.api.model_deployment import Backend

    assert isinstance(renderer_for(Backend.RAY), RayRenderer)


def test_the_api_server_accepts_the_rayservice(kube_client: Any) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(kube_client)
    for name, spec in sorted(SPECS.items()):
        owner = Owner(name=f"iris-{name}-{uuid.uuid4().hex[:6]}", namespace="default", uid=str(uuid.uuid4()))
        [rs] = RayRenderer().children(owner, spec, canary(10, 5), CHART)
        body, code, _ = api.create_namespaced_custom_object_with_http_info("ray.io", "v1", "default", "rayservices", rs)
        assert code == 201
        assert body["spec"]["serveConfigV2"] == rs["spec"]["serveConfigV2"]
        assert body["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"] == "models"


def test_gpu_workers_run_the_gpu_serving_image_and_the_head_the_cpu_one() -> None:
    config = OperatorConfig(
        router_image="reg.example/sluice-serving:1.0", router_gpu_image="reg.example/sluice:1.0-gpu"
    )
    for name, worker_image in (("gpu", "reg.example/sluice:1.0-gpu"), ("cpu", "reg.example/sluice-serving:1.0")):
        cluster = render(SPECS[name], canary(10), config)["spec"]["rayClusterConfig"]
        assert cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == worker_image
        # The head runs no models (num-cpus 0): the CPU image serves its ingress either way.
        assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == config.router_image
    assert OperatorConfig.from_env({"SLUICE_ROUTER_GPU_IMAGE": "x/y:2-gpu"}).router_gpu_image == "x/y:2-gpu"
    assert OperatorConfig.from_env({}).router_gpu_image.endswith("-gpu")
