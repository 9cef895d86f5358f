"""The operator scenarios of tests/operator on a real kind cluster: children and status, a restart mid-rollout,
`kubectl sluice status`, and the chart's RBAC being enough (no `forbidden` in the operator's log).

Needs the operator image in the cluster (`kind load docker-image ghcr.io/sluice-dev/sluice-operator:<version>`);
without it the operator pod cannot start and these tests skip, saying so. KubeRay is optional: without its CRD a
backend-ray ModelDeployment must end with condition BackendAvailable=False naming spec.backend instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.conftest import REPO, Kube
from tests.support import wait_for

pytestmark = pytest.mark.e2e

OPERATOR_NS = "sluice-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=sluice,app.kubernetes.io/component=operator"


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 180, interval_s: float = 2) -> Any:
    """`wait_for` at a real cluster's pace."""
    return wait_for(what, check, timeout_s, interval_s)


@pytest.fixture(scope="module")
def operator(installed: Kube) -> Kube:
    """The chart's operator Deployment available; skips when its image is not in the cluster."""

    def state() -> str:
        pods = json.loads(installed.ok("get", "pods", "-n", OPERATOR_NS, "-l", OPERATOR_SELECTOR, "-o", "json"))
        for pod in pods["items"]:
            for status in pod.get("status", {}).get("containerStatuses", []):
                waiting = status.get("state", {}).get("waiting", {})
                if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"):
                    return "no-image"
                if status.get("ready"):
                    return "ready"
        return ""

    found = _wait("the operator pod", state, 180)
    if found == "no-image":
        pytest.skip("the operator image is not in the cluster: build operator/Dockerfile and `kind load docker-image`")
    return installed


def _md(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kube.ok("get", "md", name, "-n", namespace, "-o", "json"))
    return out


def _has_kuberay(kube: Kube) -> bool:
    return kube.run("get", "crd", "rayservices.ray.io").returncode == 0


def _apply_example(kube: Kube, namespace: str, name: str, version: str) -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "10-canary-ray.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"]["model"].update(version=version, uri=f"s3://models/{name}/{version}.onnx")
    doc["spec"]["model"].pop("sha256", None)
    kube.ok("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def _condition(md: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def test_model_deployment_gets_its_children_and_status(operator: Kube, namespace: str) -> None:
    _apply_example(operator, namespace, "e2e-ray", "v1")
    md = _wait(
        "a phase in status", lambda: (m := _md(operator, namespace, "e2e-ray")).get("status", {}).get("phase") and m
    )
    if not _has_kuberay(operator):
        condition = _wait(
            "BackendAvailable", lambda: _condition(_md(operator, namespace, "e2e-ray"), "BackendAvailable")
        )
        assert condition["status"] == "False"
        assert "spec.backend" in condition["message"]
        return
    rayservice = json.loads(operator.ok("get", "rayservice", "e2e-ray", "-n", namespace, "-o", "json"))
    (owner,) = rayservice["metadata"]["ownerReferences"]
    assert owner["uid"] == md["metadata"]["uid"]
    assert owner["controller"] is True
    assert rayservice["metadata"]["labels"]["sluice.dev/model-deployment"] == "e2e-ray"
    events = operator.ok("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=e2e-ray")
    assert "e2e-ray" in events


def test_operator_restart_mid_rollout_keeps_one_child(operator: Kube, namespace: str) -> None:
    if not _has_kuberay(operator):
        pytest.skip("KubeRay's RayService CRD is not installed: no rollout to interrupt")
    _apply_example(operator, namespace, "e2e-restart", "v1")
    _wait("a phase", lambda: _md(operator, namespace, "e2e-restart").get("status", {}).get("phase"))
    _apply_example(operator, namespace, "e2e-restart", "v2")
    _wait("the canary in status", lambda: _md(operator, namespace, "e2e-restart").get("status", {}).get("canary"))
    operator.ok("delete", "pod", "-n", OPERATOR_NS, "-l", OPERATOR_SELECTOR, "--grace-period=0", "--force")
    operator.ok("rollout", "status", "deployment/sluice", "-n", OPERATOR_NS, "--timeout=180s", timeout=200)
    status = _md(operator, namespace, "e2e-restart")["status"]
    assert status["canary"]["version"] == "v2" or status["stable"]["version"] == "v2"  # resumed, not restarted
    names = operator.ok(
        "get", "rayservices", "-n", namespace, "-l", "sluice.dev/model-deployment=e2e-restart", "-o", "name"
    )
    assert names.split() == ["rayservice.ray.io/e2e-restart"]
    history = [(h["revision"], h["outcome"]) for h in status.get("history", [])]
    assert len(history) == len(set(history))


def test_kubectl_sluice_status_shows_the_rollout(operator: Kube, namespace: str) -> None:
    _apply_example(operator, namespace, "e2e-status", "v1")
    _wait("a phase", lambda: _md(operator, namespace, "e2e-status").get("status", {}).get("phase"))
    plugin = shutil.which("kubectl-sluice") or str(Path(sys.executable).with_name("kubectl-sluice"))
    result = subprocess.run(
        [plugin, "status", "e2e-status", "-n", namespace],
        env={**os.environ, **operator.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: not Stable/Succeeded yet (e.g. no KubeRay)
    assert "e2e-status" in result.stdout


def test_chart_rbac_is_enough(operator: Kube) -> None:
    """After the scenarios above, the operator's log has no 403: what it did, the chart allowed."""
    logs = operator.ok("logs", "-n", OPERATOR_NS, "-l", OPERATOR_SELECTOR, "--tail=-1", timeout=60)
    assert "forbidden" not in logs.lower(), [line for line in logs.splitlines() if "forbidden" in line.lower()][:5]
