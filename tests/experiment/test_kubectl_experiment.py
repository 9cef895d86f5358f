"""`kubectl sluice experiment status|conclude|stop` as the real console script against the API emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from tests.support.emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
PLUGIN = Path(sys.executable).parent / "kubectl-sluice"
EXPS = "/apis/sluice.dev/v1alpha1/namespaces/default/experiments"
MERGE = {"Content-Type": "application/merge-patch+json"}
STATUS = {
    "phase": "Running",
    "leader": "treatment",
    "lift": "+20.0%",
    "confidence": "97.0%",
    "message": "look 12: outcomes per arm control 900, treatment 910",
    "salt": "uid-1",
    "looks": 12,
    "variants": [
        {"name": "control", "weight": 50, "samples": 900, "value": 0.1, "probabilityBest": 0.02},
        {
            "name": "treatment",
            "weight": 50,
            "samples": 910,
            "value": 0.12,
            "lift": 0.2,
            "liftLow": 0.05,
            "liftHigh": 0.35,
            "pValue": 0.03,
            "probabilityBest": 0.98,
        },
    ],
}


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([str(PLUGIN), *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_experiment_status_and_stop(kube_emulator: EmulatorThread, kubeconfig: Path) -> None:
    body = list(yaml.safe_load_all((REPO / "manifests/examples/03-experiment-ab.yaml").read_text()))[1]
    body["metadata"]["name"] = "kubectl-ab"
    with httpx.Client(base_url=kube_emulator.url, timeout=30) as http:
        assert http.post(EXPS, json=body).status_code == 201
        written = http.patch(f"{EXPS}/kubectl-ab/status", json={"status": STATUS}, headers=MERGE)
        assert written.status_code == 200, written.text  # the status conforms to the CRD's status schema
        result = plugin(kubeconfig, "experiment", "status", "kubectl-ab")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "Phase:       Running   leader treatment +20.0% (97.0%)" in out
        row = next(line for line in out.splitlines() if line.startswith("treatment"))
        assert row.split() == ["treatment", "50%", "910", "0.12", "+20.0%", "[+5.0%,", "+35.0%]", "0.03", "0.98",
                               "running"]  # fmt: skip
        result = plugin(kubeconfig, "experiment", "stop", "kubectl-ab")
        assert result.returncode == 0, result.stderr
        annotations = http.get(f"{EXPS}/kubectl-ab").json()["metadata"]["annotations"]
        assert annotations["sluice.dev/command"].startswith("stop:")
        result = plugin(kubeconfig, "experiment", "conclude", "kubectl-ab")
        assert result.returncode == 0, result.stderr
        assert "conclude requested" in result.stdout
        annotations = http.get(f"{EXPS}/kubectl-ab").json()["metadata"]["annotations"]
        assert annotations["sluice.dev/command"].startswith("conclude:")
        missing = plugin(kubeconfig, "experiment", "status", "nope")
        assert missing.returncode == 1
        assert 'experiment "nope" not found' in missing.stderr
