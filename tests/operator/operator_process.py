"""What the restart, RBAC and scale runs need around a real `sluice operator` process against the API emulator.

- `OperatorProcess`: the operator as a subprocess (`python -m sluice.cli.main operator`), KUBECONFIG = the emulator,
  killable with SIGKILL at any point and started again; its log goes to a file so a killed run keeps it.
- `KubeRayStatus`: the stand-in for KubeRay, which cannot run here: it follows RayServices and writes the status
  KubeRay writes once the Serve applications in serveConfigV2 are up (every Serve deployment HEALTHY, app RUNNING).
- `RouterMetrics`: a Prometheus text endpoint per ModelDeployment in the router's metric names, with healthy traffic
  for both variants, or 5xx on the canary for the names in `bad`: analysis then passes or fails for real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from sluice.serving import metric_names as mn
from sluice.serving.ray.spec import INGRESS_NAME, deployment_name

REPO = Path(__file__).resolve().parents[2]
GROUP_VERSION = "sluice.dev/v1alpha1"
OPERATOR_AGENTS = ("sluice-operator", "kopf")  # User-Agent prefixes of the operator's own client and of Kopf's
SIMULATOR_AGENT = "kuberay-simulator/1"
TEST_AGENT = "sluice-tests/1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """One `sluice operator` subprocess at a time; `start()` again after `kill()` is a restart."""

    def __init__(self, kubeconfig: Path, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.log_dir = kubeconfig, log_dir
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.health_port = 0
        self.command = [sys.executable, "-m", "sluice.cli.main", "operator"]  # e.g. under cProfile for a benchmark

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.starts += 1
        self.health_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SLUICE_HEALTH_PORT": str(self.health_port),
            "SLUICE_METRICS_PORT": str(free_port()),
            "SLUICE_LOG_LEVEL": "info",
            "SLUICE_BIND_ADDRESS": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Alive and answering /healthz: past start-up, so a SIGTERM now meets the operator's own handlers."""
        if not self.alive():
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed — the harshest restart."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 20 s); the exit code, None if it never ran."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("operator-*.log"))
        )


class _Follower:
    """A thread following one resource through list+watch (all namespaces), calling `seen(obj)` for each state."""

    def __init__(self, base: str, path: str, seen: Callable[[dict[str, Any]], None], agent: str) -> None:
        self.base, self.path, self.seen, self.agent = base, path, seen, agent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, headers={"User-Agent": self.agent}, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    self._follow(http)
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.2)

    def _follow(self, http: httpx.Client) -> None:
        listed = http.get(self.path)
        if listed.status_code == 404:  # the CRD is not served (yet): nothing to follow
            time.sleep(0.5)
            return
        listed.raise_for_status()
        body = listed.json()
        for obj in body["items"]:
            self.seen(obj)
        rv = body["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "1"}
        while not self._stop.is_set():
            with http.stream("GET", self.path, params=params) as stream:
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


def kuberay_status(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The status KubeRay v1 writes when every Serve application of serveConfigV2 runs healthy."""
    config = yaml.safe_load(rayservice.get("spec", {}).get("serveConfigV2") or "{}") or {}
    applications = {}
    for app in config.get("applications", []):
        deployments = {INGRESS_NAME}
        variants = ((app.get("args") or {}).get("config") or {}).get("variants", [])
        deployments |= {deployment_name(v["version"]) for v in variants}
        deployments |= {d["name"] for d in app.get("deployments", [])}
        applications[app["name"]] = {
            "status": "RUNNING",
            "message": "",
            "serveDeploymentStatuses": {d: {"status": "HEALTHY", "message": ""} for d in sorted(deployments)},
        }
    name = rayservice["metadata"]["name"]
    return {
        "serviceStatus": "Running",
        "observedGeneration": rayservice["metadata"].get("generation", 1),
        "numServeEndpoints": 1,
        "activeServiceStatus": {
            "rayClusterName": f"{name}-raycluster-sim",
            "rayClusterStatus": {"state": "ready"},
            "applicationStatuses": applications,
        },
        "pendingServiceStatus": {},
    }


class KubeRayStatus:
    """Marks every RayService healthy as KubeRay would, once per new generation / serveConfigV2."""

    PATH = "/apis/ray.io/v1/rayservices"

    def __init__(self, base: str, delay_s: float = 0.0) -> None:
        self.base, self.delay_s = base, delay_s
        self._http = httpx.Client(base_url=base, headers={"User-Agent": SIMULATOR_AGENT}, timeout=30)
        self._follower = _Follower(base, self.PATH, self._seen, SIMULATOR_AGENT)
        self._lock = threading.Lock()

    def __enter__(self) -> KubeRayStatus:
        self._follower.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._follower.stop()
        self._http.close()

    def _seen(self, obj: dict[str, Any]) -> None:
        wanted = kuberay_status(obj)
        status = obj.get("status") or {}
        if (
            status.get("observedGeneration") == wanted["observedGeneration"]
            and status.get("activeServiceStatus", {}).get("applicationStatuses")
            == wanted["activeServiceStatus"]["applicationStatuses"]
        ):
            return
        meta = obj["metadata"]
        if self.delay_s:
            time.sleep(self.delay_s)
        path = f"/apis/ray.io/v1/namespaces/{meta['namespace']}/rayservices/{meta['name']}/status"
        with self._lock:
            self._http.patch(
                path, content=json.dumps({"status": wanted}), headers={"Content-Type": "application/merge-patch+json"}
            )


class RouterMetrics:
    """Router /metrics per ModelDeployment at `/{namespace}/{name}/metrics` (the model is named like the MD).

    Each scrape adds 200 requests per variant (all answered in ~4 ms); for names in `bad` half the canary's are 500s.
    """

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self._scrapes: dict[str, int] = {}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[2] != "metrics":
                    self.send_error(404)
                    return
                body = outer.text(parts[1]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="router-metrics", daemon=True)
        self.url_format = f"http://127.0.0.1:{self._server.server_address[1]}/{{namespace}}/{{name}}/metrics"

    def __enter__(self) -> RouterMetrics:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def text(self, model: str) -> str:
        with self._lock:
            n = self._scrapes[model] = self._scrapes.get(model, 0) + 1
        total = 200 * n
        lines = [f"# TYPE {mn.REQUESTS_TOTAL} counter", f"# TYPE {mn.REQUEST_DURATION_SECONDS} histogram"]
        for variant in ("stable", "canary"):
            labels = f'model="{model}",version="x",variant="{variant}"'
            errors = total // 2 if variant == "canary" and model in self.bad else 0
            lines.append(f'{mn.REQUESTS_TOTAL}{{{labels},code="200"}} {total - errors}')
            lines.append(f'{mn.REQUESTS_TOTAL}{{{labels},code="500"}} {errors}')
            for le in mn.LATENCY_BUCKETS:
                count = total if le >= 0.005 else 0
                lines.append(f'{mn.REQUEST_DURATION_SECONDS}_bucket{{{labels},le="{le}"}} {count}')
            lines.append(f'{mn.REQUEST_DURATION_SECONDS}_bucket{{{labels},le="+Inf"}} {total}')
            lines.append(f"{mn.REQUEST_DURATION_SECONDS}_count{{{labels}}} {total}")
            lines.append(f"{mn.REQUEST_DURATION_SECONDS}_sum{{{labels}}} {total * 0.004}")
        return "\n".join(lines) + "\n"


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` (and the last value) on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


def model_deployment(name: str, version: str, steps: list[int], *, interval: str = "1s") -> dict[str, Any]:
    """A small ray-backend ModelDeployment whose canary walks `steps` with 1 s pauses."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "backend": "ray",
            "model": {"name": name, "uri": f"s3://models/{name}/{version}.onnx", "version": version},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "rollout": {
                "strategy": "canary",
                "canary": {"steps": [{"weight": w, "pause": {"duration": "1s"}} for w in steps]},
            },
            "analysis": {"interval": interval, "failureThreshold": 1, "minRequests": 10},
        },
    }


def iter_statuses(history: list[tuple[str, dict[str, Any]]], namespace: str, name: str) -> Iterator[dict[str, Any]]:
    for _, obj in history:
        if obj["metadata"].get("namespace") == namespace and obj["metadata"]["name"] == name:
            yield obj.get("status") or {}
