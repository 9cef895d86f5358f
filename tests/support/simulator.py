"""The one stand-in for KubeRay, kube-controller-manager and the scheduler, which cannot run here.

It follows (list + watch) the RayServices and Deployments in one namespace of the API emulator, or in all of them,
and answers as those controllers would: a RayService gets the status KubeRay v1 writes once its Serve applications
run (every Serve deployment HEALTHY, app RUNNING), a Deployment gets its ready replicas. With `gpus=False` a workload
asking for `nvidia.com/gpu` that was not placed yet gets a Pending pod that the scheduler marked Unschedulable, and
its Serve deployment stays unplaced; what was placed before keeps running (nothing takes a stable replica away).
Model URIs in `unloadable` never load: their Serve deployment fails, naming the URI.

With a data plane (`sluice.serving.launch.start_data_plane`), it also does what the Serve application does in a
cluster: each RayService's ingress `user_config` (the live ServingConfig) is applied to the local router, so real
requests and the router's real /metrics follow the operator's decisions.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import yaml

from sluice.serving.config import ServingConfig
from sluice.serving.ray.spec import INGRESS_NAME, deployment_name

Obj = dict[str, Any]
GPU = "nvidia.com/gpu"
MERGE = {"Content-Type": "application/merge-patch+json"}
AGENT = "kuberay-simulator/1"  # its requests are told apart from the operator's in the emulator's audit log
UNSCHEDULABLE = f"0/3 nodes are available: 3 Insufficient {GPU}. preemption: 0/3 nodes are available."


def _replacing(current: Any, wanted: Any) -> Any:
    """The JSON merge patch that turns `current` into `wanted`: keys gone from a map become null (a plain merge
    would keep, e.g., the Serve deployment of a removed version forever)."""
    if not (isinstance(current, dict) and isinstance(wanted, dict)):
        return wanted
    gone = {k: None for k in current if k not in wanted}
    return {**gone, **{k: _replacing(current.get(k), v) for k, v in wanted.items()}}


def _asks_gpu(pod_spec: Obj) -> bool:
    return any(GPU in ((c.get("resources") or {}).get("limits") or {}) for c in pod_spec.get("containers", []))


class Follower:
    """A thread following one resource through list + watch, calling `seen(obj)` for each state it is in."""

    def __init__(self, http: httpx.Client, path: str, seen: Callable[[Obj], None]) -> None:
        self.http, self.path, self.seen = http, path, seen
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._follow()
            except (httpx.HTTPError, ValueError):
                self.stopped.wait(0.2)

    def _follow(self) -> None:
        listed = self.http.get(self.path)
        if listed.status_code == 404:  # the CRD is not served (yet): nothing to follow
            self.stopped.wait(0.5)
            return
        listed.raise_for_status()
        body = listed.json()
        for obj in body["items"]:
            self.seen(obj)
        params = {"watch": "true", "resourceVersion": body["metadata"]["resourceVersion"], "timeoutSeconds": "1"}
        while not self.stopped.is_set():
            with self.http.stream("GET", self.path, params=params) as stream:
                for line in stream.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        return  # expired: list again
                    obj = event["object"]
                    params["resourceVersion"] = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self.seen(obj)


class ClusterSimulator:
    def __init__(
        self, url: str, namespace: str | None = None, *, gpus: bool = True, plane: Any = None, delay_s: float = 0.0
    ) -> None:
        self.http = httpx.Client(base_url=url, headers={"User-Agent": AGENT}, timeout=30)
        self.ns, self.plane, self.delay_s = namespace, plane, delay_s
        self._gpus = gpus
        self.placed: dict[tuple[str, str], set[str]] = {}  # (ns, workload) -> versions that got their resources
        self.applied: dict[str, str] = {}  # RayService -> last ServingConfig JSON applied to the data plane
        self.errors: list[str] = []
        self.unloadable: set[str] = set()  # model URIs whose replicas never load (the Serve deployment fails)
        self._lock = threading.RLock()
        scope = f"/namespaces/{namespace}" if namespace else ""
        self._paths = {
            "rayservices": f"/apis/ray.io/v1{scope}/rayservices",
            "deployments": f"/apis/apps/v1{scope}/deployments",
        }
        self._followers = [
            Follower(self.http, self._paths["rayservices"], self._guarded(self._rayservice)),
            Follower(self.http, self._paths["deployments"], self._guarded(self._deployment)),
        ]

    @property
    def gpus(self) -> bool:
        return self._gpus

    @gpus.setter
    def gpus(self, free: bool) -> None:
        """GPUs taken (False) or free again (True): what waits for them is placed at once."""
        self._gpus = free
        if free:
            self.resync()

    def start(self) -> ClusterSimulator:
        for follower in self._followers:
            follower.start()
        return self

    def stop(self) -> None:
        for follower in self._followers:
            follower.stop()
        self.http.close()

    def __enter__(self) -> ClusterSimulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def resync(self) -> None:
        """Look at every object again (a controller's periodic resync), e.g. after `gpus` changed."""
        for kind, handle in (("rayservices", self._rayservice), ("deployments", self._deployment)):
            r = self.http.get(self._paths[kind])
            if r.status_code == 200:
                for obj in r.json().get("items", []):
                    self._guarded(handle)(obj)

    def _guarded(self, handle: Callable[[Obj], None]) -> Callable[[Obj], None]:
        def run(obj: Obj) -> None:
            try:
                with self._lock:
                    handle(obj)
            except Exception as exc:  # kept for the test to show; the stand-in keeps going like a controller
                self.errors.append(f"{type(exc).__name__}: {exc}")

        return run

    # -- KubeRay -----------------------------------------------------------------------------------------------
    def _rayservice(self, rs: Obj) -> None:
        meta = rs["metadata"]
        ns, name = meta["namespace"], meta["name"]
        serve = yaml.safe_load(rs["spec"].get("serveConfigV2") or "{}") or {}
        worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
        needs_gpu = _asks_gpu(worker.get("spec", {}))
        placed = self.placed.setdefault((ns, name), set())
        apps: Obj = {}
        waiting = False
        for app in serve.get("applications", []):
            deps: Obj = {d["name"]: {"status": "HEALTHY", "message": ""} for d in app.get("deployments", [])}
            deps[INGRESS_NAME] = {"status": "HEALTHY", "message": ""}
            for variant in ((app.get("args") or {}).get("config") or {}).get("variants", []):
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
            apps[app["name"]] = {"status": "RUNNING", "message": "", "serveDeploymentStatuses": deps}
            if self.plane is not None:
                self._apply_to_plane(name, app)
        status = {
            "serviceStatus": "Running",
            "observedGeneration": meta.get("generation", 1),
            "numServeEndpoints": 1,
            "activeServiceStatus": {
                "rayClusterName": f"{name}-raycluster-sim",
                "rayClusterStatus": {"state": "ready"},
                "applicationStatuses": apps,
            },
            "pendingServiceStatus": {},
        }
        current = rs.get("status") or {}
        if {k: current.get(k) for k in status} != status:
            if self.delay_s:
                time.sleep(self.delay_s)
            patch = {k: _replacing(current.get(k), v) for k, v in status.items()}  # other status keys stay
            path = f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{name}/status"
            self.http.patch(path, json={"status": patch}, headers=MERGE)
        if waiting:
            self._pending_pod(ns, f"{name}-models-worker-pending", worker.get("metadata", {}).get("labels", {}))

    def _apply_to_plane(self, name: str, app: Obj) -> None:
        ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
        config = ServingConfig.model_validate(ingress["user_config"]["config"])
        text = config.model_dump_json()
        if self.applied.get(name) != text:
            self.plane.update(config)
            self.applied[name] = text

    # -- kube-controller-manager + scheduler -----------------------------------------------------------------
    def _deployment(self, deploy: Obj) -> None:
        meta, spec = deploy["metadata"], deploy["spec"]
        ns, name = meta["namespace"], meta["name"]
        replicas = spec.get("replicas", 1)
        pod_spec = spec.get("template", {}).get("spec", {})
        if _asks_gpu(pod_spec) and not self.gpus and (ns, name) not in self.placed:
            self._pending_pod(ns, f"{name}-pending", spec.get("template", {}).get("metadata", {}).get("labels", {}))
            ready = 0
        else:
            self.placed.setdefault((ns, name), {"all"})
            ready = replicas
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": replicas,
        }
        if {k: (deploy.get("status") or {}).get(k) for k in status} != status:
            path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status"
            self.http.patch(path, json={"status": status}, headers=MERGE)

    def _pending_pod(self, ns: str, name: str, labels: Obj) -> None:
        path = f"/api/v1/namespaces/{ns}/pods"
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
def simulating(
    url: str, namespace: str | None = None, *, gpus: bool = True, plane: Any = None
) -> Iterator[ClusterSimulator]:
    """A started `ClusterSimulator` for a `with` block; always stopped."""
    with ClusterSimulator(url, namespace, gpus=gpus, plane=plane) as sim:
        yield sim
