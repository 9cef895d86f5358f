"""`sluice run` on the Experiment examples: the real router (sticky arms, outcomes route, per-arm counters), the
built-in provider reading them from /metrics, the ExperimentLoop and the real core, with simulated outcomes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.local.experiment import parse_outcomes

REPO = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "sluice.cli.main"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLUICE, "run", *args], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.parametrize("backend", ["onnx", pytest.param("triton", marks=pytest.mark.triton)])
def test_ab_example_concludes_with_the_better_arm_and_promotes_it(backend: str) -> None:
    """Both arms as versions of the plane: in-process onnxruntime, or a real tritonserver behind the router."""
    result = _run(
        "-f", "manifests/examples/03-experiment-ab.yaml", "--backend", backend, "--load", "80",
        "--outcomes", "control=0.05,treatment=0.25", "--output", "json", "--timeout", "200",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert status["phase"] == "Concluded"
    assert status["winner"] == "treatment"
    control, treatment = status["variants"]
    assert control["samples"] >= 200
    assert treatment["samples"] >= 200
    assert treatment["liftLow"] > 0  # the interval of the lift excludes zero
    assert treatment["pValue"] <= 0.05
    assert [control["weight"], treatment["weight"]] == [0, 100]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Concluded"] == "True"


def test_aa_example_stops_without_a_winner_at_maximum_duration() -> None:
    result = _run(
        "-f", "manifests/examples/04-experiment-aa.yaml", "--backend", "onnx", "--load", "40",
        "--outcomes", "control=0.10,treatment=0.10", "--timeout", "200",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "result: Stopped — winner none — no verdict: maximum duration 30s reached" in result.stdout
    assert "outcomes reported" in result.stdout
    assert "(0 failed)" in result.stdout


def test_bad_outcomes_and_a_missing_target_are_refused(tmp_path: Path) -> None:
    result = _run("-f", "manifests/examples/03-experiment-ab.yaml", "--outcomes", "control=abc")
    assert result.returncode == 2
    assert "--outcomes" in result.stderr
    result = _run("-f", "manifests/examples/03-experiment-ab.yaml", "--outcomes", "nobody=0.1")
    assert result.returncode == 2
    assert "not arms of the experiment" in result.stderr
    only = tmp_path / "exp.yaml"
    text = (REPO / "manifests/examples/03-experiment-ab.yaml").read_text()
    only.write_text(text.split("---\n", 1)[1])
    result = _run("-f", str(only))
    assert result.returncode == 2
    assert "spec.target.name" in result.stderr


def test_an_arm_whose_model_cannot_load_is_stopped_naming_its_variant(tmp_path: Path) -> None:
    models = (REPO / "manifests/examples/models").as_uri()
    spec = tmp_path / "broken-arm.yaml"
    spec.write_text(
        f"""apiVersion: sluice.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: fraud}}
spec:
  model: {{name: fraud, uri: "{models}/fraud-v1.onnx", version: v1}}
  analysis: {{progressDeadline: 2s}}
---
apiVersion: sluice.dev/v1alpha1
kind: Experiment
metadata: {{name: broken}}
spec:
  target: {{name: fraud}}
  variants:
    - {{name: control, weight: 40, model: {{name: fraud, uri: "{models}/fraud-v1.onnx", version: v1}}}}
    - {{name: treatment, weight: 30, model: {{name: fraud, uri: "{models}/missing.onnx", version: v2}}}}
    - {{name: third, weight: 30, model: {{name: fraud, uri: "{models}/fraud-v2.onnx", version: v3}}}}
  primaryMetric: {{name: converted}}
  minimumSamples: 1000000
  interval: 1s
  maximumDuration: 12s
  endPolicy: manual
"""
    )
    result = _run(
        "-f", str(spec), "--backend", "onnx", "--load", "30", "--output", "json", "--timeout", "60",
        "--outcomes", "control=0.1,treatment=0.1,third=0.1",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert status["verdict"] == "no verdict: maximum duration 12s reached"
    control, treatment, third = status["variants"]
    assert treatment["stopped"]
    assert not control.get("stopped")
    assert not third.get("stopped")
    assert treatment["stoppedReason"].startswith("spec.variants[1] (treatment) cannot serve: model ")
    assert "missing.onnx" in treatment["stoppedReason"]
    assert control["samples"] > 0
    assert third["samples"] > 0
    assert "ArmsHealthy" in {c["type"] for c in status["conditions"]}


def test_parse_outcomes() -> None:
    assert parse_outcomes("control=0.1, treatment=0.12") == {"control": (0.1, 0.0), "treatment": (0.12, 0.0)}
    assert parse_outcomes("a=5:1.5") == {"a": (5.0, 1.5)}
    with pytest.raises(ValueError, match="ARM=RATE"):
        parse_outcomes("control")
