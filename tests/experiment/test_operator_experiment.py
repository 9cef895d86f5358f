"""An Experiment through the operator: Kopf + the experiment controller against the API emulator, the target's
RayService rendered with the arms and applied by the simulated KubeRay to a real local data plane (router with sticky
enrolment and the outcomes route), enrolled load with simulated outcomes, the builtin provider reading the router.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from pathlib import Path
from typing import Any

from tests.support import wait_for
from tests.support.emulator import AuditEntry, EmulatorThread
from tests.support.operator_process import MERGE, OPERATOR_AGENTS, Cluster, example, running_operator
from tests.support.simulator import simulating

from sluice.api.experiment import MetricKind
from sluice.engine.routing import ARMS_ANNOTATION
from sluice.local.experiment import ExperimentTraffic

EXP_PATH = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/experiments"


class EnrolledLoad:
    """sluice run's enrolled traffic with simulated outcomes, in a thread with its own event loop."""

    def __init__(self, url: str, outcomes: dict[str, tuple[float, float]]) -> None:
        self.traffic = ExperimentTraffic(
            url, "fraud", header="x-user-id", rps=80, metric="converted", kind=MetricKind.CONVERSION, outcomes=outcomes
        )
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self.traffic.run(self._stop))

    def __enter__(self) -> EnrolledLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


def experiment_doc(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example("03-experiment-ab.yaml")[1])
    doc["spec"].update({"interval": "1s", "minimumSamples": 100, **spec})
    return doc


def create_experiment(cluster: Cluster, doc: dict[str, Any]) -> None:
    r = cluster.http.post(EXP_PATH.format(ns=cluster.ns), json={**doc, "metadata": {"name": doc["metadata"]["name"]}})
    assert r.status_code == 201, r.text


def experiment_status(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = cluster.get(f"{EXP_PATH.format(ns=cluster.ns)}/{name}") or {}
    return dict(obj.get("status") or {})


def served(sim: Any) -> dict[str, int]:
    return {v["name"]: v["weight"] for v in json.loads(sim.applied.get("fraud", "{}")).get("variants", [])}


def test_arms_are_served_decided_by_outcomes_and_the_winner_promoted(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    target = example("01-canary-good.yaml")[0]
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        cluster.apply_md(target)
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        create_experiment(cluster, experiment_doc())
        wait_for("the arms on the data plane", lambda: served(sim) == {"control": 50, "treatment": 50}, 30)
        md = cluster.md("fraud") or {}
        arms = json.loads(md["metadata"]["annotations"][ARMS_ANNOTATION])
        assert arms["experiment"] == "fraud-ab"
        assert arms["salt"] == experiment_status(cluster, "fraud-ab")["salt"]  # the Experiment's uid
        config = json.loads(sim.applied["fraud"])
        assert (config["enrolment"], config["sticky_header"]) == ("unit", "x-user-id")
        with EnrolledLoad(example_plane.url, {"control": (0.05, 0.0), "treatment": (0.30, 0.0)}) as load:
            wait_for(
                "the verdict",
                lambda: experiment_status(cluster, "fraud-ab").get("phase") in ("Concluded", "Stopped", "Failed"),
                timeout_s=90,
            )
        status = experiment_status(cluster, "fraud-ab")
        assert status["phase"] == "Concluded", status
        assert status["winner"] == "treatment"
        assert status["variants"][1]["samples"] >= 100
        assert load.traffic.tally.failed == 0, load.traffic.tally.summary()
        # promoteWinner: the target's spec.model is the winner's, the arms are gone, the target rolls it out
        wait_for("the arms to go", lambda: ARMS_ANNOTATION not in ((cluster.md("fraud") or {})["metadata"].get(
            "annotations") or {}), 20)  # fmt: skip
        assert (cluster.md("fraud") or {})["spec"]["model"]["version"] == "v2"
        wait_for(
            "the target's rollout of v2",
            lambda: (
                (cluster.status("fraud").get("canary") or cluster.status("fraud").get("stable") or {}).get("version")
                == "v2"
            ),
            30,
        )
        reasons = [e["reason"] for e in cluster.items(f"/api/v1/namespaces/{cluster.ns}/events")]
        assert "ExperimentStarted" in reasons
        assert "VerdictReached" in reasons
        assert "Traceback" not in operator.log


def test_deleting_the_experiment_returns_traffic_to_the_stable_version(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        cluster.apply_md(example("01-canary-good.yaml")[0])
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        create_experiment(cluster, experiment_doc(endPolicy="manual", minimumSamples=10**6))
        wait_for("the arms on the data plane", lambda: set(served(sim)) == {"control", "treatment"}, 30)
        # a spec change of the target while the experiment runs is held, with a condition naming the experiment
        cluster.apply_md(example("01-canary-good.yaml")[1])
        wait_for(
            "the rollout hold",
            lambda: (cluster.condition("fraud", "RolloutAllowed") or {}).get("reason") == "ExperimentRunning",
            20,
        )
        assert "fraud-ab" in (cluster.condition("fraud", "RolloutAllowed") or {})["message"]
        assert cluster.status("fraud")["phase"] == "Stable"
        r = cluster.http.delete(f"{EXP_PATH.format(ns=cluster.ns)}/fraud-ab")
        assert r.status_code in (200, 202), r.text
        wait_for("the arms to go", lambda: ARMS_ANNOTATION not in ((cluster.md("fraud") or {})["metadata"].get(
            "annotations") or {}), 20)  # fmt: skip
        # released: the held rollout of v2 starts
        wait_for("the held rollout to start", lambda: (cluster.status("fraud").get("canary") or {}).get("version")
                 == "v2", 40)  # fmt: skip
        assert "Traceback" not in operator.log


def test_an_experiment_waits_for_its_target_then_starts(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        create_experiment(cluster, experiment_doc(endPolicy="manual", minimumSamples=10**6))
        wait_for(
            "the missing-target condition",
            lambda: any(
                c["type"] == "TargetReady" and c["reason"] == "TargetMissing"
                for c in experiment_status(cluster, "fraud-ab").get("conditions", [])
            ),
            20,
        )
        assert experiment_status(cluster, "fraud-ab")["phase"] == "Pending"
        cluster.apply_md(example("01-canary-good.yaml")[0])
        wait_for("the arms once the target is stable", lambda: set(served(sim)) == {"control", "treatment"}, 40)
        assert experiment_status(cluster, "fraud-ab")["phase"] == "Running"
        assert "Traceback" not in operator.log


def test_a_kill_after_the_start_event_posts_it_once(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    """SIGKILL right after the operator posts ExperimentStarted, before it saves the Running status: the restarted
    one starts the experiment again from the same saved (Pending) status and posts nothing twice."""
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}

    def event_posted(e: AuditEntry) -> bool:
        return (e.resource, e.verb) == ("events", "create") and e.code < 300

    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        cluster.apply_md(example("01-canary-good.yaml")[0])
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        killed: list[AuditEntry] = []
        kube_emulator.call(
            lambda: kube_emulator.emulator.on_write(
                OPERATOR_AGENTS, 1, lambda e: (operator.kill(), killed.append(e)), cluster.ns, match=event_posted
            )
        )
        create_experiment(cluster, experiment_doc(endPolicy="manual", minimumSamples=10**6))
        wait_for("the kill right after the first Event", lambda: killed, 30)
        assert experiment_status(cluster, "fraud-ab").get("phase") in (None, "Pending")  # not saved as Running
        operator.start()
        wait_for("Running", lambda: experiment_status(cluster, "fraud-ab").get("phase") == "Running", 30)
        wait_for("the arms on the data plane", lambda: set(served(sim)) == {"control", "treatment"}, 30)
        assert "Traceback" not in operator.log
    kube_emulator.call(lambda: kube_emulator.emulator.clear_write_hooks(cluster.ns))
    about = [e["reason"] for e in cluster.items(f"/api/v1/namespaces/{cluster.ns}/events")
             if e["involvedObject"]["kind"] == "Experiment"]  # fmt: skip
    assert about.count("ExperimentStarted") == 1, about
    assert operator.starts == 2


def test_an_arm_whose_model_cannot_load_is_stopped_naming_its_variant_and_the_others_run_on(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    broken = "file:models/fraud-v2-bad.onnx"  # Serve reports its deployment DEPLOY_FAILED (the simulated KubeRay)
    doc = experiment_doc(endPolicy="manual", minimumSamples=10**6)
    doc["spec"]["variants"] = [
        {**doc["spec"]["variants"][0], "weight": 40},
        {"name": "treatment", "weight": 30, "model": {"name": "fraud", "uri": broken, "version": "v2"}},
        {
            "name": "third",
            "weight": 30,
            "model": {"name": "fraud", "uri": "file:models/fraud-v2.onnx", "version": "v3"},
        },
    ]
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        sim.unloadable.add(broken)
        cluster.apply_md(example("01-canary-good.yaml")[0])
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        create_experiment(cluster, doc)
        wait_for("the broken arm stopped", lambda: served(sim).get("treatment") == 0, 40)
        weights = served(sim)
        assert weights["control"] + weights["third"] == 100, weights
        assert weights["third"] > 0, weights
        status = experiment_status(cluster, "fraud-ab")
        assert status["phase"] == "Running", status
        health = next(c for c in status["conditions"] if c["type"] == "ArmsHealthy")
        assert health["status"] == "False"
        assert health["reason"] == "ArmStopped"
        assert "spec.variants[1] (treatment)" in health["message"]
        assert "cannot load model" in health["message"]
        stopped = {v["name"]: v.get("stopped", False) for v in status["variants"]}
        assert stopped == {"control": False, "treatment": True, "third": False}
        assert "ArmStopped" in [e["reason"] for e in cluster.items(f"/api/v1/namespaces/{cluster.ns}/events")]
        assert "Traceback" not in operator.log


def test_weights_change_live_and_a_new_variant_set_is_refused(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    doc = experiment_doc(endPolicy="manual", minimumSamples=10**6)
    path = f"{EXP_PATH.format(ns=cluster.ns)}/fraud-ab"

    def patch_variants(change: Any) -> None:
        variants = copy.deepcopy(doc["spec"]["variants"])
        change(variants)
        r = cluster.http.patch(path, json={"spec": {"variants": variants}}, headers=MERGE)
        assert r.status_code == 200, r.text

    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane) as sim,
    ):
        cluster.apply_md(example("01-canary-good.yaml")[0])
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable")
        create_experiment(cluster, doc)
        wait_for("the arms", lambda: served(sim) == {"control": 50, "treatment": 50}, 30)
        patch_variants(lambda vs: (vs[0].update(weight=80), vs[1].update(weight=20)))
        wait_for("the new weights in the router", lambda: served(sim) == {"control": 80, "treatment": 20}, 30)
        patch_variants(
            lambda vs: (vs[0].update(weight=80), vs[1].update(weight=20), vs[1]["model"].update(version="v3"))
        )

        def refused() -> bool:
            conditions = experiment_status(cluster, "fraud-ab").get("conditions", [])
            return any(c["type"] == "SpecAccepted" and c["status"] == "False" for c in conditions)

        wait_for("the refusal", refused, 30)
        assert served(sim) == {"control": 80, "treatment": 20}  # the running arms are untouched
        assert experiment_status(cluster, "fraud-ab")["phase"] == "Running"
        assert "Traceback" not in operator.log
