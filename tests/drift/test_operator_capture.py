"""`reference.fromStableVersion` through the operator, against the API emulator with a real local data plane: the
policy hands the router a capture, the router samples the stable version's rows, the controller builds the profile
from the sample after one window, keeps it in a ConfigMap owned by the policy and evaluates on its bins; a restart
reads the ConfigMap instead of capturing again; a deleted or garbled ConfigMap is captured again, with an Event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.drift.test_operator_drift import (
    DP_PATH,
    Load,
    create,
    dp,
    events_about,
    policy,
    reason,
    served_drift,
    state,
    target_doc,
)
from tests.operator.test_rbac import chart_grants, used
from tests.support import wait_for
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import MERGE, OPERATOR_AGENTS, Cluster, running_operator
from tests.support.simulator import simulating

from sluice.drift.profile import parse_profile
from sluice.operator.driftprofiles import annotation_key
from sluice.serving.config import DriftProfileConfig

CM_PATH = "/api/v1/namespaces/{ns}/configmaps"
FEATURES = [*({"name": "features", "index": i} for i in range(4)), {"name": "prediction"}]


def stable_policy(name: str) -> dict[str, Any]:
    return policy(name, reference={"fromStableVersion": True}, features=FEATURES)


def reference(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict((dp(cluster, name).get("status") or {}).get("reference") or {})


def configmap(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return cluster.get(f"{CM_PATH}/{name}-reference")


def target_profile(cluster: Cluster, name: str) -> DriftProfileConfig | None:
    value = ((cluster.md("fraud") or {})["metadata"].get("annotations") or {}).get(annotation_key(name))
    return DriftProfileConfig.model_validate_json(value) if value else None


def captured(cluster: Cluster, name: str) -> bool:
    return reference(cluster, name).get("state") == "Captured"


def test_the_reference_is_captured_from_the_stable_version_then_drift_is_found(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with (
        running_operator(kubeconfig, tmp_path, (cluster.ns,), env),
        simulating(kube_emulator.url, cluster.ns, plane=example_plane),
        Load(example_plane.url) as load,
    ):
        cluster.apply_md(target_doc("v1"))
        wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
        create(cluster, DP_PATH, stable_policy("ref"))
        wait_for("capturing", lambda: reason(cluster, "ref") == "CapturingReference", 30)
        status = dp(cluster, "ref")["status"]
        assert status["state"] == "NoData"  # never a verdict on a reference still being captured
        assert (status["reference"]["state"], status["reference"]["version"]) == ("Capturing", "v1")
        config = target_profile(cluster, "ref")
        assert config is not None
        assert config.capture is not None
        assert (config.capture.version, config.capture.prediction) == ("v1", "numeric")
        assert [f.key for f in config.capture.features] == [f"features[{i}]" for i in range(4)]
        wait_for("the capture on the router", lambda: served_drift(cluster) == ["ref"], 30)
        wait_for("captured", lambda: captured(cluster, "ref"), 60)
        ref = reference(cluster, "ref")
        assert ref["version"] == "v1"
        assert ref["rows"] >= 200
        assert ref["configMap"] == "ref-reference"
        cm = configmap(cluster, "ref")
        assert cm is not None
        owner = cm["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "DriftPolicy",
            "ref",
            dp(cluster, "ref")["metadata"]["uid"],
        )
        assert cm["metadata"]["annotations"]["drift.sluice.dev/version"] == "v1"
        profile = parse_profile(cm["data"]["profile.json"])
        assert [f.name for f in profile.features] == [*(f"features[{i}]" for i in range(4)), "prediction"]
        assert profile.rows == ref["rows"]
        # From now on the router counts the captured profile's bins, and the policy evaluates.
        wait_for("bins on the target", lambda: (target_profile(cluster, "ref") or config).capture is None, 30)
        binned = target_profile(cluster, "ref")
        assert binned is not None
        assert list(binned.features[0].edges or ()) == profile.features[0].edges  # type: ignore[union-attr]
        wait_for("Ok", lambda: state(cluster, "ref") == "Ok", 60)
        load.shift = 1.5
        wait_for("Drifted", lambda: state(cluster, "ref") == "Drifted", 60)
        reasons = events_about(cluster, "ref")
        assert reasons.index("CapturingReference") < reasons.index("ReferenceCaptured") < reasons.index("DriftDrifted")
        assert "ReferenceRecapture" not in reasons
        # A new stable version: its own first window becomes the reference (of the shifted traffic it now serves).
        cluster.apply_md(target_doc("v2"))
        wait_for("v2 promoted", lambda: cluster.status("fraud").get("phase") == "Succeeded", 120)
        wait_for("v2 captured", lambda: captured(cluster, "ref") and reference(cluster, "ref")["version"] == "v2", 60)
        assert (configmap(cluster, "ref") or {})["metadata"]["annotations"]["drift.sluice.dev/version"] == "v2"
        wait_for("Ok on v2's reference", lambda: state(cluster, "ref") == "Ok", 60)
        assert load.failed == 0
    recapture = [e["message"] for e in cluster.events("ref") if e["reason"] == "ReferenceRecapture"]
    assert len(recapture) == 1
    assert "stable version is now v2" in recapture[0]


def test_a_restart_reads_the_configmap_and_a_deleted_or_garbled_one_is_captured_again(
    example_plane: Any, cluster: Cluster, kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_ROUTER_METRICS_URL": example_plane.metrics_url}
    with simulating(kube_emulator.url, cluster.ns, plane=example_plane), Load(example_plane.url):
        with running_operator(kubeconfig, tmp_path, (cluster.ns,), env):
            cluster.apply_md(target_doc("v1"))
            wait_for("v1 stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)
            create(cluster, DP_PATH, stable_policy("keep"))
            wait_for("captured", lambda: captured(cluster, "keep"), 60)
            first = reference(cluster, "keep")
            wait_for("Ok", lambda: state(cluster, "keep") == "Ok", 60)
        cm = configmap(cluster, "keep")
        assert cm is not None
        (tmp_path / "second").mkdir()
        with running_operator(kubeconfig, tmp_path / "second", (cluster.ns,), env):
            # The restarted controller evaluates on the kept profile: no new capture.
            wait_for("evaluated after the restart", lambda: reason(cluster, "keep") == "Evaluated", 30)
            assert reference(cluster, "keep") == first
            assert (configmap(cluster, "keep") or {})["metadata"]["resourceVersion"] == cm["metadata"][
                "resourceVersion"
            ]
            assert "ReferenceRecapture" not in events_about(cluster, "keep")
            # Deleted: captured again, with an Event.
            path = f"{CM_PATH.format(ns=cluster.ns)}/keep-reference"
            assert cluster.http.delete(path).status_code == 200
            wait_for("a new capture", lambda: reference(cluster, "keep").get("state") == "Capturing", 60)
            assert state(cluster, "keep") == "NoData"
            wait_for("captured again", lambda: captured(cluster, "keep"), 60)
            second = reference(cluster, "keep")
            assert second["capturedAt"] > first["capturedAt"]
            assert configmap(cluster, "keep") is not None
            # Garbled by hand: captured again, with a Warning Event; the ConfigMap is written anew.
            patch = {"data": {"profile.json": "{not json"}}
            assert cluster.http.patch(path, json=patch, headers=MERGE).status_code == 200
            wait_for(
                "captured a third time",
                lambda: reference(cluster, "keep").get("capturedAt") != second["capturedAt"],
                90,
            )
            wait_for("captured", lambda: captured(cluster, "keep"), 60)
            text = (configmap(cluster, "keep") or {})["data"]["profile.json"]
            assert parse_profile(text).rows > 0
            wait_for("Ok again", lambda: state(cluster, "keep") == "Ok", 60)
    # Every request the operator made (ConfigMaps included) is one the chart's ClusterRole grants.
    requests = kube_emulator.call(lambda: kube_emulator.emulator.audited(OPERATOR_AGENTS))
    assert ("", "configmaps", "create") in used(requests)
    assert not used(requests) - chart_grants()
    warnings = [e for e in cluster.events("keep") if e["reason"] == "ReferenceRecapture"]
    assert len(warnings) == 2, [e["message"] for e in warnings]
    assert "is gone" in warnings[0]["message"]
    assert "cannot be used" in warnings[1]["message"]
