"""The chart's RBAC against what the operator really does: every API request of a whole run (create, canary,
promote, rollback, delete) is allowed by the rendered ClusterRole, and every granted verb is used or named below
with the feature that needs it. The emulator's audit log records the operator's requests (its own User-Agent and
Kopf's); the chart is rendered by the real Helm engine as `helm template` would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from tests.support import wait_for
from tests.support.emulator import AuditEntry
from tests.support.kube import start_emulator
from tests.support.operator_process import (
    GROUP_VERSION,
    OPERATOR_AGENTS,
    TEST_AGENT,
    OperatorProcess,
    model_deployment,
)
from tests.support.router_metrics import SyntheticRouterMetrics
from tests.support.simulator import ClusterSimulator

CHART = Path(__file__).resolve().parents[2] / "helm" / "sluice"
Grant = tuple[str, str, str]  # group, resource (with /subresource), verb
# Granted, but not exercised by a backend-ray run on the emulator; each names the feature that needs it.
NOT_EXERCISED_HERE: dict[Grant, str] = {
    **{
        (g, r, v): "backend triton (tests/operator/test_render_triton.py renders these children)"
        for g, r in (
            ("apps", "deployments"),
            ("", "services"),
            ("", "configmaps"),
            ("", "serviceaccounts"),
            ("rbac.authorization.k8s.io", "roles"),
            ("rbac.authorization.k8s.io", "rolebindings"),
        )
        for v in ("get", "create", "patch", "delete")
    },
    **{
        ("", "configmaps", v): "backend triton (its router's ConfigMap); DriftPolicy reference.fromStableVersion "
        "(the captured profile's ConfigMap: tests/drift/test_operator_capture.py checks its requests are granted)"
        for v in ("get", "create", "patch")
    },
    ("", "configmaps", "watch"): "granted so the operator may grant it to the Triton router's Role",
    ("ray.io", "rayservices", "delete"): "a RayService left over when a ModelDeployment's backend changes",
    ("ray.io", "rayservices", "get"): "an operator restart: a create that meets 409 reads the existing RayService",
    # Kopf lists/watches namespaces only when given explicit namespaces (watchNamespaces: where the chart has no
    # ClusterRole rule for it); cluster-wide it does not. Kept for the chart's cluster-wide rule (rbac.yaml).
    ("", "namespaces", "list"): "Kopf namespace scanning (see above)",
    ("", "namespaces", "watch"): "Kopf namespace scanning (see above)",
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"): "Kopf lists and watches CRDs; get is unused",
    # Experiments (tests/experiment/test_operator_experiment.py runs them): Kopf's finalizer, the status, the target.
    ("sluice.dev", "experiments", "patch"): "Experiments: Kopf's finalizer (deletion takes the arms off the target)",
    ("sluice.dev", "experiments/status", "patch"): "Experiments: their status",
    ("sluice.dev", "modeldeployments", "get"): "Experiments: the controller reads its target ModelDeployment",
    # DriftPolicies (tests/drift/test_operator_*.py run them): Kopf's finalizer, the status, the target, retrain Jobs.
    (
        "sluice.dev",
        "driftpolicies",
        "patch",
    ): "DriftPolicies: Kopf's finalizer (deletion takes the bins off the target)",
    ("sluice.dev", "driftpolicies/status", "patch"): "DriftPolicies: their status",
    ("batch", "jobs", "create"): "DriftPolicy retrain: the Job from jobTemplate",
    ("batch", "jobs", "get"): "DriftPolicy retrain: the Job followed until it finishes",
}


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def chart_grants() -> set[Grant]:
    rendered = helm.Chart.load(CHART).render({}, name="sluice", namespace="sluice-system", is_install=True)
    docs = [d for name, text in rendered.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    return grants(role["rules"])


def used(entries: list[AuditEntry]) -> set[Grant]:
    return {(e.group, f"{e.resource}/{e.subresource}" if e.subresource else e.resource, e.verb) for e in entries}


@pytest.fixture(scope="module")
def operator_requests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[AuditEntry]]:
    """The audit log of one cluster-wide operator run through create, canary, promote, rollback and delete."""
    emulator = start_emulator()
    tmp = tmp_path_factory.mktemp("rbac")
    operator: OperatorProcess | None = None
    try:
        kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig")
        with (
            SyntheticRouterMetrics() as metrics,
            ClusterSimulator(emulator.url),
            httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=30) as http,
        ):
            operator = OperatorProcess(kubeconfig, tmp, {"SLUICE_ROUTER_METRICS_URL": metrics.url_format})
            operator.start()
            ns, path = "rbac", f"/apis/{GROUP_VERSION}/namespaces/rbac/modeldeployments"
            assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
            assert http.post(path, json=model_deployment("m", "v1", [50])).status_code == 201

            def phase() -> str:
                return str((http.get(f"{path}/m").json().get("status") or {}).get("phase"))

            merge = {"Content-Type": "application/merge-patch+json"}

            def roll(version: str) -> None:
                change = {"spec": {"model": {"version": version, "uri": f"s3://models/m/{version}.onnx"}}}
                assert http.patch(f"{path}/m", content=json.dumps(change), headers=merge).status_code == 200

            wait_for("Stable", lambda: phase() == "Stable", 60)
            roll("v2")
            wait_for("Succeeded", lambda: phase() == "Succeeded", 60)
            metrics.bad.add("m")
            roll("v3")
            wait_for("RolledBack", lambda: phase() == "RolledBack", 60)
            assert http.delete(f"{path}/m").status_code == 200
            wait_for("the finalizer released", lambda: http.get(f"{path}/m").status_code == 404, 30)
            logs = operator.logs()
            assert operator.stop() == 0, logs[-4000:]
            assert "Traceback" not in logs, logs[-4000:]
        yield emulator.call(lambda: emulator.emulator.audited(OPERATOR_AGENTS))
    finally:
        if operator is not None:
            operator.stop()
        emulator.stop()


def test_every_request_of_the_operator_is_granted(operator_requests: list[AuditEntry]) -> None:
    missing = used(operator_requests) - chart_grants()
    assert not missing, f"the chart does not allow what the operator does: {sorted(missing)}"


def test_every_granted_verb_is_used_or_named(operator_requests: list[AuditEntry]) -> None:
    granted = chart_grants()
    unused = granted - used(operator_requests)
    unexplained = sorted(unused - set(NOT_EXERCISED_HERE))
    assert not unexplained, f"granted but unused, with no feature named here: {unexplained}"
    stale = sorted(set(NOT_EXERCISED_HERE) - granted)
    assert not stale, f"named here but no longer granted: {stale}"


def test_the_run_covered_reads_writes_and_watches(operator_requests: list[AuditEntry]) -> None:
    verbs = {e.verb for e in operator_requests}
    assert {"list", "watch", "create", "patch"} <= verbs  # reads come from watches: a quiet run needs no get
    assert any(e.user_agent.startswith("kopf") for e in operator_requests)
    assert any(e.user_agent.startswith("sluice-operator") for e in operator_requests)
