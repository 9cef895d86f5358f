"""A full rollout decided by real metrics: operator → RayService → (simulated KubeRay) → real router and models.

The simulator applies each RayService's ingress user_config to a local Sluice data plane (ONNX backend, the example
models), a load thread sends requests to it, and the operator's builtin provider reads that router's /metrics.
So every weight the operator writes is served, and every verdict comes from real traffic.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support import wait_for
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import EXAMPLES, Cluster, example, running_operator
from tests.support.simulator import simulating

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.engine.routing import Routing, serving_config
from sluice.rollout.core import version_ref
from sluice.serving.launch import start_data_plane

RPS = 60.0


class Load:
    """Requests at a steady rate from a thread until stopped; counts 5xx and transport errors."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(7)
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(1.0 / RPS):
                row = rng.standard_normal(size=(1, 4)).astype(np.float32)
                body = {
                    "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": row.ravel().tolist()}]
                }
                try:
                    self.failed += http.post(f"{self.url}/v2/models/{self.model}/infer", json=body).status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                self.sent += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def plane() -> Iterator[Any]:
    first = ModelDeploymentSpec.model_validate(example("01-canary-good.yaml")[0]["spec"])
    started = start_data_plane(serving_config(first, Routing(stable=version_ref(first.model))), "onnx", EXAMPLES)
    try:
        yield started
    finally:
        started.stop()


def fast(doc: dict[str, Any]) -> dict[str, Any]:
    """The example's rollout with a 3 s analysis interval, so the whole rollout takes seconds."""
    out = copy.deepcopy(doc)
    out["spec"]["analysis"]["interval"] = "3s"
    return out


@pytest.mark.parametrize(
    ("manifest", "phase", "stable"),
    [("01-canary-good.yaml", "Succeeded", "v2"), ("02-canary-bad.yaml", "RolledBack", "v1")],
)
def test_full_rollout_is_decided_by_the_routers_metrics(
    manifest: str,
    phase: str,
    stable: str,
    plane: Any,
    cluster: Cluster,
    kube_emulator: EmulatorThread,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    v1, v2 = example(manifest)
    env = {"SLUICE_ROUTER_METRICS_URL": plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=plane) as sim,
    ):
        cluster.apply_md(v1)
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        with Load(plane.url, "fraud") as load:
            cluster.apply_md(fast(v2))
            wait_for("the first step", lambda: cluster.status("fraud").get("canaryWeight") == 25, timeout_s=20)
            done = wait_for(
                "the rollout's end",
                lambda: cluster.status("fraud").get("phase") in ("Succeeded", "RolledBack", "Failed", "Aborted"),
                timeout_s=60,
            )
            assert done
            status = cluster.status("fraud")
            assert status["phase"] == phase, status
            assert status["stable"]["version"] == stable
            assert status["canaryWeight"] == 0
            assert sim.errors == []
            assert sim.applied["fraud"]  # the data plane served what the operator wrote
            assert load.failed == 0, (load.failed, load.sent)
            reasons = cluster.event_reasons("fraud")
            if phase == "Succeeded":
                assert "StepAdvanced" in reasons
                assert "Promoted" in reasons
                served = {"v2": 100}
            else:
                assert "drift" in status["history"][0]["reason"]
                assert any(e["reason"] == "AnalysisFailed" and "drift" in e["message"] for e in cluster.events("fraud"))
                served = {"v1": 100}
            wait_for(f"the data plane to serve {served}", lambda: plane_weights(sim.applied["fraud"]) == served, 10)
            assert "Traceback" not in operator.log


def plane_weights(config_json: str) -> dict[str, int]:
    import json

    return {v["version"]: v["weight"] for v in json.loads(config_json)["variants"]}
