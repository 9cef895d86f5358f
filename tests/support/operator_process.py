"""`sluice operator` as a subprocess against the API emulator, and the emulator as a user sees it.

- `OperatorProcess`: the real CLI (`python -m sluice.cli.main operator`) with KUBECONFIG = the emulator; its log goes
  to a file so a killed run keeps it; `kill()` is a SIGKILL at any point and `start()` again is a restart.
- `running_operator(...)`: one started process for a `with` block: waits for /healthz, always stopped.
- `Cluster`: what a user does with kubectl, over HTTP to the emulator (one namespace per test).
- Fixtures (registered by tests/conftest.py): `warm_emulator`, `cluster`, `operator`, `simulator`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support import free_port, wait_for
from tests.support.emulator import EmulatorThread
from tests.support.simulator import ClusterSimulator, simulating

from sluice.serving.ray.spec import INGRESS_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "manifests" / "examples"
GROUP_VERSION = "sluice.dev/v1alpha1"
MD_PATH = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/modeldeployments"
RAY_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayservices"
MERGE = {"Content-Type": "application/merge-patch+json"}
OPERATOR_AGENTS = ("sluice-operator", "kopf")  # User-Agent prefixes of the operator's own client and of Kopf's
TEST_AGENT = "sluice-tests/1"
Obj = dict[str, Any]


def operator_env(kubeconfig: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any SLUICE_* setting of the caller's shell, bound to `kubeconfig`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "SLUICE_BIND_ADDRESS": "127.0.0.1",
            "SLUICE_HEALTH_PORT": str(free_port()),
            "SLUICE_METRICS_PORT": str(free_port()),
            "SLUICE_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class OperatorProcess:
    """One `sluice operator` subprocess at a time; `start()` again after `kill()` or `stop()` is a restart."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig, self.log_dir = kubeconfig, log_dir
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.health_url = self.metrics_url = ""
        self.log_path = log_dir / "operator-0.log"
        # Replaceable before start(), e.g. to run the operator under cProfile for a benchmark.
        self.command = [sys.executable, "-m", "sluice.cli.main", "operator"]
        for ns in namespaces:
            self.command += ["--namespace", ns]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def start(self) -> None:
        self.starts += 1
        env = operator_env(self.kubeconfig, self.extra_env)
        self.health_url = f"http://127.0.0.1:{env['SLUICE_HEALTH_PORT']}/healthz"
        self.metrics_url = f"http://127.0.0.1:{env['SLUICE_METRICS_PORT']}/metrics"
        self.log_path = self.log_dir / f"operator-{uuid.uuid4().hex[:6]}-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Alive and answering /healthz: past start-up, so a SIGTERM now meets the operator's own handlers."""
        if not self.alive():
            return False
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed — the harshest restart."""
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout_s`); the exit code, None if it never ran."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    @property
    def log(self) -> str:
        """The log of the latest start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self) -> str:
        """Every start's log, oldest first."""
        paths = sorted(self.log_dir.glob("operator-*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in paths)


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, log_dir: Path, namespaces: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """`sluice operator --namespace NS...` (polling every 0.5 s) until the block ends; always stopped."""
    handle = OperatorProcess(kubeconfig, log_dir, {"SLUICE_POLL_SECONDS": "0.5", **(env or {})}, namespaces)
    handle.start()
    try:
        wait_for("the operator's /healthz", lambda: handle.healthy() or not handle.alive(), 30)
        assert handle.alive(), handle.log
        yield handle
    finally:
        handle.stop()
        print(f"--- operator log ({handle.log_path}) ---\n{handle.log[-20000:]}")  # shown when a test fails


class Cluster:
    """What a user does with kubectl, over HTTP to the emulator (one namespace per test)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.ns = namespace

    def close(self) -> None:
        self.http.close()

    def create_namespace(self) -> None:
        r = self.http.post("/api/v1/namespaces", json={"metadata": {"name": self.ns}})
        assert r.status_code == 201, r.text

    def delete_namespace(self) -> None:
        self.http.delete(f"/api/v1/namespaces/{self.ns}")

    # -- ModelDeployments --------------------------------------------------------------------------------------
    def apply_md(self, doc: Obj) -> Obj:
        """Create the ModelDeployment, or replace its spec (as `kubectl apply` of a new version would)."""
        name = doc["metadata"]["name"]
        url = MD_PATH.format(ns=self.ns)
        live = self.http.get(f"{url}/{name}")
        if live.status_code == 404:
            r = self.http.post(url, json={**doc, "metadata": {**doc["metadata"], "namespace": self.ns}})
            assert r.status_code == 201, r.text
            return dict(r.json())
        r = self.http.put(f"{url}/{name}", json={**live.json(), "spec": doc["spec"]})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def md(self, name: str) -> Obj | None:
        r = self.http.get(f"{MD_PATH.format(ns=self.ns)}/{name}")
        return None if r.status_code == 404 else dict(r.json())

    def status(self, name: str) -> Obj:
        obj = self.md(name)
        return dict((obj or {}).get("status") or {})

    def condition(self, name: str, type_: str) -> Obj | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def annotate(self, name: str, key: str, value: str) -> None:
        r = self.http.patch(
            f"{MD_PATH.format(ns=self.ns)}/{name}", json={"metadata": {"annotations": {key: value}}}, headers=MERGE
        )
        assert r.status_code == 200, r.text

    def delete_md(self, name: str) -> None:
        self.http.delete(f"{MD_PATH.format(ns=self.ns)}/{name}")

    # -- other objects -----------------------------------------------------------------------------------------
    def get(self, path: str) -> Obj | None:
        r = self.http.get(path.format(ns=self.ns))
        return None if r.status_code == 404 else dict(r.json())

    def items(self, path: str) -> list[Obj]:
        return list((self.get(path) or {}).get("items", []))

    def rayservice(self, name: str) -> Obj | None:
        return self.get(f"{RAY_PATH}/{name}")

    def weights(self, name: str) -> dict[str, int]:
        """version -> weight in the RayService's ingress user_config (what Serve routes by)."""
        rs = self.rayservice(name)
        assert rs is not None
        app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
        ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
        return {v["version"]: v["weight"] for v in ingress["user_config"]["config"]["variants"]}

    def events(self, name: str) -> list[Obj]:
        """core/v1 Events about the ModelDeployment `name`, oldest first."""
        items = [e for e in self.items("/api/v1/namespaces/{ns}/events") if e["involvedObject"]["name"] == name]
        return sorted(items, key=lambda e: e["metadata"].get("creationTimestamp", ""))

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]


def example(name: str) -> list[Obj]:
    """The documents of manifests/examples/<name>.yaml."""
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def model_deployment(name: str, version: str, steps: list[int], *, interval: str = "1s") -> Obj:
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


def iter_statuses(history: list[tuple[str, Obj]], namespace: str, name: str) -> Iterator[Obj]:
    """The statuses one ModelDeployment went through, from the emulator's watch history."""
    for _, obj in history:
        if obj["metadata"].get("namespace") == namespace and obj["metadata"]["name"] == name:
            yield obj.get("status") or {}


def ray_service_sample() -> Obj:
    """A RayService as the operator renders it for the 01 example (its v1)."""
    from sluice.api.model_deployment import ModelDeploymentSpec
    from sluice.engine.routing import Routing
    from sluice.operator.config import OperatorConfig
    from sluice.operator.render import Desired, Owner
    from sluice.operator.render.ray import RayRenderer
    from sluice.rollout.core import version_ref

    spec = ModelDeploymentSpec.model_validate(example("01-canary-good.yaml")[0]["spec"])
    ref = version_ref(spec.model)
    desired = Desired(Routing(stable=ref), (ref,))
    [rs] = RayRenderer().children(Owner("warm-up", "default", "0"), spec, desired, OperatorConfig())
    return rs


# -- pytest fixtures (registered by tests/conftest.py) -------------------------------------------------------------


@pytest.fixture(scope="session")
def warm_emulator(kube_emulator: EmulatorThread) -> None:
    """The emulator's first RayService write compiles KubeRay's large schema (~10 s on 2 cores); pay it once, here,
    with a dry-run create, so that no test's timing includes it."""
    r = httpx.post(
        f"{kube_emulator.url}/apis/ray.io/v1/namespaces/default/rayservices?dryRun=All",
        json=ray_service_sample(),
        timeout=120,
    )
    assert r.status_code == 201, r.text


@pytest.fixture
def cluster(kube_emulator: EmulatorThread, warm_emulator: None) -> Iterator[Cluster]:
    """A fresh namespace on the shared emulator, deleted afterwards."""
    c = Cluster(kube_emulator.url, f"op-{uuid.uuid4().hex[:8]}")
    c.create_namespace()
    try:
        yield c
    finally:
        c.delete_namespace()
        c.close()


@pytest.fixture
def operator(kubeconfig: Path, cluster: Cluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """`sluice operator --namespace <the test's namespace>`; the test may stop it itself to check the exit."""
    with running_operator(kubeconfig, tmp_path, (cluster.ns,)) as process:
        yield process


@pytest.fixture
def simulator(kube_emulator: EmulatorThread, cluster: Cluster) -> Iterator[ClusterSimulator]:
    """KubeRay, the Deployment controller and the scheduler for the test's namespace."""
    with simulating(kube_emulator.url, cluster.ns) as sim:
        yield sim
