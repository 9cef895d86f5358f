"""The stand-in for KubeRay, kube-controller-manager and the kubelet, which cannot run here.

It follows the objects the operator writes in one namespace of the API emulator and answers as those controllers
would: a RayService's Serve applications become RUNNING with every deployment HEALTHY (the status KubeRay writes),
a Deployment gets its ready replicas. In no-GPU mode a workload asking for `nvidia.com/gpu` that was not placed yet
gets a Pending pod that the scheduler marked Unschedulable, and its Serve deployment stays unplaced; what was placed
before keeps running (nothing takes a stable replica away).

With a data plane (`sluice.serving.launch.start_data_plane`), it also does what the Serve application does in a
cluster: each RayService's ingress `user_config` (the live ServingConfig) is applied to the local router, so real
requests and the router's real /metrics follow the operator's decisions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import yaml

from sluice.serving.config import ServingConfig
from sluice.serving.ray.spec import INGRESS_NAME, deployment_name

Obj = dict[str, Any]
GPU = "nvidia.com/gpu"
MERGE = {"Content-Type": "application/merge-patch+json"}
UNSCHEDULABLE = f"0/3 nodes are available: 3 Insufficient {GPU}. preemption: 0/3 nodes are available."


def _asks_gpu(pod_spec: Obj) -> bool:
    return any(GPU in ((c.get("resources") or {}).get("limits") or {}) for c in pod_spec.get("containers", []))


class Simulator:
    def __init__(self, url: str, namespace: str, *, gpus: bool = True, plane: Any = None, period_s: float = 0.2):
        self.http = httpx.Client(base_url=url, timeout=10)
        self.ns, self.gpus, self.plane, self.period_s = namespace, gpus, plane, period_s
        self.placed: dict[str, set[str]] = {}  # RayService -> versions whose replicas got their resources
        self.applied: dict[str, str] = {}  # RayService -> last ServingConfig JSON applied to the data plane
        self.errors: list[str] = []
        self.unloadable: set[str] = set()  # model URIs whose replicas never load (the Serve deployment fails)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-simulator", daemon=True)

    def start(self) -> Simulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # kept for the test to show; the simulator keeps going like a controller
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.period_s)

    def round(self) -> None:
        for rs in self._items(f"/apis/ray.io/v1/namespaces/{self.ns}/rayservices"):
            self._rayservice(rs)
        for deploy in self._items(f"/apis/apps/v1/namespaces/{self.ns}/deployments"):
            self._deployment(deploy)

    def _items(self, path: str) -> list[Obj]:
        r = self.http.get(path)
        return list(r.json().get("items", [])) if r.status_code == 200 else []

    # -- KubeRay -----------------------------------------------------------------------------------------------
    def _rayservice(self, rs: Obj) -> None:
        name = rs["metadata"]["name"]
        serve = yaml.safe_load(rs["spec"].get("serveConfigV2") or "{}") or {}
        worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
        needs_gpu = _asks_gpu(worker.get("spec", {}))
        placed = self.placed.setdefault(name, set())
        apps: Obj = {}
        waiting = False
        for app in serve.get("applications", []):
            deps: Obj = {INGRESS_NAME: {"status": "HEALTHY", "message": ""}}
            for variant in app["args"]["config"]["variants"]:
                version = variant["version"]
                if variant["uri"] in self.unloadable:
                    deps[deployment_name(version)] = {
                        "status": "DEPLOY_FAILED",
                        "message": f"replica failed to start: cannot load model from {variant['uri']}",
                    }
                    continue
                if version not in placed and (self.gpus or not needs_gpu):
                    placed.add(version)
                if version in placed:
                    deps[deployment_name(version)] = {"status": "HEALTHY", "message": ""}
                else:
                    waiting = True
                    deps[deployment_name(version)] = {
                        "status": "UPDATING",
                        "message": "Deployment has taken more than 30s to be scheduled: resources {'GPU': 1.0}",
                    }
            apps[app["name"]] = {"status": "RUNNING", "serveDeploymentStatuses": deps}
            if self.plane is not None:
                self._apply_to_plane(name, app)
        status = {"serviceStatus": "Running", "activeServiceStatus": {"applicationStatuses": apps}}
        if rs.get("status") != {**(rs.get("status") or {}), **status}:
            path = f"/apis/ray.io/v1/namespaces/{self.ns}/rayservices/{name}/status"
            self.http.patch(path, json={"status": status}, headers=MERGE)
        if waiting:
            self._pending_pod(f"{name}-models-worker-pending", worker.get("metadata", {}).get("labels", {}))

    def _apply_to_plane(self, name: str, app: Obj) -> None:
        ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
        config = ServingConfig.model_validate(ingress["user_config"]["config"])
        text = config.model_dump_json()
        if self.applied.get(name) != text:
            self.plane.update(config)
            self.applied[name] = text

    # -- kube-controller-manager + scheduler -----------------------------------------------------------------
    def _deployment(self, deploy: Obj) -> None:
        name, spec = deploy["metadata"]["name"], deploy["spec"]
        replicas = spec.get("replicas", 1)
        pod_spec = spec.get("template", {}).get("spec", {})
        if _asks_gpu(pod_spec) and not self.gpus and name not in self.placed:
            self._pending_pod(f"{name}-pending", spec.get("template", {}).get("metadata", {}).get("labels", {}))
            ready = 0
        else:
            self.placed.setdefault(name, {"all"})
            ready = replicas
        status = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas,
        }
        if {k: (deploy.get("status") or {}).get(k) for k in status} != status:
            self.http.patch(
                f"/apis/apps/v1/namespaces/{self.ns}/deployments/{name}/status", json={"status": status}, headers=MERGE
            )

    def _pending_pod(self, name: str, labels: Obj) -> None:
        path = f"/api/v1/namespaces/{self.ns}/pods"
        if self.http.get(f"{path}/{name}").status_code == 200:
            return
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {**labels, "ray.io/node-type": "worker"}},
            "spec": {"containers": [{"name": "worker", "image": "sluice", "resources": {"limits": {GPU: "1"}}}]},
        }
        self.http.post(path, json=pod)
        status = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}
            ],
        }
        self.http.patch(f"{path}/{name}/status", json={"status": status}, headers=MERGE)


@contextlib.contextmanager
def simulating(url: str, namespace: str, *, gpus: bool = True, plane: Any = None) -> Iterator[Simulator]:
    sim = Simulator(url, namespace, gpus=gpus, plane=plane).start()
    try:
        yield sim
    finally:
        sim.stop()
