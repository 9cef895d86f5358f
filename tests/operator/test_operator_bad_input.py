"""Bad input ends in a condition and an Event naming the field: no crash loop, no retry storm, stable keeps serving.

Also the GPU case: a canary that cannot be scheduled is reported (InsufficientGPU) and never takes stable's share.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support import free_port, wait_for
from tests.support.emulator import EmulatorThread, SluiceKubeEmulator, load_crd_files
from tests.support.kube import SLUICE_CRDS
from tests.support.operator_process import Cluster, OperatorProcess, example, running_operator
from tests.support.simulator import ClusterSimulator

Obj = dict[str, Any]


def stable_v1(cluster: Cluster, doc: Obj | None = None) -> Obj:
    md = cluster.apply_md(doc or example("01-canary-good.yaml")[0])
    wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
    return md


def with_model(doc: Obj, version: str, uri: str, **spec: Any) -> Obj:
    out = copy.deepcopy(doc)
    out["spec"]["model"].update(version=version, uri=uri)
    out["spec"].update(spec)
    return out


def condition(cluster: Cluster, type_: str, status: str) -> Obj | None:
    found = cluster.condition("fraud", type_)
    return found if found is not None and found["status"] == status else None


def test_spec_refused_by_the_models_but_admitted_by_the_server_is_reported_by_field(
    cluster: Cluster, operator: OperatorProcess, simulator: ClusterSimulator, kube_emulator: EmulatorThread
) -> None:
    v1 = example("01-canary-good.yaml")[0]
    stable_v1(cluster, v1)
    bad = with_model(v1, "v2", "file:models/fraud-v2.onnx")
    bad["spec"]["analysis"] = {"checks": [{"name": "agree", "type": "shadow-disagreement", "max": 0.1}]}
    # A server that does not enforce CRD validation rules (CEL off, as before Kubernetes 1.25) admits it.
    rules = kube_emulator.call(lambda: kube_emulator.emulator._cel)
    kube_emulator.call(lambda: setattr(kube_emulator.emulator, "_cel", None))
    try:
        cluster.apply_md(bad)
        found = wait_for("SpecValid=False", lambda: condition(cluster, "SpecValid", "False"))
    finally:
        kube_emulator.call(lambda: setattr(kube_emulator.emulator, "_cel", rules))
    assert "spec.analysis.checks[0].type" in found["message"], found
    assert found["observedGeneration"] == 2
    warnings = [e for e in cluster.events("fraud") if e["reason"] == "InvalidSpec"]
    assert len(warnings) == 1
    assert warnings[0]["type"] == "Warning"
    assert "spec.analysis.checks[0].type" in warnings[0]["message"]
    time.sleep(2)
    assert len([e for e in cluster.events("fraud") if e["reason"] == "InvalidSpec"]) == 1  # no event storm
    assert cluster.status("fraud")["phase"] == "Stable"
    assert cluster.weights("fraud") == {"v1": 100}

    cluster.apply_md(with_model(v1, "v2", "file:models/fraud-v2.onnx"))  # fixed: the rollout starts
    wait_for("SpecValid=True after the fix", lambda: condition(cluster, "SpecValid", "True"))
    wait_for("the v2 rollout", lambda: cluster.status("fraud").get("canary", {}).get("version") == "v2")
    assert operator.alive()
    assert "Traceback" not in operator.log


def test_unreachable_model_uri_is_named_and_nothing_is_deployed(
    cluster: Cluster, operator: OperatorProcess, simulator: ClusterSimulator
) -> None:
    v1 = example("01-canary-good.yaml")[0]
    stable_v1(cluster, v1)
    uri = f"http://127.0.0.1:{free_port()}/models/fraud-v2.onnx"  # nothing listens there
    cluster.apply_md(with_model(v1, "v2", uri))
    found = wait_for("ModelReachable=False", lambda: condition(cluster, "ModelReachable", "False"))
    assert f"spec.model.uri {uri}" in found["message"]
    events = [e for e in cluster.events("fraud") if e["reason"] == "ModelUnreachable"]
    assert len(events) == 1
    assert "spec.model.uri" in events[0]["message"]
    time.sleep(2)
    assert len([e for e in cluster.events("fraud") if e["reason"] == "ModelUnreachable"]) == 1
    assert cluster.weights("fraud") == {"v1": 100}
    assert cluster.status("fraud")["stable"]["version"] == "v1"
    assert operator.alive()
    assert "Traceback" not in operator.log


def test_unloadable_model_rolls_back_at_the_progress_deadline_naming_the_uri(
    cluster: Cluster, operator: OperatorProcess, simulator: ClusterSimulator
) -> None:
    v1 = example("01-canary-good.yaml")[0]
    stable_v1(cluster, v1)
    uri = "file:models/fraud-v2-corrupt.onnx"
    simulator.unloadable.add(uri)
    cluster.apply_md(with_model(v1, "v2", uri, analysis={"interval": "10m", "progressDeadline": "3s"}))
    wait_for("the rollback", lambda: cluster.status("fraud").get("phase") == "RolledBack", timeout_s=30)
    event = next(e for e in cluster.events("fraud") if e["reason"] == "ProgressDeadlineExceeded")
    assert f"spec.model.uri {uri}" in event["message"], event["message"]
    assert "cannot load model" in event["message"]
    assert cluster.weights("fraud") == {"v1": 100}
    assert "Traceback" not in operator.log


@pytest.fixture
def no_ray_emulator() -> Iterator[EmulatorThread]:
    """An API server with the Sluice CRDs but without KubeRay's."""
    emulator = SluiceKubeEmulator(cel_rules=False)
    for crd in load_crd_files(sorted(SLUICE_CRDS.glob("*.yaml"))):
        emulator.register_crd(crd)
    thread = EmulatorThread(emulator)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def test_missing_backend_crd_is_reported_without_a_crash_loop(no_ray_emulator: EmulatorThread, tmp_path: Path) -> None:
    kubeconfig = no_ray_emulator.write_kubeconfig(tmp_path / "kubeconfig")
    cluster = Cluster(no_ray_emulator.url, "no-ray")
    cluster.create_namespace()
    try:
        with running_operator(kubeconfig, tmp_path, ("no-ray",)) as operator:
            cluster.apply_md(example("01-canary-good.yaml")[0])
            found = wait_for("BackendAvailable=False", lambda: condition(cluster, "BackendAvailable", "False"))
            assert "spec.backend=ray" in found["message"]
            assert "RayService" in found["message"]
            time.sleep(3)
            events = [e for e in cluster.events("fraud") if e["reason"] == "BackendNotInstalled"]
            assert len(events) == 1, events
            assert "spec.backend=ray" in events[0]["message"]
            assert operator.alive()
            assert operator.stop() == 0
            assert "Traceback" not in operator.log
    finally:
        cluster.close()


def test_canary_without_gpus_is_reported_and_keeps_no_traffic(
    cluster: Cluster, operator: OperatorProcess, simulator: ClusterSimulator
) -> None:
    v1 = copy.deepcopy(example("01-canary-good.yaml")[0])
    v1["spec"]["resources"] = {"gpu": 1}
    stable_v1(cluster, v1)
    cluster_config = cluster.rayservice("fraud")["spec"]["rayClusterConfig"]  # type: ignore[index]
    simulator.gpus = False  # the GPUs are all taken now
    cluster.apply_md(with_model(v1, "v2", "file:models/fraud-v2.onnx"))
    found = wait_for("InsufficientGPU=True", lambda: condition(cluster, "InsufficientGPU", "True"))
    assert "nvidia.com/gpu" in found["message"]
    assert "canary v2" in found["message"]
    time.sleep(2)
    status = cluster.status("fraud")
    assert (status["phase"], status["canaryWeight"]) == ("Progressing", 0)
    assert cluster.weights("fraud") == {"v1": 100, "v2": 0}
    assert cluster.rayservice("fraud")["spec"]["rayClusterConfig"] == cluster_config  # type: ignore[index]
    assert cluster.condition("fraud", "Ready")["status"] == "True"  # type: ignore[index]

    simulator.gpus = True  # capacity is back: the canary starts and gets its first step (default steps: 10%)
    wait_for("the first step once GPUs are free", lambda: cluster.status("fraud").get("canaryWeight") == 10)
    wait_for("InsufficientGPU=False", lambda: condition(cluster, "InsufficientGPU", "False"))
    cluster.delete_md("fraud")
    wait_for("the finalizer to be released", lambda: cluster.md("fraud") is None)
    assert "Traceback" not in operator.log
