"""backend ray: one KubeRay `ray.io/v1` RayService whose serveConfigV2 runs the Sluice Serve application.

KubeRay applies a serveConfigV2 change in place (Serve reconfigures the running application) but answers a
rayClusterConfig change with a whole new Ray cluster. So the cluster here depends only on the spec's resources and
scaling, never on versions or weights: a new version changes the application's `args`, a weight or mirror change
only the ingress `user_config` (Serve then calls `reconfigure` on the live ingress; nothing restarts).

Workers are sized for two versions at once (stable + canary, or blue-green's new + old): the cluster never has to be
replaced for a rollout. A canary whose replicas find no free GPU stays pending in Ray; stable's replicas, placed
first, are never moved, so a canary cannot take capacity from stable; `ready()` reports it as insufficient GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import desired_config
from sluice.operator.config import OperatorConfig
from sluice.operator.render import Desired, Key, Object, Owner, Ready
from sluice.operator.render.admin import mount_admin_token
from sluice.operator.render.gpu import insufficient_gpu, placement, serving_image
from sluice.operator.render.meta import DEPLOYMENT_LABEL, child_meta, label_value, labels, ray_service_name
from sluice.operator.render.monitoring import ray_monitors
from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.ray.spec import INGRESS_NAME, deployment_name, serve_application

API_VERSION = "ray.io/v1"
KIND = "RayService"
WORKER_GROUP = "models"
VERSIONS_AT_ONCE = 2  # worker capacity for stable + one other version, so a rollout never needs a new cluster
SERVE_PORT = 8000
RUN_AS = 10001  # the sluice user of serving/Dockerfile; numeric so that runAsNonRoot can be verified

SERVING = {"HEALTHY", "UPSCALING", "DOWNSCALING"}  # Serve deployment states whose replicas answer requests
APP_UP = {"RUNNING", "DEPLOYING", "UNHEALTHY"}  # the app (ingress) is up; one deployment may still be updating
FAILED = {"DEPLOY_FAILED"}  # Serve gave up starting the deployment's replicas (UNHEALTHY may recover)
RAY_NODE_TYPE_LABEL = "ray.io/node-type"


def with_kept_versions(config: ServingConfig, running: Sequence[VersionRef]) -> ServingConfig:
    """Add a zero-weight variant for each running version no role points at (blue-green's old one, kept for a fast
    undo), so its Serve deployment stays up; it gets no traffic but the version and override headers still reach it.
    """
    served = {v.version for v in config.variants}
    extra: list[VariantConfig] = []
    for ref in running:
        if ref.version in served:
            continue
        served.add(ref.version)
        name = "previous" if not extra else f"previous-{len(extra) + 1}"
        extra.append(VariantConfig(name=name, version=ref.version, uri=ref.uri, sha256=ref.sha256, weight=0))
    if not extra:
        return config
    return config.model_copy(update={"variants": (*config.variants, *extra)})


class RayRenderer:
    """The Renderer for backend ray."""

    def children(
        self, owner: Owner, spec: ModelDeploymentSpec, desired: Desired, config: OperatorConfig
    ) -> list[Object]:
        head = {DEPLOYMENT_LABEL: label_value(owner.name), RAY_NODE_TYPE_LABEL: "head"}
        return [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": child_meta(owner, ray_service_name(owner)),
                "spec": {
                    "serveConfigV2": serve_config_yaml(spec, desired),
                    "rayClusterConfig": cluster_config(owner, spec, config),
                },
            },
            *ray_monitors(owner, config, head, SERVE_PORT),
        ]

    def ready(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        version: str,
        live: Mapping[Key, Object],
        pods: Sequence[Object],
    ) -> Ready:
        """Ready when `version`'s Serve deployment and the ingress serve on the active cluster.

        Only the active cluster counts: during a cluster upgrade KubeRay keeps traffic on the active one until the
        pending one is ready, and on creation the first cluster is pending until KubeRay promotes it.
        """
        rs = live.get((KIND, ray_service_name(owner)))
        if rs is None:
            return Ready(False, "RayService not created yet")
        status = rs.get("status") or {}
        app_name = spec.model.name
        dep_name = deployment_name(version)
        ok, reason, message = _serving(status.get("activeServiceStatus") or {}, app_name, dep_name)
        if ok:
            return Ready(True)
        pending_ok, _, pending_message = _serving(status.get("pendingServiceStatus") or {}, app_name, dep_name)
        if pending_ok:
            reason = "serving on the pending Ray cluster; KubeRay has not moved traffic to it yet"
        gpu_message = insufficient_gpu(_worker_pods(owner, pods)) or _serve_gpu_message(message or pending_message)
        if gpu_message:
            return Ready(False, f"waiting for GPUs: {gpu_message}", insufficient_gpu=True)
        return Ready(False, reason, failed=_deploy_failed(status.get("activeServiceStatus") or {}, app_name, dep_name))


def serve_config_yaml(spec: ModelDeploymentSpec, desired: Desired) -> str:
    """serveConfigV2: a YAML string (KubeRay's field type), keys sorted so equal inputs give equal text."""
    config = with_kept_versions(desired_config(spec, desired.routing, desired.arms, desired.drift), desired.running)
    args: dict[str, Any] = {}
    if spec.scaling.autoscaling is None:
        args["model_replicas"] = spec.scaling.replicas
    app = serve_application(config, route_prefix="/", **args)
    if spec.scaling.autoscaling is not None:
        a = spec.scaling.autoscaling
        auto = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        }
        # Depends on versions only (like args), so a weight change still touches the ingress user_config alone.
        for version in sorted({v.version for v in config.variants}):
            app["deployments"].append(
                {"name": deployment_name(version), "num_replicas": "auto", "autoscaling_config": auto}
            )
    serve = {"http_options": {"host": "0.0.0.0", "port": SERVE_PORT}, "applications": [app]}
    return yaml.safe_dump(serve, sort_keys=True)


def cluster_config(owner: Owner, spec: ModelDeploymentSpec, config: OperatorConfig) -> dict[str, Any]:
    """rayClusterConfig: a CPU-only head that runs no models (num-cpus 0) and one worker group for the replicas."""
    resources, node_selector, tolerations = placement(spec.resources, config)
    a = spec.scaling.autoscaling
    if a is None:
        replicas = minimum = maximum = spec.scaling.replicas * VERSIONS_AT_ONCE
    else:
        minimum, maximum = a.min_replicas, a.max_replicas * VERSIONS_AT_ONCE
        replicas = minimum
    worker_pod: dict[str, Any] = {
        **_pod_security(),
        "containers": [_container("ray-worker", serving_image(spec.resources, config), resources, ports=[])],
    }
    if node_selector:
        worker_pod["nodeSelector"] = node_selector
    if tolerations:
        worker_pod["tolerations"] = tolerations
    head_resources = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
    ]
    out: dict[str, Any] = {
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {
                "metadata": {"labels": labels(owner)},
                "spec": {
                    **_pod_security(),
                    "containers": [_container("ray-head", config.router_image, head_resources, ports=head_ports)],
                },
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": WORKER_GROUP,
                "replicas": replicas,
                "minReplicas": minimum,
                "maxReplicas": maximum,
                "rayStartParams": {},
                "template": {"metadata": {"labels": labels(owner)}, "spec": worker_pod},
            }
        ],
    }
    # The ingress replica (the router) may be placed on the head or a worker: both read the same token.
    head_pod = out["headGroupSpec"]["template"]["spec"]
    mount_admin_token(owner, head_pod, head_pod["containers"][0])
    mount_admin_token(owner, worker_pod, worker_pod["containers"][0])
    if a is not None:
        out["enableInTreeAutoscaling"] = True
    return out


def _pod_security() -> dict[str, Any]:
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    }


def _container(name: str, image: str, resources: dict[str, Any], *, ports: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if ports:
        container["ports"] = ports
    return container


def _serving(service_status: Mapping[str, Any], app_name: str, dep_name: str) -> tuple[bool, str, str]:
    """(serving?, reason, Serve's message) for one deployment in one cluster's status as KubeRay writes it."""
    apps = service_status.get("applicationStatuses") or {}
    app = apps.get(app_name)
    if app is None:
        return False, f"Serve application {app_name!r} not reported yet", ""
    deps = app.get("serveDeploymentStatuses") or {}
    dep = deps.get(dep_name)
    if dep is None:
        return False, f"Serve deployment {dep_name!r} not reported yet (application {app.get('status')})", ""
    ingress = deps.get(INGRESS_NAME) or {}
    app_status, dep_status = app.get("status", ""), dep.get("status", "")
    message = dep.get("message") or app.get("message") or ""
    if app_status in APP_UP and dep_status in SERVING and ingress.get("status") in SERVING:
        return True, "", ""
    detail = f": {message}" if message else ""
    return (
        False,
        f"application {app_status or 'unknown'}, deployment {dep_name} {dep_status or 'unknown'}, "
        f"ingress {ingress.get('status') or 'unknown'}{detail}",
        message,
    )


def _deploy_failed(service_status: Mapping[str, Any], app_name: str, dep_name: str) -> bool:
    """Serve gave up on the deployment: its replicas failed to start (e.g. the model cannot load)."""
    apps = service_status.get("applicationStatuses") or {}
    deps = (apps.get(app_name) or {}).get("serveDeploymentStatuses") or {}
    return (deps.get(dep_name) or {}).get("status") in FAILED


def _worker_pods(owner: Owner, pods: Sequence[Object]) -> list[Object]:
    """Worker pods of this owner's Ray cluster: our labels (from the pod template) and KubeRay's node type."""
    mine = label_value(owner.name)
    out = []
    for pod in pods:
        pod_labels = (pod.get("metadata") or {}).get("labels") or {}
        if pod_labels.get(DEPLOYMENT_LABEL) == mine and pod_labels.get(RAY_NODE_TYPE_LABEL, "worker") == "worker":
            out.append(pod)
    return out


def _serve_gpu_message(message: str) -> str | None:
    """Serve's own note on replicas it cannot place: "... taken more than 30s to be scheduled ... {"GPU": 1.0} ..."."""
    if "GPU" in message and ("scheduled" in message or "nsufficient" in message):
        return message
    return None
