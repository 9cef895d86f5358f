"""backend triton: per running version a tritonserver Deployment + Service, and the Sluice router in front of them.

Each version's pod gets its model repository from an init container (`python -m sluice.serving.triton.prepare`,
router image) that fetches the file, checks its sha256 and writes a `config.pbtxt` (onnxruntime_onnx, dynamic
batching from the spec, KIND_GPU instances when the spec asks for GPUs) into an emptyDir that tritonserver serves.
A version's workload depends on that version and the spec's resources only, so a new version adds a Deployment and
leaves the others alone.

The router reads its ServingConfig from the ConfigMap `<md>-router` (key `config.json`): mounted as its start-up
file, and followed live through the API (`--watch-configmap`, RBAC limited to that one ConfigMap) because a mounted
file takes kubelet's sync period to change. Weights and mirror live only in the ConfigMap, never in the router's pod
template, so a traffic change reaches the router within a watch event and restarts nothing. One router replica:
the builtin metric provider reads counters from `<md>-router:8000/metrics`, which must be one process's counters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import desired_config
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Key, Object, Owner, Ready
from sluice.operator.render.admin import mount_admin_token
from sluice.operator.render.gpu import insufficient_gpu, placement
from sluice.operator.render.meta import (
    COMPONENT_LABEL,
    DEPLOYMENT_LABEL,
    VERSION_LABEL,
    child_meta,
    label_value,
    labels,
    router_name,
    selector,
    version_workload_name,
)
from sluice.operator.render.monitoring import triton_monitors
from sluice.operator.render.ray import with_kept_versions
from sluice.serving.config import ServingConfig

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
ROUTER_PORT = 8000
ROUTER_GRPC_PORT = 8001  # the router's KServe v2 gRPC API (Triton's HTTP/gRPC pair)
# sluice.serving.triton.repository.Flavour.ONNXRUNTIME (platform onnxruntime_onnx, what a real Triton image serves);
# spelt out because that module imports tritonclient, which the operator may not (tests check the two agree).
FLAVOUR = "onnxruntime"
MODEL_REPOSITORY = "/models"
CONFIG_DIR = "/etc/sluice"
CONFIG_KEY = "config.json"
TRITON_COMPONENT, ROUTER_COMPONENT = "tritonserver", "router"
RUN_AS = 10001  # the sluice user of serving/Dockerfile (router and init container)
TRITON_RUN_AS = 1000  # triton-server, the non-root user of NVIDIA's tritonserver images
ROUTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
PREPARE_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


class TritonRenderer:
    """The Renderer for backend triton."""

    def children(
        self, owner: Owner, spec: ModelDeploymentSpec, desired: Desired, config: OperatorConfig
    ) -> list[Object]:
        """RBAC and the router's ConfigMap first (the router needs both to start), then each version, the router last.

        Before any version has the stable role there is nothing to route, so only the version workloads are rendered.
        """
        out: list[Object] = []
        router = desired.routing.stable is not None
        if router:
            out += [
                service_account(owner),
                role(owner),
                role_binding(owner),
                router_config_map(owner, spec, desired),
            ]
        for ref in _unique(desired.running):
            out += [version_deployment(owner, spec, ref, config), version_service(owner, ref.version)]
        if router:
            out += [router_deployment(owner, config), router_service(owner)]
        return out + triton_monitors(owner, config, ROUTER_COMPONENT, TRITON_COMPONENT)

    def ready(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        version: str,
        live: Mapping[Key, Object],
        pods: Sequence[Object],
    ) -> Ready:
        """Ready when the version's Deployment has rolled out (its current generation observed, every replica
        updated, at least one ready) and so has the router's: clients reach a version only through the router, so a
        version whose router is down serves nobody, whichever role it has.
        """
        name = version_workload_name(owner, version)
        deployment = live.get(("Deployment", name))
        if deployment is None:
            return Ready(False, f"Deployment {name} not created yet")
        ok, reason = rolled_out(deployment)
        if not ok:
            gpu_message = insufficient_gpu(_version_pods(owner, version, pods))
            if gpu_message:
                return Ready(False, f"waiting for GPUs: {gpu_message}", insufficient_gpu=True)
            return Ready(False, f"Deployment {name}: {reason}", failed=_past_deadline(deployment))
        router = live.get(("Deployment", router_name(owner)))
        if router is None:
            return Ready(False, f"router Deployment {router_name(owner)} not created yet")
        ok, reason = rolled_out(router)
        if not ok:
            return Ready(False, f"router Deployment {router_name(owner)}: {reason}")
        return Ready(True)


def _past_deadline(deployment: Mapping[str, Any]) -> bool:
    """The Deployment controller gave up on it (condition Progressing=False, ProgressDeadlineExceeded): its pods
    crash or never become ready, e.g. a model the init container or tritonserver cannot load."""
    conditions = (deployment.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )


def rolled_out(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """(serving?, why not) from a Deployment's status as the Deployment controller writes it."""
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    generation, observed = int(meta.get("generation") or 0), int(status.get("observedGeneration") or 0)
    if observed < generation:
        return False, f"generation {generation} not observed yet (at {observed})"
    replicas = int(spec.get("replicas", 1))
    updated, ready = int(status.get("updatedReplicas") or 0), int(status.get("readyReplicas") or 0)
    if updated < replicas:
        return False, f"{updated} of {replicas} replicas updated"
    if ready < 1:
        return False, f"no ready replica (of {replicas})"
    return True, ""


# -- the per-version tritonserver --------------------------------------------------------------------------------


def prepare_args(spec: ModelDeploymentSpec, ref: VersionRef) -> list[str]:
    """Arguments of `python -m sluice.serving.triton.prepare` for one version (its CLI, parsed by `prepare`)."""
    b = spec.batching
    args = ["--model", spec.model.name, "--dest", MODEL_REPOSITORY, "--version", ref.version, "--uri", ref.uri]
    if ref.sha256:
        args += ["--sha256", ref.sha256]
    args += ["--flavour", FLAVOUR, "--max-batch-size", str(b.max_batch_size)]
    if not b.enabled:
        args.append("--no-dynamic-batching")
    for size in b.preferred_batch_sizes:
        args += ["--preferred-batch-size", str(size)]
    args += ["--max-queue-delay-us", str(round(b.max_wait_ms * 1000)), "--gpus", str(spec.resources.gpu)]
    return args


def triton_args() -> list[str]:
    return [
        "tritonserver",
        f"--model-repository={MODEL_REPOSITORY}",
        "--http-port",
        str(HTTP_PORT),
        "--grpc-port",
        str(GRPC_PORT),
        "--metrics-port",
        str(METRICS_PORT),
    ]


def version_deployment(owner: Owner, spec: ModelDeploymentSpec, ref: VersionRef, config: OperatorConfig) -> Object:
    resources, node_selector, tolerations = placement(spec.resources, config)
    pod_labels = {**labels(owner, ref.version), COMPONENT_LABEL: TRITON_COMPONENT}
    volume_mount = [{"name": "models", "mountPath": MODEL_REPOSITORY}]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # tritonserver never talks to the API
        "securityContext": _pod_security(TRITON_RUN_AS),
        "initContainers": [
            {
                **_container("prepare-model", config.router_image, PREPARE_RESOURCES),
                "command": ["python", "-m", "sluice.serving.triton.prepare"],
                "args": prepare_args(spec, ref),
                "volumeMounts": volume_mount,
            }
        ],
        "containers": [
            {
                **_container("tritonserver", spec.triton_image or config.triton_image, resources),
                "args": triton_args(),
                "ports": [
                    {"name": "http", "containerPort": HTTP_PORT},
                    {"name": "grpc", "containerPort": GRPC_PORT},
                    {"name": "metrics", "containerPort": METRICS_PORT},
                ],
                "readinessProbe": {
                    "httpGet": {"path": "/v2/health/ready", "port": "http"},
                    "periodSeconds": 5,
                    "failureThreshold": 3,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/v2/health/live", "port": "http"},
                    "initialDelaySeconds": 10,
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                },
                "volumeMounts": volume_mount,
            }
        ],
        "volumes": [{"name": "models", "emptyDir": {}}],
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, version_workload_name(owner, ref.version), TRITON_COMPONENT, ref.version),
        "spec": {
            "replicas": _replicas(spec),
            "selector": {"matchLabels": selector(owner, ref.version)},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def version_service(owner: Owner, version: str) -> Object:
    ports = [("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT)]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, version_workload_name(owner, version), TRITON_COMPONENT, version),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(owner, version),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
        },
    }


def grpc_endpoint(owner: Owner, version: str) -> str:
    """The gRPC address of a version's Service, as the router's triton backend wants it (host:port)."""
    return f"{version_workload_name(owner, version)}.{owner.namespace}.svc:{GRPC_PORT}"


# -- the router ----------------------------------------------------------------------------------------------------


def router_serving_config(owner: Owner, spec: ModelDeploymentSpec, desired: Desired) -> ServingConfig:
    """The router's config: roles and weights from `desired`, each variant pointing at its version's Service."""
    config = with_kept_versions(desired_config(spec, desired.routing, desired.arms, desired.drift), desired.running)
    variants = tuple(v.model_copy(update={"endpoint": grpc_endpoint(owner, v.version)}) for v in config.variants)
    return ServingConfig.model_validate({**config.model_dump(), "variants": [v.model_dump() for v in variants]})


def router_config_map(owner: Owner, spec: ModelDeploymentSpec, desired: Desired) -> Object:
    text = json.dumps(router_serving_config(owner, spec, desired).model_dump(mode="json"), sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, router_name(owner), ROUTER_COMPONENT),
        "data": {CONFIG_KEY: text},
    }


def service_account(owner: Owner) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, router_name(owner), ROUTER_COMPONENT),
    }


def role(owner: Owner) -> Object:
    """Read access to the router's own ConfigMap only (list/watch by name work with fieldSelector=metadata.name)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, router_name(owner), ROUTER_COMPONENT),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [router_name(owner)],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }


def role_binding(owner: Owner) -> Object:
    name = router_name(owner)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name, ROUTER_COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def router_selector(owner: Owner) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: label_value(owner.name), COMPONENT_LABEL: ROUTER_COMPONENT}


def router_args(owner: Owner) -> list[str]:
    return [
        "--variant-backend",
        "triton",
        "--host",
        "0.0.0.0",
        "--port",
        str(ROUTER_PORT),
        "--grpc-port",
        str(ROUTER_GRPC_PORT),
        "--config",
        f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--watch-configmap",
        f"{owner.namespace}/{router_name(owner)}",
    ]


def router_deployment(owner: Owner, config: OperatorConfig) -> Object:
    """Depends on the owner and the operator's settings only: no weight, version or config hash in the template."""
    name = router_name(owner)
    pod: dict[str, Any] = {
        "serviceAccountName": name,
        "securityContext": _pod_security(RUN_AS),
        "containers": [
            {
                **_container("router", config.router_image, ROUTER_RESOURCES),
                "command": ["python", "-m", "sluice.serving.host_standalone"],
                "args": router_args(owner),
                "ports": [
                    {"name": "http", "containerPort": ROUTER_PORT},
                    {"name": "grpc", "containerPort": ROUTER_GRPC_PORT},
                ],
                # Live, not /v2/health/ready: the latter fails while any variant with traffic is down, and a
                # failing canary must not take the router (and stable's traffic) out of its Service.
                "readinessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {
                    "httpGet": {"path": "/v2/health/live", "port": "http"},
                    "initialDelaySeconds": 5,
                    "periodSeconds": 10,
                },
                "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": name}}],
    }
    mount_admin_token(owner, pod, pod["containers"][0])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, name, ROUTER_COMPONENT),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": router_selector(owner)},
            "template": {"metadata": {"labels": {**labels(owner), COMPONENT_LABEL: ROUTER_COMPONENT}}, "spec": pod},
        },
    }


def router_service(owner: Owner) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, router_name(owner), ROUTER_COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": router_selector(owner),
            "ports": [
                {"name": "http", "port": ROUTER_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": ROUTER_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


# -- shared bits ---------------------------------------------------------------------------------------------------


def _meta(owner: Owner, name: str, component: str, version: str | None = None) -> dict[str, Any]:
    meta = child_meta(owner, name, version)
    meta["labels"][COMPONENT_LABEL] = component
    return meta


def _replicas(spec: ModelDeploymentSpec) -> int:
    """Fixed replicas, or autoscaling's lower bound (at least one, so a version can become ready)."""
    a = spec.scaling.autoscaling
    return spec.scaling.replicas if a is None else max(1, a.min_replicas)


def _unique(refs: Sequence[VersionRef]) -> list[VersionRef]:
    seen: set[str] = set()
    out = []
    for ref in refs:
        if ref.version not in seen:
            seen.add(ref.version)
            out.append(ref)
    return out


def _pod_security(user: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(name: str, image: str, resources: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "resources": json.loads(json.dumps(resources)),  # a private copy: callers may mutate the result
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _version_pods(owner: Owner, version: str, pods: Sequence[Object]) -> list[Object]:
    mine, wanted = label_value(owner.name), label_value(version)
    out = []
    for pod in pods:
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        if pod_labels.get(DEPLOYMENT_LABEL) == mine and pod_labels.get(VERSION_LABEL) == wanted:
            out.append(pod)
    return out
