"""`kubectl-sluice` as a real console script (and through kubectl) against the API emulator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support import wait_for
from tests.support.emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "10-canary-ray.yaml"
PLUGIN = Path(sys.executable).parent / "kubectl-sluice"
MDS = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/modeldeployments"
MERGE = {"Content-Type": "application/merge-patch+json"}

STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "phase": "Progressing",
    "message": "step 2 of 3: analysing the canary at 25%",
    "stable": {"version": "v1", "uri": "s3://models/fraud/v1.onnx"},
    "canary": {"version": "v2", "uri": "s3://models/fraud/v2.onnx"},
    "canaryWeight": 25,
    "stepIndex": 1,
    "passingAnalyses": 1,
    "failedAnalyses": 1,
    "ready": "4/4",
    "lastCommand": "retry:2026-11-23T10:00:00Z-abc123",
    "lastAnalysis": {
        "time": "2026-11-23T12:00:00Z",
        "stepIndex": 1,
        "canaryWeight": 25,
        "results": [
            {"name": "error-rate", "verdict": "Pass", "value": 0.002, "threshold": "<= 0.01", "message": "n=840"},
            {"name": "p99-latency", "verdict": "Fail", "value": 0.31, "threshold": "<= 0.25", "message": "seconds"},
        ],
    },
    "failedChecks": [{"name": "p99-latency", "verdict": "Fail", "value": 0.31, "threshold": "<= 0.25"}],
    "history": [
        {
            "revision": "rev-1a2b",
            "model": {"version": "v1", "uri": "s3://models/fraud/v1.onnx"},
            "outcome": "Promoted",
            "finishedAt": "2026-11-20T09:00:00Z",
            "reason": "all checks passed",
        }
    ],
    "conditions": [
        {
            "type": "Progressing",
            "status": "True",
            "reason": "CanaryAnalysing",
            "message": "at 25%",
            "lastTransitionTime": "2026-11-23T11:58:00Z",
        }
    ],
}


def plugin(kubeconfig: Path | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run([str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def fraud(kube_http: httpx.Client) -> str:
    """The canary example from manifests/examples, with a mid-rollout status written through /status."""
    body = yaml.safe_load(EXAMPLE.read_text())
    created = kube_http.post(MDS.format(ns="default"), json=body)
    assert created.status_code == 201, created.text
    name: str = body["metadata"]["name"]
    written = kube_http.patch(f"{MDS.format(ns='default')}/{name}/status", json={"status": STATUS}, headers=MERGE)
    assert written.status_code == 200, written.text  # the status conforms to the CRD's status schema
    return name


def test_status_shows_the_rollout(kubeconfig: Path, fraud: str) -> None:
    result = plugin(kubeconfig, "status", fraud)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Phase:       Progressing - step 2 of 3" in out
    assert "Stable:      v1 (s3://models/fraud/v1.onnx)" in out
    assert re.search(r"Canary:\s+v2 \(s3://models/fraud/v2.onnx\)\s+weight 25%\s+step 1", out)
    assert "stable 75%   canary 25%" in out
    assert re.search(r"error-rate\s+Pass\s+0.002\s+<= 0.01\s+n=840", out)
    assert re.search(r"Failed checks.*\n.*\n\s+p99-latency\s+Fail\s+0.31\s+<= 0.25", out)
    assert re.search(r"rev-1a2b\s+v1\s+Promoted\s+2026-11-20T09:00:00Z\s+all checks passed", out)
    assert re.search(r"Progressing\s+True\s+CanaryAnalysing", out)
    assert "last carried out retry:2026-11-23T10:00:00Z-abc123" in out


def test_kubectl_finds_the_plugin_on_path(kubeconfig: Path, fraud: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("the kubectl client is not installed")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ['PATH']}"}
    listed = subprocess.run(["kubectl", "plugin", "list"], env=env, capture_output=True, text=True, check=False)
    assert "kubectl-sluice" in listed.stdout
    result = subprocess.run(
        ["kubectl", "sluice", "status", fraud, "-n", "default"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Phase:       Progressing" in result.stdout
    table = subprocess.run(["kubectl", "get", "md", fraud], env=env, capture_output=True, text=True, check=False)
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "READY", "AGE"]
    assert row.split()[:6] == [fraud, "Progressing", "v1", "v2", "25", "4/4"]


@pytest.mark.parametrize("verb", ["promote", "abort", "retry", "undo"])
def test_verbs_set_the_command_annotation_once_per_request(
    kubeconfig: Path, kube_http: httpx.Client, fraud: str, verb: str
) -> None:
    url = f"{MDS.format(ns='default')}/{fraud}"
    before = kube_http.get(url).json()["metadata"]
    values = []
    for _ in range(2):
        result = plugin(kubeconfig, verb, fraud)
        assert result.returncode == 0, result.stderr
        assert f"{verb} requested" in result.stdout
        values.append(kube_http.get(url).json()["metadata"]["annotations"]["sluice.dev/command"])
    pattern = rf"{verb}:\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ-[0-9a-f]{{6}}"
    assert all(re.fullmatch(pattern, value) for value in values), values
    assert values[0] != values[1]  # each request is new to the operator
    after = kube_http.get(url).json()["metadata"]
    assert after["generation"] == before["generation"]  # an annotation is no spec change
    assert f"pending {values[1]}" in plugin(kubeconfig, "status", fraud).stdout


def test_namespace_and_context_options(kube_emulator: EmulatorThread, kube_http: httpx.Client, tmp_path: Path) -> None:
    assert kube_http.post("/api/v1/namespaces", json={"metadata": {"name": "team-a"}}).status_code == 201
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": "other"}
    assert kube_http.post(MDS.format(ns="team-a"), json=body).status_code == 201
    config = kube_emulator.write_kubeconfig(tmp_path / "config", namespace="team-a")
    assert "Phase:       Pending" in plugin(config, "status", "other").stdout  # the context's namespace
    assert plugin(None, "--kubeconfig", str(config), "-n", "team-a", "status", "other").returncode == 0
    assert plugin(None, "status", "other", "--kubeconfig", str(config), "--context", "emulator").returncode == 0
    missing = plugin(config, "status", "other", "-n", "default")
    assert missing.returncode == 1
    assert 'modeldeployment "other" not found in namespace "default"' in missing.stderr


def test_errors_are_clear(kubeconfig: Path, tmp_path: Path) -> None:
    absent = plugin(tmp_path / "nope", "status", "x")
    assert absent.returncode == 1
    assert "error: cannot load the kubeconfig" in absent.stderr
    assert "Traceback" not in absent.stderr
    unknown = plugin(kubeconfig, "status", "x", "--context", "no-such-context")
    assert unknown.returncode == 1
    assert "no-such-context" in unknown.stderr
    usage = plugin(kubeconfig, "promote")
    assert usage.returncode == 2
    assert "name" in usage.stderr
    assert plugin(kubeconfig).returncode == 2


def test_watch_prints_each_change(
    kubeconfig: Path, kube_emulator: EmulatorThread, kube_http: httpx.Client, fraud: str
) -> None:
    def watches() -> int:
        return int(kube_emulator.call(lambda: kube_emulator.emulator.watching("modeldeployments", "sluice.dev")))

    before = watches()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    command = [str(PLUGIN), "status", fraud, "--watch", "--timeout", "8"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the first picture is being printed (flushed)
        assert first.startswith("--- "), first
        wait_for("the plugin's watch to open", lambda: watches() > before, 10, 0.02)
        url = f"{MDS.format(ns='default')}/{fraud}/status"
        patched = kube_http.patch(url, json={"status": {"phase": "Promoting", "canaryWeight": 100}}, headers=MERGE)
        assert patched.status_code == 200, patched.text
        rest, err = process.communicate(timeout=30)
        out = first + rest
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    pictures = out.split("--- ")[1:]
    assert len(pictures) == 2, out
    # The first picture is whatever the object showed when the watch began; the second must show the patch.
    assert "Phase:       Promoting" not in pictures[0], out
    assert "Phase:       Promoting" in pictures[1], out
    kube_http.patch(url, json={"status": STATUS}, headers=MERGE)
