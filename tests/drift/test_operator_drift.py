"""DriftPolicies through the operator: `sluice operator` (Kopf + the DriftPolicy controller) against the API emulator,
the target's RayService rendered with the policy's bins and applied by the simulated KubeRay to a real local data
plane, real requests whose inputs shift, and the builtin provider reading the router's real feature counters.

Stand-ins, because neither runs here: the cluster simulator plays KubeRay (it applies the RayService's user_config
to the local router), and in the retrain test the test itself plays kube-controller-manager and the kubelet: it
marks the retrain Job succeeded and writes the Job's pod with the trainer's termination message
(`{"uri": ..., "version": ...}`), as a real trainer writing /dev/termination-log would leave it.
"""

from __future__ import annotations

import copy
import json
import threading
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from tests.support import wait_for
from tests.support.emulator import AuditEntry, EmulatorThread
from tests.support.operator_process import EXAMPLES, MERGE, OPERATOR_AGENTS, Cluster, example, running_operator
from tests.support.simulator import simulating
from tests.support.traffic import _example_traffic

from sluice.operator.driftprofiles import annotation_key
from sluice.serving.ray.spec import INGRESS_NAME

DP_PATH = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/driftpolicies"
JOB_PATH = "/apis/batch/v1/namespaces/{ns}/jobs"
POD_PATH = "/api/v1/namespaces/{ns}/pods"
PROFILE = f"file://{EXAMPLES / 'models' / 'fraud-v1.profile.json'}"
traffic = _example_traffic()


class Load:
    """Requests of 20 rows of the examples' traffic, about 25 a second, in a thread; `shift` moves column 0."""

    def __init__(self, url: str) -> None:
        self.url, self.shift, self.sent, self.failed = url, 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seed = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                seed += 1
                x = traffic.features(20, seed=seed)
                x[:, 0] += self.shift
                try:
                    ok = client.post(f"{self.url}/v2/models/fraud/infer", json=traffic.v2_request(x)).status_code
                except httpx.HTTPError:
                    ok = 0
                self.sent, self.failed = self.sent + 1, self.failed + (ok != 200)
                self._stop.wait(0.03)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def target_doc(version: str = "v1") -> dict[str, Any]:
    """Example 01's canary spec (25% / 50% steps, analysed on the router's metrics) serving `version`."""
    v1, v2 = example("01-canary-good.yaml")
    doc = copy.deepcopy(v2)
    doc["spec"]["model"] = copy.deepcopy((v1 if version == "v1" else v2)["spec"]["model"])
    doc["spec"]["analysis"].update(interval="3s", minRequests=10)
    return doc


def policy(name: str, action: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "target": {"name": "fraud"},
        "reference": {"uri": PROFILE},
        "features": [{"name": "features", "index": i} for i in range(4)],
        "window": "4s",
        "interval": "1s",
        "minSamples": 200,
        "action": action or {"type": "alert", "cooldown": "1h"},
        **spec,
    }
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "DriftPolicy", "metadata": {"name": name}, "spec": body}


def create(cluster: Cluster, path: str, doc: dict[str, Any]) -> None:
    r = cluster.http.post(path.format(ns=cluster.ns), json=doc)
    assert r.status_code == 201, r.text


def dp(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get(f"{DP_PATH}/{name}") or {}


def dp_condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    conditions = (dp(cluster, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def served_drift(cluster: Cluster) -> list[str]:
    """The policies whose bins the target's RayService hands its router (the user_config)."""
    rs = cluster.rayservice("fraud") or {}
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == INGRESS_NAME)
    return [p["policy"] for p in ingress["user_config"]["config"].get("drift", [])]


def state(cluster: Cluster, name: str, key: str = "state") -> Any:
    return (dp(cluster, name).get("status") or {}).get(key)


def reason(cluster: Cluster, name: str, type_: str = "Evaluated") -> Any:
    return dp_condition(cluster, name, type_).get("reason")


def has_reason(cluster: Cluster, name: str, why: str) -> bool:
    return bool(reason(cluster, name) == why)


def target_version(cluster: Cluster, role: str) -> Any:
    return (cluster.status("fraud").get(role) or {}).get("version")


def events_about(cluster: Cluster, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(name)]


def test_alert_reads_the_router_fills_the_status_and_bad_input_touches_nothing(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane),
    ):
        # Policies first: the target does not exist yet.
        create(cluster, DP_PATH, policy("watch", features=[*policy("x")["spec"]["features"], {"name": "prediction"}]))
        create(cluster, DP_PATH, policy("no-input", features=[{"name": "amount"}]))
        create(cluster, DP_PATH, policy("no-column", features=[{"name": "features", "index": 7}]))
        create(cluster, DP_PATH, policy("bad-profile", reference={"uri": f"file://{garbage}"}))
        create(cluster, DP_PATH, policy("unreachable", reference={"uri": "http://127.0.0.1:9/profile.json"}))
        categorical = [{"name": "features", "index": 0, "type": "categorical"}]
        create(cluster, DP_PATH, policy("not-in-profile", features=categorical))
        wait_for(
            "TargetNotFound",
            lambda: reason(cluster, "watch") == "TargetNotFound",
            30,
        )
        assert "spec.target.name" in dp_condition(cluster, "watch", "Evaluated")["message"]
        cluster.apply_md(target_doc())
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
        expected = {
            "no-input": ("FeatureNotInModel", "spec.features[0].name"),
            "no-column": ("FeatureNotInModel", "spec.features[0].index"),
            "bad-profile": ("ReferenceInvalid", "spec.reference.uri"),
            "unreachable": ("ReferenceUnreachable", "spec.reference.uri"),
            "not-in-profile": ("ReferenceMismatch", "spec.features[0].type"),
        }
        for name, (why, field) in expected.items():
            wait_for(f"{name}: {why}", partial(has_reason, cluster, name, why), 30)
            condition = dp_condition(cluster, name, "Evaluated")
            assert condition["status"] == "False"
            assert condition["message"].startswith(field), condition
            assert why in events_about(cluster, name)
        # Only the good policy's bins reach the target and its router.
        wait_for("the bins on the router", lambda: served_drift(cluster) == ["watch"], 30)
        annotations = (cluster.md("fraud") or {})["metadata"].get("annotations") or {}
        assert [k for k in annotations if k.startswith("drift.sluice.dev/")] == [annotation_key("watch")]
        with Load(example_plane.url) as load:
            wait_for("Ok", lambda: state(cluster, "watch") == "Ok", 60)
            load.shift = 1.5
            wait_for("Drifted", lambda: state(cluster, "watch") == "Drifted", 60)
            assert load.failed == 0
            status = dp(cluster, "watch")["status"]
            features = {f["name"]: f for f in status["features"]}
            assert set(features) == {"features[0]", "features[1]", "features[2]", "features[3]", "prediction"}
            assert features["features[0]"]["state"] == "Drifted"
            assert features["features[1]"]["state"] == "Ok"
            assert features["features[0]"]["samples"] >= 200
            assert status["score"] == max(f["score"] for f in features.values() if f.get("score") is not None)
            assert status["lastEvaluated"]
            assert dp_condition(cluster, "watch", "Drifted")["status"] == "True"
            assert "lastAction" not in status  # alert: condition, Event and metric only
            reasons = events_about(cluster, "watch")
            assert reasons.index("DriftOk") < reasons.index("DriftDrifted")
            scores = httpx.get(operator.metrics_url, timeout=5).text
            line = next(
                x for x in scores.splitlines() if x.startswith("sluice_drift_score{") and 'feature="features[0]"' in x
            )
            assert 'policy="watch"' in line
            assert float(line.rsplit(" ", 1)[1]) >= 0.25
        # Nothing acted on the target: still v1, no command.
        md = cluster.md("fraud") or {}
        assert md["spec"]["model"]["version"] == "v1"
        assert "sluice.dev/command" not in (md["metadata"].get("annotations") or {})
        # Deleting the policy takes its bins off the target and its scores off /metrics.
        assert cluster.http.delete(f"{DP_PATH.format(ns=cluster.ns)}/watch").status_code == 200
        wait_for("the bins to go", lambda: served_drift(cluster) == [], 30)
        assert annotation_key("watch") not in ((cluster.md("fraud") or {})["metadata"].get("annotations") or {})
        wait_for("the scores to go", lambda: 'policy="watch"' not in httpx.get(operator.metrics_url, timeout=5).text)


def test_rollback_asks_the_target_for_undo_and_both_record_it_once_across_a_kill(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    """The operator is SIGKILLed right after it writes the undo command, before it saves the policy's status: the
    restarted one takes the same decision from the same saved status, so it writes the same command (the target
    rolls back once) and posts no Event twice."""
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}

    def undo_patch(e: AuditEntry) -> bool:
        return (e.resource, e.subresource, e.name, e.verb) == ("modeldeployments", "", "fraud", "patch")

    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env) as operator,
        simulating(kube_emulator.url, cluster.ns, plane=example_plane),
        Load(example_plane.url) as load,
    ):
        cluster.apply_md(target_doc("v1"))
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
        cluster.apply_md(target_doc("v2"))
        wait_for("v2 promoted", lambda: cluster.status("fraud").get("phase") == "Succeeded", 120)
        create(cluster, DP_PATH, policy("guard", {"type": "rollback", "cooldown": "1h"}))
        wait_for("Ok", lambda: state(cluster, "guard") == "Ok", 60)
        killed: list[AuditEntry] = []
        kube_emulator.call(
            lambda: kube_emulator.emulator.on_write(
                OPERATOR_AGENTS, 1, lambda e: (operator.kill(), killed.append(e)), cluster.ns, match=undo_patch
            )
        )
        load.shift = 1.5
        wait_for("the kill right after the undo command", lambda: killed, 60)
        assert state(cluster, "guard", "lastActionType") is None  # the status was not saved
        command = ((cluster.md("fraud") or {})["metadata"].get("annotations") or {}).get("sluice.dev/command", "")
        assert command.startswith("undo:"), command
        operator.start()
        wait_for("the rollback", lambda: state(cluster, "guard", "lastActionType") == "rollback", 60)
        wait_for("the target takes the undo", lambda: cluster.status("fraud").get("lastCommand") == command, 30)
        wait_for(
            "v1 rolls back in",
            lambda: "v1" in (target_version(cluster, "canary"), target_version(cluster, "stable")),
            30,
        )
    kube_emulator.call(lambda: kube_emulator.emulator.clear_write_hooks(cluster.ns))
    audit = [e for e in kube_emulator.emulator.audited(OPERATOR_AGENTS) if e.namespace == cluster.ns]
    since_kill = audit[next(i for i, e in enumerate(audit) if e is killed[0]) + 1 :]
    assert len([e for e in since_kill if undo_patch(e)]) == 1  # the restarted operator's write
    annotations = (cluster.md("fraud") or {})["metadata"].get("annotations") or {}
    assert annotations["sluice.dev/command"] == cluster.status("fraud")["lastCommand"] == command  # the same one
    assert operator.starts == 2
    guard = events_about(cluster, "guard")
    assert guard.count("DriftRollback") == 1, guard
    assert guard.count("DriftDrifted") == 1, guard
    assert "DriftNoData" not in guard[guard.index("DriftOk") :], guard  # the restart is no state change
    assert events_about(cluster, "fraud").count("DriftRollback") == 1  # the target records who asked, once


def test_retrain_job_reports_a_model_that_walks_in_as_a_canary(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    template = copy.deepcopy(example("15-drift-policy.yaml")[0]["spec"]["action"]["jobTemplate"])
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env),
        simulating(kube_emulator.url, cluster.ns, plane=example_plane),
        Load(example_plane.url) as load,
    ):
        cluster.apply_md(target_doc("v1"))
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
        create(cluster, DP_PATH, policy("retrainer", {"type": "retrain", "cooldown": "1h", "jobTemplate": template}))
        wait_for("Ok", lambda: state(cluster, "retrainer") == "Ok", 60)
        load.shift = 1.5
        job_name = wait_for("the Job", lambda: state(cluster, "retrainer", "lastJob"), 60)
        job = cluster.get(f"{JOB_PATH}/{job_name}")
        assert job is not None
        owner = job["metadata"]["ownerReferences"][0]
        uid = dp(cluster, "retrainer")["metadata"]["uid"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("DriftPolicy", "retrainer", uid)
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "ghcr.io/example/fraud-trainer:1.4"
        env_vars = {e["name"]: e["value"] for e in container["env"]}
        assert env_vars["SLUICE_POLICY"] == "retrainer"
        assert env_vars["SLUICE_TARGET"] == "fraud"
        assert "features[0]" in env_vars["SLUICE_DRIFTED_FEATURES"].split(",")
        assert env_vars["SLUICE_REFERENCE_URI"] == PROFILE
        load.shift = 0.0
        wait_for("Retrained: running", lambda: reason(cluster, "retrainer", "Retrained") == "JobRunning", 30)
        assert (cluster.md("fraud") or {})["spec"]["model"]["version"] == "v1"  # nothing before the Job succeeds
        # The kubelet's part: the trainer's pod, terminated with its report.
        pod: dict[str, Any] = {
            "metadata": {"name": f"{job_name}-abcde", "labels": {"job-name": job_name}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "retrain", "image": container["image"]}]},
        }
        create(cluster, POD_PATH, pod)
        report = json.dumps({"uri": "file:models/fraud-v2.onnx", "version": "v2"})
        terminated = {"exitCode": 0, "reason": "Completed", "message": report}
        pod_status = {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "retrain",
                    "ready": False,
                    "restartCount": 0,
                    "image": container["image"],
                    "imageID": "",
                    "state": {"terminated": terminated},
                }
            ],
        }
        path = f"{POD_PATH.format(ns=cluster.ns)}/{pod['metadata']['name']}/status"
        assert cluster.http.patch(path, json={"status": pod_status}, headers=MERGE).status_code == 200
        # kube-controller-manager's part: the Job succeeded.
        job_status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        path = f"{JOB_PATH.format(ns=cluster.ns)}/{job_name}/status"
        assert cluster.http.patch(path, json={"status": job_status}, headers=MERGE).status_code == 200
        wait_for("v2 on the target", lambda: (cluster.md("fraud") or {})["spec"]["model"]["version"] == "v2", 30)
        assert (cluster.md("fraud") or {})["spec"]["model"]["uri"] == "file:models/fraud-v2.onnx"
        # The target's own rollout takes it from there: v2 as a canary under its analysis, then promoted.
        wait_for("v2 as a canary", lambda: target_version(cluster, "canary") == "v2", 30)
        wait_for("v2 promoted", lambda: cluster.status("fraud").get("phase") == "Succeeded", 120)
    condition = dp_condition(cluster, "retrainer", "Retrained")
    assert (condition["status"], condition["reason"]) == ("True", "NewVersion")
    assert condition["message"].startswith(f"Job {job_name}:")
    assert "DriftRetrain" in events_about(cluster, "retrainer")
    assert "DriftRetrained" in events_about(cluster, "fraud")
    assert load.failed == 0
    assert np.isfinite(float(dp(cluster, "retrainer")["status"]["score"]))
