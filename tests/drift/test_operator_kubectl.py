"""`kubectl sluice drift status NAME` against the API emulator: state, score, last action, the per-feature table and
the conditions of a DriftPolicy whose status the operator wrote (here written by the test)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import httpx
from tests.support.emulator import EmulatorThread

from sluice.cli.kubectl import main

STATUS = {
    "state": "Drifted",
    "score": 0.61,
    "lastEvaluated": "2026-11-29T12:00:00Z",
    "lastAction": "2026-11-29T12:00:00Z",
    "lastActionType": "retrain",
    "lastJob": "fraud-drift-retrain-20261129120000",
    "samples": 1600,
    "driftedFeatures": 1,
    "message": "Drifted: 1 of 2 features drifted (features[0] psi 0.61)",
    "features": [
        {"name": "features[0]", "method": "psi", "score": 0.61, "samples": 1600, "state": "Drifted"},
        {"name": "features[3]", "method": "ks", "score": 0.02, "pValue": 0.8, "adjustedPValue": 0.8,
         "samples": 1600, "state": "Ok"},
    ],
    "conditions": [
        {"type": "Evaluated", "status": "True", "reason": "Evaluated", "message": "ok",
         "lastTransitionTime": "2026-11-29T12:00:00Z"},
        {"type": "Retrained", "status": "True", "reason": "NewVersion", "message": "Job x: reported version v3",
         "lastTransitionTime": "2026-11-29T12:00:00Z"},
    ],
}  # fmt: skip


def test_drift_status_shows_the_per_feature_table(kube_emulator: EmulatorThread, kubeconfig: Path) -> None:
    ns = f"k-{uuid.uuid4().hex[:8]}"
    path = f"/apis/sluice.dev/v1alpha1/namespaces/{ns}/driftpolicies"
    with httpx.Client(base_url=kube_emulator.url, timeout=30) as http:
        assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        doc = {
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "DriftPolicy",
            "metadata": {"name": "fraud-drift"},
            "spec": {
                "target": {"name": "fraud"},
                "reference": {"uri": "https://example.com/p.json"},
                "features": [{"name": "features", "index": 0}, {"name": "features", "index": 3, "method": "ks"}],
            },
        }
        assert http.post(path, json=doc).status_code == 201
        r = http.patch(f"{path}/fraud-drift/status", json={"status": STATUS},
                       headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        assert r.status_code == 200, r.text
        out = io.StringIO()
        assert main(["drift", "status", "fraud-drift", "--kubeconfig", str(kubeconfig), "-n", ns], out=out) == 0
        text = out.getvalue()
        assert "Target:      fraud   method psi" in text
        assert "State:       Drifted   score 0.61, 1 drifted, 1600 rows" in text
        assert "last: retrain at 2026-11-29T12:00:00Z, Job fraud-drift-retrain-20261129120000" in text
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.startswith("FEATURE"))
        assert lines[header].split() == ["FEATURE", "METHOD", "SCORE", "P", "ADJ.", "P", "SAMPLES", "STATE"]
        assert lines[header + 1].split()[:3] == ["features[0]", "psi", "0.61"]
        assert lines[header + 2].split()[-1] == "Ok"
        assert any(line.startswith("Retrained") and "NewVersion" in line for line in lines)
        missing = io.StringIO()
        assert main(["drift", "status", "nope", "--kubeconfig", str(kubeconfig), "-n", ns], out=missing) == 1
        assert "Reference:   https://example.com/p.json" in text
        # A captured reference: its version, rows, time and ConfigMap.
        captured = {**doc, "metadata": {"name": "captured"}}
        captured["spec"] = {**doc["spec"], "reference": {"fromStableVersion": True}}
        assert http.post(path, json=captured).status_code == 201
        reference = {"source": "stableVersion", "state": "Captured", "version": "v1", "rows": 9000,
                     "capturedAt": "2026-11-29T12:00:00Z", "configMap": "captured-reference"}  # fmt: skip
        r = http.patch(f"{path}/captured/status", json={"status": {"state": "Ok", "reference": reference}},
                       headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
        assert r.status_code == 200, r.text
        out = io.StringIO()
        assert main(["drift", "status", "captured", "--kubeconfig", str(kubeconfig), "-n", ns], out=out) == 0
        assert (
            "Reference:   captured from stable version v1: 9000 rows at 2026-11-29T12:00:00Z, "
            "ConfigMap captured-reference"
        ) in out.getvalue()
        http.delete(f"/api/v1/namespaces/{ns}")
