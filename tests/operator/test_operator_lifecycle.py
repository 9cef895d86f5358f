"""`sluice operator` against the API emulator: create → RayService + status, Events, columns, idempotency, commands.

The operator runs as a subprocess (the real CLI); the simulator stands in for KubeRay (tests/support/simulator.py).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support import wait_for
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import Cluster, OperatorProcess, example, operator_env

Obj = dict[str, Any]


def phase_is(cluster: Cluster, name: str, phase: str) -> bool:
    return cluster.status(name).get("phase") == phase


def gated(doc: Obj, version: str, uri: str) -> Obj:
    """`doc` with a new model version and a canary of two manual gates (no analysis needed to move)."""
    out = copy.deepcopy(doc)
    out["spec"]["model"].update(version=version, uri=uri)
    out["spec"]["rollout"] = {
        "strategy": "canary",
        "canary": {"steps": [{"weight": 20, "pause": {}}, {"weight": 60, "pause": {}}]},
    }
    out["spec"]["analysis"] = {"interval": "10m", "progressDeadline": "30m"}
    return out


def test_create_runs_to_stable_with_owned_child_events_columns_and_no_idle_writes(
    cluster: Cluster,
    operator: OperatorProcess,
    simulator: Any,
    kube_emulator: EmulatorThread,
    kubeconfig: Path,
) -> None:
    md = cluster.apply_md(example("01-canary-good.yaml")[0])
    rs = wait_for("the RayService", lambda: cluster.rayservice("fraud"))
    [ref] = rs["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "ModelDeployment",
        "fraud",
        md["metadata"]["uid"],
        True,
    )
    assert rs["metadata"]["labels"]["sluice.dev/model-deployment"] == "fraud"
    assert rs["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sluice-operator"
    assert cluster.weights("fraud") == {"v1": 100}

    wait_for("phase Stable", lambda: phase_is(cluster, "fraud", "Stable"))
    status = cluster.status("fraud")
    assert status["stable"]["version"] == "v1"
    ready = cluster.condition("fraud", "Ready")
    assert ready is not None
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    assert cluster.condition("fraud", "SpecValid")["status"] == "True"  # type: ignore[index]
    events = cluster.events("fraud")
    assert [e["reason"] for e in events] == ["Initializing", "Initialized"]
    for e in events:
        assert e["involvedObject"]["uid"] == md["metadata"]["uid"]
        assert e["source"]["component"] == "sluice-operator"
        assert e["metadata"]["name"].startswith("fraud.")
    live = cluster.md("fraud")
    assert live is not None
    assert "sluice.dev/finalizer" in live["metadata"]["finalizers"]
    assert not [k for k in live["metadata"].get("annotations", {}) if "kopf.zalando.org" in k]

    shown = subprocess.run(
        ["kubectl", "get", "modeldeployments", "-n", cluster.ns, "--no-headers"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert shown[:4] == ["fraud", "Stable", "v1", "<none>"], shown

    before = kube_emulator.emulator.writes
    time.sleep(3)
    assert kube_emulator.emulator.writes == before, "a quiet ModelDeployment must cause no writes"

    cluster.delete_md("fraud")
    wait_for("the finalizer to be released", lambda: cluster.md("fraud") is None)
    assert operator.alive()
    assert operator.stop() == 0
    assert "Traceback" not in operator.log


def test_spec_change_walks_canary_steps_and_obeys_promote_and_abort(
    cluster: Cluster, operator: OperatorProcess, simulator: Any
) -> None:
    v1 = example("01-canary-good.yaml")[0]
    cluster.apply_md(v1)
    wait_for("phase Stable", lambda: phase_is(cluster, "fraud", "Stable"))

    cluster.apply_md(gated(v1, "v2", "file:models/fraud-v2.onnx"))
    wait_for("the first gate", lambda: phase_is(cluster, "fraud", "Paused"))
    assert cluster.weights("fraud") == {"v1": 80, "v2": 20}
    assert cluster.status("fraud")["canaryWeight"] == 20

    cluster.annotate("fraud", "sluice.dev/command", "promote:1")
    wait_for("step 1 at 60%", lambda: cluster.status("fraud").get("canaryWeight") == 60)
    assert cluster.weights("fraud") == {"v1": 40, "v2": 60}
    cluster.annotate("fraud", "sluice.dev/command", "promote:2")
    wait_for("the promotion", lambda: phase_is(cluster, "fraud", "Succeeded"))
    assert cluster.weights("fraud") == {"v2": 100}
    assert cluster.status("fraud")["stable"]["version"] == "v2"

    cluster.apply_md(gated(v1, "v3", "file:models/fraud-v1.onnx"))
    wait_for("the v3 gate", lambda: phase_is(cluster, "fraud", "Paused"))
    assert cluster.weights("fraud") == {"v2": 80, "v3": 20}
    cluster.annotate("fraud", "sluice.dev/command", "abort:3")
    wait_for("the abort", lambda: phase_is(cluster, "fraud", "Aborted"))
    assert cluster.weights("fraud") == {"v2": 100}
    reasons = cluster.event_reasons("fraud")
    for reason in ("RolloutStarted", "CanaryReady", "GatePassed", "Promoting", "Promoted", "Aborted"):
        assert reason in reasons, reasons
    assert operator.alive()
    assert "Traceback" not in operator.log


def test_metrics_count_reconciles_and_phases(cluster: Cluster, operator: OperatorProcess, simulator: Any) -> None:
    cluster.apply_md(example("01-canary-good.yaml")[0])
    wait_for("phase Stable", lambda: phase_is(cluster, "fraud", "Stable"))

    def scraped() -> str:
        text = httpx.get(operator.metrics_url, timeout=5).text
        return text if 'sluice_operator_model_deployments{phase="Stable"} 1.0' in text else ""

    text = wait_for("the Stable phase in /metrics", scraped)
    ok = next(line for line in text.splitlines() if line.startswith('sluice_operator_reconciles_total{outcome="ok"}'))
    assert float(ok.split()[-1]) >= 2
    assert httpx.get(operator.health_url, timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SLUICE_METRICS_PORT", "http"), ("SLUICE_GPU_NODE_SELECTOR", "{gpu"), ("SLUICE_POLL_SECONDS", "-1")],
)
def test_bad_setting_exits_2_naming_it(variable: str, value: str, kubeconfig: Path) -> None:
    env = {**operator_env(kubeconfig), variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "sluice.cli.main", "operator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_triton_backend_gets_a_deployment_per_version_and_loses_the_aborted_one(
    cluster: Cluster, operator: OperatorProcess, simulator: Any
) -> None:
    v1 = copy.deepcopy(example("01-canary-good.yaml")[0])
    v1["spec"]["backend"] = "triton"
    md = cluster.apply_md(v1)
    wait_for("phase Stable", lambda: phase_is(cluster, "fraud", "Stable"))

    def deployments() -> set[str]:
        return {d["metadata"]["name"] for d in cluster.items("/apis/apps/v1/namespaces/{ns}/deployments")}

    assert deployments() == {"fraud-v1", "fraud-router"}
    for d in cluster.items("/apis/apps/v1/namespaces/{ns}/deployments"):
        assert d["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    cluster.apply_md(gated(v1, "v2", "file:models/fraud-v2.onnx"))
    wait_for("the first gate", lambda: phase_is(cluster, "fraud", "Paused"))
    assert deployments() == {"fraud-v1", "fraud-v2", "fraud-router"}
    cluster.annotate("fraud", "sluice.dev/command", "abort:1")
    wait_for("the abort", lambda: phase_is(cluster, "fraud", "Aborted"))
    wait_for("the aborted version's Deployment to go", lambda: deployments() == {"fraud-v1", "fraud-router"})
    assert "Traceback" not in operator.log
