"""Every example is valid for the model AND the CRD; every invalid example is refused by both, naming its field."""

from __future__ import annotations

import io
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from tests.foundation.crd_tools import REPO, server_errors

from sluice.api.loading import load_file
from sluice.cli.main import main

EXAMPLES = REPO / "manifests" / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
OWN = [p for p in VALID if int(p.name[:2]) >= 10]


def _expectations(path: Path) -> tuple[str, str]:
    text = path.read_text()
    field = re.search(r"^# expect-field: (\S+)$", text, re.MULTILINE)
    error = re.search(r"^# expect-error: (.+)$", text, re.MULTILINE)
    assert field, f"{path.name} must say `# expect-field: PATH`"
    assert error, f"{path.name} must say `# expect-error: MESSAGE`"
    return field.group(1), error.group(1).strip()


def test_there_are_examples_for_every_kind_and_strategy() -> None:
    docs = [d for p in OWN for d in yaml.safe_load_all(p.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ModelDeployment", "Experiment", "DriftPolicy"}
    strategies = {
        d["spec"].get("rollout", {}).get("strategy", "canary") for d in docs if d["kind"] == "ModelDeployment"
    }
    assert strategies == {"canary", "shadow", "blueGreen"}
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_example_is_numbered_commented_and_valid_both_ways(path: Path) -> None:
    assert re.fullmatch(r"\d\d-[a-z0-9-]+\.yaml", path.name), "examples are numbered: NN-what-it-shows.yaml"
    assert path.read_text().startswith("#"), "an example starts with a comment saying what it teaches"
    loaded = load_file(path)
    assert loaded
    for doc in loaded:
        assert doc.error is None, str(doc.error)
    for raw in yaml.safe_load_all(path.read_text()):
        if raw:
            assert server_errors(raw) == [], f"{path.name}: the CRD schema refuses {raw['metadata']['name']}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_refused_naming_the_field(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    field, error = _expectations(path)
    assert main(["validate", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert f" {field}" in err, f"sluice validate said {err!r}; expected the field {field}"
    assert error in err, f"sluice validate said {err!r}; expected ...{error}..."
    (raw,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crd_errors = server_errors(raw)
    assert any(e.startswith(field) for e in crd_errors), f"CRD errors {crd_errors} do not name {field}"


def test_gpu_example_lands_on_the_kind_gpu_worker() -> None:
    kind = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    (gpu_node,) = [n for n in kind["nodes"] if n.get("labels", {}).get("sluice.dev/gpu") == "true"]
    assert gpu_node["labels"]["nvidia.com/gpu.present"] == "true"
    join = yaml.safe_load(gpu_node["kubeadmConfigPatches"][0])
    (taint,) = join["nodeRegistration"]["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("nvidia.com/gpu", "present", "NoSchedule")
    resources = yaml.safe_load((EXAMPLES / "13-triton-gpu.yaml").read_text())["spec"]["resources"]
    assert resources["gpu"] >= 1
    assert resources["nodeSelector"].items() <= gpu_node["labels"].items()

    def tolerates(tol: dict[str, str]) -> bool:
        same_key = tol.get("key") in (None, taint["key"])
        value_ok = tol.get("operator") == "Exists" or tol.get("value") == taint["value"]
        return same_key and value_ok and tol.get("effect") in (None, taint["effect"])

    assert any(tolerates(t) for t in resources["tolerations"])
    chart_gpu = yaml.safe_load((REPO / "helm" / "sluice" / "values.yaml").read_text())["gpu"]
    assert chart_gpu["nodeSelector"].items() <= gpu_node["labels"].items()
    assert any(tolerates(t) for t in chart_gpu["tolerations"])


def test_validate_reports_each_document_and_exits_nonzero_on_any_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = (EXAMPLES / "11-shadow.yaml").read_text()
    bad = (EXAMPLES / "invalid" / "canary-steps-decreasing.yaml").read_text()
    multi = tmp_path / "multi.yaml"
    multi.write_text(good + "\n---\n" + bad)
    assert main(["validate", "-f", str(multi)]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == "OK ModelDeployment/fraud-shadow"
    assert "spec.rollout.canary.steps[1].weight: canary step weights must be strictly increasing" in err
    assert main(["validate", "-f", str(EXAMPLES / "11-shadow.yaml"), "-f", str(EXAMPLES / "14-experiment.yaml")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "OK ModelDeployment/fraud-shadow",
        "OK Experiment/fraud-threshold-ab",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: ModelDeployment\nmetadata: {name: x}\nspec: [unclosed", "invalid YAML at line 3"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "kind: unknown kind 'Pod'"),
        (
            "apiVersion: sluice.dev/v1\nkind: Experiment\nmetadata: {name: e}\n",
            "apiVersion: expected sluice.dev/v1alpha1",
        ),
        ("- just\n- a list\n", "expected a mapping"),
        (
            "apiVersion: sluice.dev/v1alpha1\nkind: DriftPolicy\nmetadata: {name: d}\nspec: {targett: {}}\n",
            "spec.targett",
        ),
        ("", "no YAML documents"),
    ],
)
def test_validate_names_the_problem_with_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["validate", "-f", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", "/nonexistent/x.yaml"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_validate_takes_directories_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["validate", "-f", str(EXAMPLES)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == sum(
        1 for p in VALID for d in yaml.safe_load_all(p.read_text()) if d
    )
    assert main(["validate", "-f", str(EXAMPLES / "invalid")]) == 1
    assert len(capsys.readouterr().err.splitlines()) >= len(INVALID)
    assert main(["validate", "-f", str(tmp_path)]) == 1
    assert "no *.yaml files" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO((EXAMPLES / "14-experiment.yaml").read_text()))
    assert main(["validate", "-f", "-"]) == 0
    assert capsys.readouterr().out == "OK Experiment/fraud-threshold-ab\n"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xfb\xfc\x00\x01")
    assert main(["validate", "-f", str(binary)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_retrain_job_templates_are_valid_jobs() -> None:
    """jobTemplate is free-form in the CRD (preserved as-is), so check the examples' templates as real batch/v1 Jobs."""
    checked = 0
    for path in VALID:
        for doc in yaml.safe_load_all(path.read_text()):
            template = (doc or {}).get("spec", {}).get("action", {}).get("jobTemplate") if doc else None
            if doc and doc["kind"] == "DriftPolicy" and template:
                job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retrain"}, **template}
                kubernetes_validate.validate(job, "1.33", strict=True)
                checked += 1
    assert checked >= 1
