"""Run `sluice operator` in a subprocess against the API emulator, and talk to the emulator as a user would.

`running_operator(...)` starts the real CLI with KUBECONFIG pointing at the emulator, waits for /healthz, and
always stops it (SIGTERM, then SIGKILL after 20 s); its log is kept for assertions ("Traceback" absent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.kube.emulator import EmulatorThread
from tests.operator import operator_process
from tests.operator.simulator import Simulator, simulating

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "manifests" / "examples"
MD_PATH = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/modeldeployments"
RAY_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayservices"
MERGE = {"Content-Type": "application/merge-patch+json"}
Obj = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until `condition()` is truthy; returns its value or fails naming `what`."""
    return operator_process.wait_for(what, condition, timeout, interval)


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str
    metrics_url: str
    returncode: int | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.returncode = self.process.returncode
        return self.returncode


def operator_env(kubeconfig: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "SLUICE_BIND_ADDRESS": "127.0.0.1",
            "SLUICE_HEALTH_PORT": str(free_port()),
            "SLUICE_METRICS_PORT": str(free_port()),
            "SLUICE_POLL_SECONDS": "0.5",
            "SLUICE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, log_dir: Path, namespaces: tuple[str, ...] = (), env: Mapping[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """`sluice operator --namespace NS...` until the block ends; always stopped, even when the block fails."""
    full_env = operator_env(kubeconfig, env)
    log_path = log_dir / f"operator-{uuid.uuid4().hex[:6]}.log"
    command = [sys.executable, "-m", "sluice.cli.main", "operator"]
    for ns in namespaces:
        command += ["--namespace", ns]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    handle = OperatorProcess(
        process,
        log_path,
        f"http://127.0.0.1:{full_env['SLUICE_HEALTH_PORT']}/healthz",
        f"http://127.0.0.1:{full_env['SLUICE_METRICS_PORT']}/metrics",
    )
    try:
        wait_for(lambda: _answers(handle.health_url) or not handle.alive(), "the operator's /healthz", timeout=30)
        assert handle.alive(), handle.log
        yield handle
    finally:
        handle.stop()
        print(f"--- operator log ({log_path}) ---\n{handle.log[-20000:]}")  # shown when a test fails


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


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

    def events(self, name: str) -> list[Obj]:
        """core/v1 Events about the ModelDeployment `name`, oldest first."""
        items = [e for e in self.items("/api/v1/namespaces/{ns}/events") if e["involvedObject"]["name"] == name]
        return sorted(items, key=lambda e: e["metadata"].get("creationTimestamp", ""))

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]


def example(name: str) -> list[Obj]:
    """The documents of manifests/examples/<name>.yaml."""
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


# -- pytest fixtures (imported by conftest.py) ---------------------------------------------------------------------


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
def simulator(kube_emulator: EmulatorThread, cluster: Cluster) -> Iterator[Simulator]:
    with simulating(kube_emulator.url, cluster.ns) as sim:
        yield sim
