"""backend triton renders tritonserver Deployments/Services per version and a router that follows its ConfigMap:
every object passes the Kubernetes schemas and the API, the init container writes a config Triton parses, a weight
change touches only the ConfigMap and a new version only adds its own workload."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from sluice.api.model_deployment import Backend, ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import Routing
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Object, Owner, renderer_for
from sluice.operator.render.gpu import GPU_RESOURCE
from sluice.operator.render.meta import VERSION_LABEL, owner_reference, version_workload_name
from sluice.operator.render.triton import FLAVOUR, TritonRenderer, grpc_endpoint
from sluice.serving.configsource import parse_config
from sluice.serving.host_standalone import build_router
from sluice.serving.triton import prepare
from sluice.serving.triton.repository import Flavour, build_config, render_config

K8S_VERSION = "1.33"
MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"
OWNER = Owner(name="fraud", namespace="default", uid="6c1b2a3d-0000-4000-8000-000000000002")
V1 = VersionRef(version="v1", uri="s3://models/fraud/v1.onnx", sha256="a" * 64)
V2 = VersionRef(version="v2.0_rc", uri="gs://models/fraud/v2.onnx")
V3 = VersionRef(version="v3", uri="https://models.example/fraud/v3.onnx")
CHART = OperatorConfig(
    router_image="registry.example/sluice-serving:1.2.3",
    triton_image="registry.example/tritonserver:24.08-py3",
    gpu_node_selector={"node.kubernetes.io/instance-type": "g5.xlarge"},
    gpu_tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
)
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def make_spec(**extra: Any) -> ModelDeploymentSpec:
    base = {"backend": "triton", "model": {"name": "fraud", "uri": V2.uri, "version": V2.version}}
    return ModelDeploymentSpec.model_validate({**base, **extra})


SPECS = {
    "cpu": make_spec(),
    "gpu": make_spec(
        resources={"gpu": 2, "cpu": "4", "memory": "8Gi"},
        batching={"maxBatchSize": 64, "maxWaitMs": 1.5, "preferredBatchSizes": [16, 32]},
        tritonImage="nvcr.io/nvidia/tritonserver:24.10-py3",
    ),
    "autoscaled-unbatched": make_spec(
        scaling={"autoscaling": {"minReplicas": 0, "maxReplicas": 3}}, batching={"enabled": False}
    ),
    "own-placement": make_spec(
        resources={
            "gpu": 1,
            "nodeSelector": {"sluice.dev/gpu": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}],
        }
    ),
}


def canary(weight: int, mirror: int = 0) -> Desired:
    return Desired(Routing(stable=V1, canary=V2, canary_weight=weight, mirror_percent=mirror), (V1, V2))


def render(spec: ModelDeploymentSpec, desired: Desired, owner: Owner = OWNER) -> dict[tuple[str, str], Object]:
    children = TritonRenderer().children(owner, spec, desired, CHART)
    keyed = {(c["kind"], c["metadata"]["name"]): c for c in children}
    assert len(keyed) == len(children), "two children share a kind and name"
    return keyed


def deployment(children: dict[tuple[str, str], Object], name: str) -> Object:
    return children["Deployment", name]


def pod_spec(children: dict[tuple[str, str], Object], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(children, name)["spec"]["template"]["spec"]
    return spec


def test_every_child_passes_the_kubernetes_schemas() -> None:
    for spec in SPECS.values():
        children = TritonRenderer().children(OWNER, spec, canary(10, 5), CHART)
        kinds = [c["kind"] for c in children]
        assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap"] + ["Deployment", "Service"] * 3
        for child in children:
            kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_children_carry_the_owner_reference_and_labels() -> None:
    children = render(SPECS["cpu"], canary(10))
    v2_name = version_workload_name(OWNER, "v2.0_rc")
    assert v2_name.startswith("fraud-v2-0-rc-")  # "v2.0_rc" is no DNS label: cleaned, plus a hash of it
    router_kinds = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service")
    assert set(children) == {(k, "fraud-router") for k in router_kinds} | {
        (k, n) for k in ("Deployment", "Service") for n in ("fraud-v1", v2_name)
    }
    for (kind, name), child in children.items():
        meta = child["metadata"]
        assert meta["namespace"] == "default"
        assert meta["ownerReferences"] == [owner_reference(OWNER)], (kind, name)
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/name"] == "sluice-model"
        assert meta["labels"]["app.kubernetes.io/instance"] == "fraud"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "sluice-operator"
        assert meta["labels"]["sluice.dev/model-deployment"] == "fraud"
    for name, version in (("fraud-v1", "v1"), (v2_name, "v2.0_rc")):
        dep = deployment(children, name)
        assert dep["metadata"]["labels"][VERSION_LABEL] == version
        template_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
        assert children["Service", name]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # The router's pods are nobody else's: no version selector matches them, and theirs matches no version pod.
    router = deployment(children, "fraud-router")
    router_labels = router["spec"]["template"]["metadata"]["labels"]
    for name in ("fraud-v1", v2_name):
        version_labels = deployment(children, name)["spec"]["template"]["metadata"]["labels"]
        assert not deployment(children, name)["spec"]["selector"]["matchLabels"].items() <= router_labels.items()
        assert not router["spec"]["selector"]["matchLabels"].items() <= version_labels.items()
    assert children["Service", "fraud-router"]["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]


def test_the_router_config_points_each_variant_at_its_versions_grpc_service() -> None:
    children = render(SPECS["cpu"], canary(25, 10))
    config = parse_config(children["ConfigMap", "fraud-router"]["data"])  # what the router's ConfigMapSource does
    assert {v.name: (v.version, v.weight) for v in config.variants} == {
        "stable": ("v1", 75),
        "canary": ("v2.0_rc", 25),
    }
    assert config.mirror is not None
    assert config.mirror.percent == 10
    for variant in config.variants:
        host, _, port = (variant.endpoint or "").rpartition(":")
        service_name, namespace, _ = host.split(".", 2)
        assert namespace == "default"
        ports = {p["name"]: p["port"] for p in children["Service", service_name]["spec"]["ports"]}
        assert ports["grpc"] == int(port) == 8001
        assert variant.endpoint == grpc_endpoint(OWNER, variant.version)
    router = build_router(config, "triton")  # the triton backend accepts every endpoint (it connects lazily)
    assert set(router.config.variant(v.name).endpoint or "" for v in config.variants) == {
        grpc_endpoint(OWNER, "v1"),
        grpc_endpoint(OWNER, "v2.0_rc"),
    }

    # The router's start-up file is that ConfigMap, and it follows the same ConfigMap live.
    pod = pod_spec(children, "fraud-router")
    [container] = pod["containers"]
    args = container["args"]
    assert args[args.index("--watch-configmap") + 1] == "default/fraud-router"
    assert args[args.index("--variant-backend") + 1] == "triton"
    mount = container["volumeMounts"][0]
    assert args[args.index("--config") + 1] == f"{mount['mountPath']}/config.json"
    assert pod["volumes"][0] == {"name": mount["name"], "configMap": {"name": "fraud-router"}}
    # The admin API's token comes from an optional Secret, mounted where $SLUICE_ADMIN_TOKEN_FILE points.
    admin_mount = container["volumeMounts"][1]
    assert pod["volumes"][1] == {
        "name": admin_mount["name"],
        "secret": {"secretName": "fraud-router-admin", "optional": True},
    }
    assert container["env"] == [{"name": "SLUICE_ADMIN_TOKEN_FILE", "value": f"{admin_mount['mountPath']}/token"}]
    assert pod["serviceAccountName"] == "fraud-router"
    [rule] = children["Role", "fraud-router"]["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["fraud-router"],
        "verbs": ["get", "list", "watch"],
    }
    binding = children["RoleBinding", "fraud-router"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fraud-router", "namespace": "default"}]
    assert binding["roleRef"]["name"] == "fraud-router"


def test_a_weight_change_changes_only_the_config_map() -> None:
    for spec in SPECS.values():
        before, after = render(spec, canary(10)), render(spec, canary(50, 20))
        changed = {key for key in before if before[key] != after[key]}
        assert changed == {("ConfigMap", "fraud-router")}
        weights = {v.name: v.weight for v in parse_config(after["ConfigMap", "fraud-router"]["data"]).variants}
        assert weights == {"stable": 50, "canary": 50}


def test_a_new_version_adds_its_workload_and_leaves_the_others_alone() -> None:
    spec = SPECS["gpu"]
    stable_only = render(spec, Desired(Routing(stable=V1), (V1,)))
    with_canary = render(spec, Desired(Routing(stable=V1, canary=V3), (V1, V3)))
    added = set(with_canary) - set(stable_only)
    assert added == {("Deployment", "fraud-v3"), ("Service", "fraud-v3")}
    assert set(stable_only) <= set(with_canary)
    changed = {key for key in stable_only if stable_only[key] != with_canary[key]}
    assert changed == {("ConfigMap", "fraud-router")}  # the router learns of the canary; nothing else moves
    # Blue-green's old version keeps its workload (and a zero-weight variant) after the switch.
    switched = render(spec, Desired(Routing(stable=V3), (V3, V1)))
    assert set(switched) == set(with_canary)
    config = parse_config(switched["ConfigMap", "fraud-router"]["data"])
    assert {v.version: v.weight for v in config.variants} == {"v3": 100, "v1": 0}
    # Before the first version is stable there is nothing to route: version workloads only.
    first = TritonRenderer().children(OWNER, spec, Desired(Routing(), (V1,)), CHART)
    assert [(c["kind"], c["metadata"]["name"]) for c in first] == [("Deployment", "fraud-v1"), ("Service", "fraud-v1")]


def test_rendering_is_deterministic_and_does_not_share_state() -> None:
    a = TritonRenderer().children(OWNER, SPECS["gpu"], canary(10), CHART)
    b = TritonRenderer().children(OWNER, SPECS["gpu"], canary(10), CHART)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    a[4]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "999"
    c = TritonRenderer().children(OWNER, SPECS["gpu"], canary(10), CHART)
    assert json.dumps(b, sort_keys=True) == json.dumps(c, sort_keys=True)


def test_gpu_placement_follows_the_spec_with_chart_defaults() -> None:
    cpu = pod_spec(render(SPECS["cpu"], canary(10)), "fraud-v1")
    assert GPU_RESOURCE not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu  # a CPU model is not pinned to GPU nodes
    assert "tolerations" not in cpu

    gpu = pod_spec(render(SPECS["gpu"], canary(10)), "fraud-v1")
    [triton] = gpu["containers"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # spec.tritonImage beats the chart's
    assert triton["resources"]["limits"][GPU_RESOURCE] == "2"
    assert gpu["nodeSelector"] == {"node.kubernetes.io/instance-type": "g5.xlarge"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    args = gpu["initContainers"][0]["args"]
    assert args[args.index("--gpus") + 1] == "2"

    own = pod_spec(render(SPECS["own-placement"], canary(10)), "fraud-v1")
    assert own["nodeSelector"] == {"sluice.dev/gpu": "true"}
    assert own["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    # The router never asks for GPUs, whatever the model does.
    router = pod_spec(render(SPECS["gpu"], canary(10)), "fraud-router")
    assert GPU_RESOURCE not in json.dumps(router)
    assert "nodeSelector" not in router


def _repository_spec(dep: Object) -> Any:
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-m", "sluice.serving.triton.prepare"]
    parser = argparse.ArgumentParser()
    prepare.add_arguments(parser)
    return prepare.spec_from_args(parser.parse_args(init["args"]))


def test_the_init_containers_config_pbtxt_parses_with_tritons_protobuf() -> None:
    for name, spec in SPECS.items():
        dep = deployment(render(spec, canary(10)), "fraud-v1")
        repo = _repository_spec(dep)
        assert repo.flavour is Flavour.ONNXRUNTIME == Flavour(FLAVOUR)
        text = render_config(build_config(repo))
        config = model_config_pb2.ModelConfig()
        text_format.Parse(text, config)
        assert config.platform == "onnxruntime_onnx", name
        assert config.name == "fraud"
        assert config.parameters["sluice.version_label.1"].string_value == "v1"
        assert list(config.version_policy.specific.versions) == [1]
        [group] = config.instance_group
        gpus = spec.resources.gpu
        assert group.kind == (
            model_config_pb2.ModelInstanceGroup.KIND_GPU if gpus else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        assert list(group.gpus) == list(range(gpus))
        assert config.max_batch_size == spec.batching.max_batch_size
        assert config.HasField("dynamic_batching") == spec.batching.enabled
        if spec.batching.enabled:
            assert config.dynamic_batching.max_queue_delay_microseconds == round(spec.batching.max_wait_ms * 1000)
            assert list(config.dynamic_batching.preferred_batch_size) == spec.batching.preferred_batch_sizes
        assert repo.versions[0].sha256 == V1.sha256


def test_the_init_container_command_prepares_a_repository(tmp_path: Path) -> None:
    """Run the rendered init container's command here, on a committed example model, as the pod would."""
    ref = VersionRef(version="v1", uri=(MODELS / "fraud-v1.onnx").as_uri())
    dep = deployment(render(SPECS["gpu"], Desired(Routing(stable=ref), (ref,))), "fraud-v1")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    args = [str(tmp_path) if a == init["volumeMounts"][0]["mountPath"] else a for a in init["args"]]
    done = subprocess.run(
        [sys.executable, *init["command"][1:], *args], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fraud" / "1" / "model.onnx").read_bytes() == (MODELS / "fraud-v1.onnx").read_bytes()
    config = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "fraud" / "config.pbtxt").read_text(), config)
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 32]
    # tritonserver serves exactly that repository on the ports its Service and probes name.
    triton = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=/models" in triton["args"]
    assert triton["volumeMounts"][0]["mountPath"] == init["volumeMounts"][0]["mountPath"] == "/models"
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}


def _status(dep: Object, *, generation: int = 1, observed: int = 1, updated: int = 1, ready: int = 1) -> Object:
    live = copy.deepcopy(dep)
    live["metadata"]["generation"] = generation
    live["status"] = {"observedGeneration": observed, "updatedReplicas": updated, "readyReplicas": ready}
    return live


def _pod(version: str, *, unschedulable: str | None = None) -> Object:
    status: dict[str, Any] = {"phase": "Pending"}
    if unschedulable is not None:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        ]
    labels = {"sluice.dev/model-deployment": "fraud", VERSION_LABEL: version}
    return {"metadata": {"name": f"fraud-{version}-abc", "labels": labels}, "status": status}


def test_ready_needs_the_version_and_the_router_rolled_out() -> None:
    spec = SPECS["gpu"]
    children = render(spec, canary(10))
    r = TritonRenderer()
    dep, router = deployment(children, "fraud-v1"), deployment(children, "fraud-router")
    good = {("Deployment", "fraud-v1"): _status(dep), ("Deployment", "fraud-router"): _status(router)}
    assert r.ready(OWNER, spec, "v1", good, []).ready

    assert not r.ready(OWNER, spec, "v1", {}, []).ready
    assert "not created" in r.ready(OWNER, spec, "v1", {}, []).reason
    cases = {
        "generation 2 not observed": _status(dep, generation=2, observed=1),
        "0 of 1 replicas updated": _status(dep, updated=0),
        "no ready replica": _status(dep, ready=0),
    }
    for reason, live_dep in cases.items():
        result = r.ready(OWNER, spec, "v1", {**good, ("Deployment", "fraud-v1"): live_dep}, [])
        assert not result.ready
        assert reason in result.reason
        assert not result.insufficient_gpu
    # Either role needs the router: without it (or with it not rolled out) no version counts as ready.
    result = r.ready(OWNER, spec, "v1", {("Deployment", "fraud-v1"): _status(dep)}, [])
    assert not result.ready
    assert "router" in result.reason
    result = r.ready(OWNER, spec, "v1", {**good, ("Deployment", "fraud-router"): _status(router, ready=0)}, [])
    assert not result.ready
    assert "router" in result.reason


def test_a_deployment_past_its_progress_deadline_counts_as_failed() -> None:
    """The Deployment controller's own verdict (Progressing=False, ProgressDeadlineExceeded) stops an arm at once."""
    spec = SPECS["gpu"]
    children = render(spec, canary(10))
    dep, router = deployment(children, "fraud-v1"), deployment(children, "fraud-router")
    stuck = _status(dep, ready=0)
    good = {("Deployment", "fraud-v1"): stuck, ("Deployment", "fraud-router"): _status(router)}
    assert not TritonRenderer().ready(OWNER, spec, "v1", good, []).failed  # not ready yet, not failed
    stuck["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
    ]
    result = TritonRenderer().ready(OWNER, spec, "v1", good, [])
    assert not result.ready
    assert result.failed
    assert "no ready replica" in result.reason


def test_ready_reports_insufficient_gpu_from_the_versions_own_pods() -> None:
    spec = SPECS["gpu"]
    children = render(spec, canary(10))
    dep = deployment(children, "fraud-v1")
    live = {
        ("Deployment", "fraud-v1"): _status(dep, ready=0),
        ("Deployment", "fraud-router"): _status(deployment(children, "fraud-router")),
    }
    r = TritonRenderer()
    waiting = r.ready(OWNER, spec, "v1", live, [_pod("v1", unschedulable=UNSCHEDULABLE)])
    assert not waiting.ready
    assert waiting.insufficient_gpu
    assert UNSCHEDULABLE in waiting.reason
    # Another version's GPU-starved pod, or a pod short of something else, is not this version's GPU problem.
    assert not r.ready(OWNER, spec, "v1", live, [_pod("v2.0_rc", unschedulable=UNSCHEDULABLE)]).insufficient_gpu
    assert not r.ready(
        OWNER, spec, "v1", live, [_pod("v1", unschedulable="0/3 nodes: Insufficient cpu")]
    ).insufficient_gpu


def test_renderer_for_triton_is_the_triton_renderer() -> None:
    assert isinstance(renderer_for(Backend.TRITON), TritonRenderer)


def test_the_api_server_accepts_every_child(kube_emulator: Any) -> None:
    api = kube_emulator.url
    namespace = f"triton-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=api, timeout=10) as client:
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).status_code == 201
        for name, spec in sorted(SPECS.items()):
            owner = Owner(name=f"fraud-{name}", namespace=namespace, uid=str(uuid.uuid4()))
            for child in TritonRenderer().children(owner, spec, canary(10, 5), CHART):
                group = child["apiVersion"]
                plural = child["kind"].lower() + "s"
                base = f"/api/{group}" if "/" not in group else f"/apis/{group}"
                r = client.post(
                    f"{base}/namespaces/{namespace}/{plural}", json=child, params={"fieldValidation": "Strict"}
                )
                assert r.status_code == 201, (child["kind"], r.text)
                stored = r.json()
                assert stored["metadata"]["ownerReferences"] == child["metadata"]["ownerReferences"]
                assert stored["metadata"]["labels"] == child["metadata"]["labels"]
                if child["kind"] == "ConfigMap":
                    assert stored["data"] == child["data"]


def test_router_serves_rest_and_grpc_on_its_service() -> None:
    """The router pod runs host_standalone with --grpc-port; its Service exposes both ports by name."""
    objects = TritonRenderer().children(OWNER, SPECS["cpu"], canary(10), CHART)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "fraud-router"]
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "fraud-router"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--grpc-port") + 1] == "8001"
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports == {"http": 8000, "grpc": 8001}
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"),
        "grpc": (8001, "grpc"),
    }
