"""`sluice run` end to end on the committed examples: real router, real ONNX models, real rollout core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "sluice.cli.main"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLUICE, "run", *args], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.parametrize(
    ("example", "code", "phase", "stable"),
    [("01-canary-good.yaml", 0, "Succeeded", "v2"), ("02-canary-bad.yaml", 1, "RolledBack", "v1")],
)
def test_example_ends_as_documented(example: str, code: int, phase: str, stable: str) -> None:
    result = _run("-f", f"manifests/examples/{example}", "--load", "40", "--backend", "onnx", "--output", "json")
    assert result.returncode == code, result.stderr[-3000:]
    status = json.loads(result.stdout)
    assert status["phase"] == phase
    assert status["stable"]["version"] == stable
    assert status["canaryWeight"] == 0
    assert status["history"][0]["model"]["version"] == "v2"
    if phase == "RolledBack":
        assert "drift" in status["history"][0]["reason"]


def test_live_view_shows_weights_and_checks() -> None:
    result = _run("-f", "manifests/examples/02-canary-bad.yaml", "--load", "40", "--backend", "onnx")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "weight=25%" in result.stdout
    assert "drift=" in result.stdout
    assert "(Fail" in result.stdout
    assert "result: RolledBack" in result.stdout


def test_invalid_yaml_is_refused_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: sluice.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\n"
        "spec: {model: {name: x, uri: 'file:m.onnx', version: v1},\n"
        "       rollout: {canary: {steps: [{weight: 50}, {weight: 10}]}}}\n"
    )
    result = _run("-f", str(bad))
    assert result.returncode == 2
    assert "spec.rollout.canary.steps" in result.stderr
