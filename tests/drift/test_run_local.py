"""`sluice run` on the DriftPolicy example, as a user runs it: real router, real counters, inputs that shift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "05-drift-local.yaml"
SLUICE = str(Path(sys.executable).parent / "sluice")


@pytest.mark.slow
def test_shifted_inputs_go_ok_warning_drifted_and_roll_back() -> None:
    done = subprocess.run(
        [SLUICE, "run", "-f", str(EXAMPLE), "--backend", "onnx", "--load", "40", "--shift-after", "12s"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert out.index("DriftOk") < out.index("DriftDrifted") < out.index("rolled fraud back to v1")
    assert "result: Drifted" in out
    assert "[inputs shifted]" in out


@pytest.mark.slow
def test_json_output_is_the_final_status(tmp_path: Path) -> None:
    marker = tmp_path / "retrained"
    policy = EXAMPLE.read_text().replace("type: rollback", "type: retrain\n    jobTemplate: {spec: {}}")
    example = tmp_path / "drift.yaml"
    example.write_text(
        policy.replace("file:models/", f"file:{EXAMPLE.parent}/models/").replace(
            "file://models/", f"file://{EXAMPLE.parent}/models/"
        )
    )
    command = f'echo "$SLUICE_POLICY $SLUICE_DRIFTED_FEATURES" > {marker}'
    done = subprocess.run(
        [
            SLUICE,
            "run",
            "-f",
            str(example),
            "--backend",
            "onnx",
            "--load",
            "40",
            "--shift-after",
            "10s",
            "--output",
            "json",
            "--retrain-command",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    status = json.loads(done.stdout)
    assert status["state"] == "Drifted"
    assert status["lastActionType"] == "retrain"
    assert status["lastJob"].startswith("fraud-drift-retrain-")
    assert marker.read_text().startswith("fraud-drift features[")


def test_an_unreachable_reference_is_a_condition_and_exit_3(tmp_path: Path) -> None:
    example = tmp_path / "drift.yaml"
    example.write_text(
        EXAMPLE.read_text()
        .replace("file://models/fraud-v1.profile.json", "http://127.0.0.1:9/fraud/v1.profile.json")  # refused
        .replace("file:models/", f"file:{EXAMPLE.parent}/models/")
    )
    done = subprocess.run(
        [SLUICE, "run", "-f", str(example), "--backend", "onnx", "--output", "json", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    status = json.loads(done.stdout)
    evaluated = next(c for c in status["conditions"] if c["type"] == "Evaluated")
    assert evaluated["reason"] == "ReferenceUnreachable"
    assert "spec.reference.uri" in evaluated["message"]
    assert "lastAction" not in status


FROM_STABLE = REPO / "manifests" / "examples" / "06-drift-from-stable.yaml"


@pytest.mark.slow
def test_from_stable_version_captures_the_first_window_then_the_shift_drifts(tmp_path: Path) -> None:
    """Example 06 as a user runs it, with a shorter window (8 s) so the test moves: the served version's first
    window of unshifted load becomes the reference, then the shift goes Ok -> Drifted and rolls back."""
    example = tmp_path / "drift.yaml"
    example.write_text(
        FROM_STABLE.read_text().replace("window: 12s", "window: 8s").replace("interval: 5s", "interval: 2s")
        .replace("file:models/", f"file:{FROM_STABLE.parent}/models/")
    )  # fmt: skip
    command = [SLUICE, "run", "-f", str(example), "--backend", "onnx", "--load", "40", "--shift-after", "20s"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert out.index("CapturingReference") < out.index("captured the reference from v2") < out.index("DriftOk")
    assert out.index("DriftOk") < out.index("DriftDrifted") < out.index("rolled fraud back to v1")
    assert "reference: Captured from version v2" in out
    # The JSON status names where the reference came from.
    done = subprocess.run([*command, "--output", "json"], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    reference = json.loads(done.stdout)["reference"]
    assert (reference["source"], reference["state"], reference["version"]) == ("stableVersion", "Captured", "v2")
    assert reference["rows"] >= 200


def test_from_stable_version_refuses_a_shift_inside_the_capture_window() -> None:
    done = subprocess.run(
        [SLUICE, "run", "-f", str(FROM_STABLE), "--load", "40", "--shift-after", "10s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--shift-after: 10s is shorter than spec.window (12s)" in done.stderr
