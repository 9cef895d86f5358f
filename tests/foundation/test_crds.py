"""The generated CRDs: up to date, structural, documented, and refusing exactly what the models refuse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from tests.foundation.crd_tools import CRD_DIR, REPO, cel_errors, cel_program, crd, schema, server_errors

from sluice.api import ModelDeployment
from sluice.api.base import ApiModel
from sluice.api.crd import CRDS, render_all
from sluice.api.loading import ApiValidationError, parse_object
from sluice.cli.main import main

K8S_VERSION = "1.33"


def _walk(node: dict[str, Any], path: str = "") -> Any:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_crds_are_up_to_date_with_the_models() -> None:
    for filename, text in render_all().items():
        path = CRD_DIR / filename
        assert path.is_file(), f"{path} missing: run `sluice crds`"
        assert path.read_text() == text, f"{path} is out of date with operator/sluice/api: run `sluice crds`"


def test_chart_crds_are_byte_identical_copies() -> None:
    for filename in render_all():
        chart_copy = REPO / "helm" / "sluice" / "crds" / filename
        assert chart_copy.read_bytes() == (CRD_DIR / filename).read_bytes(), f"{chart_copy} differs: run `sluice crds`"


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_crd_is_a_valid_kubernetes_object(info: Any) -> None:
    kubernetes_validate.validate(crd(info.kind), K8S_VERSION, strict=True)


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_every_property_has_a_description(info: Any) -> None:
    missing = [
        p for p, node in _walk(schema(info.kind)) if p and not p.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert not missing, f"properties without description (kubectl explain shows nothing): {missing}"


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_schema_is_structural(info: Any) -> None:
    for path, node in _walk(schema(info.kind)):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"):
            assert banned not in node, f"{path or '(root)'} has {banned}: not structural"
        if node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{path}: properties + additionalProperties"
        )
        if node["type"] == "array" and path.startswith(".spec"):
            assert "maxItems" in node, f"{path}: array without maxItems (CEL cost estimation)"
        if node["type"] == "string" and path.startswith(".spec"):
            assert "maxLength" in node or "enum" in node, f"{path}: string without maxLength (CEL cost estimation)"
        if node["type"] == "object" and path.startswith(".spec") and "properties" not in node:
            assert "additionalProperties" in node, f"{path}: free-form object"


@pytest.mark.parametrize("info", CRDS, ids=lambda i: i.kind)
def test_cel_rules_compile_and_field_paths_exist(info: Any) -> None:
    for path, node in _walk(schema(info.kind)):
        for rule in node.get("x-kubernetes-validations", []):
            cel_program(rule["rule"])
            target = node
            for part in filter(None, rule.get("fieldPath", "").split(".")):
                assert part in target.get("properties", {}), f"{path}: fieldPath {rule['fieldPath']} not in schema"
                target = target["properties"][part]


def test_names_columns_and_subresources() -> None:
    expected = {
        "ModelDeployment": (["md", "mdep"], ["Phase", "Stable", "Canary", "Weight", "Ready", "Age"]),
        "Experiment": (["exp"], ["Phase", "Leader", "Lift", "Confidence", "Age"]),
        "DriftPolicy": (["dp"], ["Target", "Status", "Score", "Age"]),
    }
    for kind, (short, columns) in expected.items():
        spec = crd(kind)["spec"]
        assert spec["group"] == "sluice.dev"
        assert spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["sluice"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]] == columns


# ---- one rule set, tested both ways ---------------------------------------------------------------------

MODEL = {"name": "iris", "uri": "file:models/iris.onnx", "version": "v1"}
MD: dict[str, Any] = {
    "apiVersion": "sluice.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "iris"},
    "spec": {
        "model": MODEL,
        "rollout": {"strategy": "canary", "canary": {"steps": [{"weight": 10}, {"weight": 50, "pause": {}}]}},
        "analysis": {"checks": [{"name": "errors", "type": "error-rate", "max": 0.01}]},
    },
}
EXP: dict[str, Any] = {
    "apiVersion": "sluice.dev/v1alpha1",
    "kind": "Experiment",
    "metadata": {"name": "ab"},
    "spec": {
        "target": {"name": "iris"},
        "variants": [
            {"name": "control", "model": MODEL, "weight": 50},
            {"name": "treatment", "model": {**MODEL, "version": "v2"}, "weight": 50},
        ],
        "primaryMetric": {"name": "clicked"},
    },
}
DP: dict[str, Any] = {
    "apiVersion": "sluice.dev/v1alpha1",
    "kind": "DriftPolicy",
    "metadata": {"name": "drift"},
    "spec": {
        "target": {"name": "iris"},
        "reference": {"fromStableVersion": True},
        "features": [{"name": "input", "index": 0}],
    },
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of base with the dotted path (list indices as numbers) set; value DELETE removes it."""
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = obj
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    key: Any = int(last) if last.isdigit() else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return obj


DELETE = object()
_CHECK = "spec.analysis.checks.0"

# (object, field path that both sides must name)
INVALID = {
    "steps-not-increasing": (
        _with(MD, "spec.rollout.canary.steps", [{"weight": 50}, {"weight": 20}]),
        "spec.rollout.canary.steps[1].weight",
    ),
    "steps-repeated": (
        _with(MD, "spec.rollout.canary.steps", [{"weight": 20}, {"weight": 20}]),
        "spec.rollout.canary.steps[1].weight",
    ),
    "step-weight-over-100": (
        _with(MD, "spec.rollout.canary.steps", [{"weight": 10}, {"weight": 101}]),
        "spec.rollout.canary.steps[1].weight",
    ),
    "step-weight-zero": (
        _with(MD, "spec.rollout.canary.steps", [{"weight": 0}]),
        "spec.rollout.canary.steps[0].weight",
    ),
    "no-steps": (_with(MD, "spec.rollout.canary.steps", []), "spec.rollout.canary.steps"),
    "mirror-percent-over-100": (
        _with(MD, "spec.rollout", {"strategy": "shadow", "shadow": {"mirrorPercent": 150}}),
        "spec.rollout.shadow.mirrorPercent",
    ),
    "settings-of-another-strategy": (
        _with(MD, "spec.rollout", {"strategy": "blueGreen", "canary": {"steps": [{"weight": 5}]}}),
        "spec.rollout.canary",
    ),
    "shadow-settings-with-canary": (
        _with(MD, "spec.rollout.shadow", {"mirrorPercent": 10}),
        "spec.rollout.shadow",
    ),
    "blue-green-settings-with-shadow": (
        _with(MD, "spec.rollout", {"strategy": "shadow", "blueGreen": {"autoPromote": False}}),
        "spec.rollout.blueGreen",
    ),
    "promql-without-query": (
        _with(MD, _CHECK, {"name": "p", "type": "promql", "max": 1.0}),
        "spec.analysis.checks[0].query",
    ),
    "query-on-builtin-check": (
        _with(MD, _CHECK, {"name": "e", "type": "error-rate", "max": 0.1, "query": "up"}),
        "spec.analysis.checks[0].query",
    ),
    "check-without-bound": (_with(MD, _CHECK, {"name": "e", "type": "error-rate"}), "spec.analysis.checks[0]"),
    "ratio-on-drift-check": (
        _with(MD, _CHECK, {"name": "d", "type": "prediction-drift", "maxRatioToStable": 2.0}),
        "spec.analysis.checks[0].maxRatioToStable",
    ),
    "min-on-builtin-check": (
        _with(MD, _CHECK, {"name": "l", "type": "latency-p99", "min": 0.1}),
        "spec.analysis.checks[0].min",
    ),
    "error-rate-max-above-1": (
        _with(MD, _CHECK, {"name": "e", "type": "error-rate", "max": 5.0}),
        "spec.analysis.checks[0].max",
    ),
    "negative-latency-max": (
        _with(MD, _CHECK, {"name": "l", "type": "latency-p99", "max": -1.0}),
        "spec.analysis.checks[0].max",
    ),
    "promql-min-above-max": (
        _with(
            _with(MD, "spec.analysis.provider", {"type": "prometheus", "address": "http://prom:9090"}),
            _CHECK,
            {"name": "p", "type": "promql", "query": "up", "min": 2.0, "max": 1.0},
        ),
        "spec.analysis.checks[0].min",
    ),
    "promql-with-builtin-provider": (
        _with(MD, _CHECK, {"name": "p", "type": "promql", "query": "up", "max": 1.0}),
        "spec.analysis.checks",
    ),
    "duplicate-check-names": (
        _with(
            MD,
            "spec.analysis.checks",
            [{"name": "e", "type": "error-rate", "max": 0.1}, {"name": "e", "type": "latency-p99", "max": 0.5}],
        ),
        "spec.analysis.checks",
    ),
    "shadow-disagreement-in-canary": (
        _with(MD, _CHECK, {"name": "s", "type": "shadow-disagreement", "max": 0.1}),
        "spec.analysis.checks",
    ),
    "prometheus-without-address": (
        _with(MD, "spec.analysis.provider", {"type": "prometheus"}),
        "spec.analysis.provider.address",
    ),
    "min-replicas-above-max": (
        _with(MD, "spec.scaling", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "spec.scaling.autoscaling.minReplicas",
    ),
    "preferred-batch-above-max": (
        _with(MD, "spec.batching", {"maxBatchSize": 8, "preferredBatchSizes": [4, 16]}),
        "spec.batching.preferredBatchSizes",
    ),
    "exists-toleration-with-value": (
        _with(MD, "spec.resources", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.resources.tolerations[0].value",
    ),
    "bad-duration": (_with(MD, "spec.analysis.interval", "30 seconds"), "spec.analysis.interval"),
    "unknown-backend": (_with(MD, "spec.backend", "torchserve"), "spec.backend"),
    "unknown-field": (_with(MD, "spec.replicas", 3), "spec"),
    "model-uri-scheme": (_with(MD, "spec.model.uri", "ftp://x/m.onnx"), "spec.model.uri"),
    "missing-model": (_with(MD, "spec.model", DELETE), "spec"),
    "name-not-a-dns-label": (_with(MD, "metadata.name", "fraud.v2"), "metadata.name"),
    "name-too-long": (_with(DP, "metadata.name", "d" * 64), "metadata.name"),
    "variant-weights-not-100": (_with(EXP, "spec.variants.1.weight", 40), "spec.variants"),
    "variant-names-repeated": (_with(EXP, "spec.variants.1.name", "control"), "spec.variants"),
    "one-variant": (_with(EXP, "spec.variants", [EXP["spec"]["variants"][0]]), "spec.variants"),
    "guardrail-promql-without-query": (
        _with(EXP, "spec.guardrails", [{"name": "g", "type": "promql", "max": 1.0}]),
        "spec.guardrails[0].query",
    ),
    "primary-query-without-placeholders": (
        _with(EXP, "spec.primaryMetric", {"name": "converted", "query": "sum(signups_total)"}),
        "spec.primaryMetric.query",
    ),
    "query-on-builtin-guardrail": (
        _with(EXP, "spec.guardrails", [{"name": "g", "type": "error-rate", "max": 0.1, "query": "up"}]),
        "spec.guardrails[0].query",
    ),
    "guardrail-names-repeated": (
        _with(
            EXP,
            "spec.guardrails",
            [{"name": "g", "type": "error-rate", "max": 0.1}, {"name": "g", "type": "latency-p99", "max": 1.0}],
        ),
        "spec.guardrails",
    ),
    "alpha-too-large": (_with(EXP, "spec.alpha", 0.7), "spec.alpha"),
    "thompson-floor-too-high": (
        _with(
            _with(_with(EXP, "spec.allocation", "thompson"), "spec.allocationFloor", 40),
            "spec.variants",
            [
                {"name": "a", "model": MODEL, "weight": 34},
                {"name": "b", "model": {**MODEL, "version": "v2"}, "weight": 33},
                {"name": "c", "model": {**MODEL, "version": "v3"}, "weight": 33},
            ],
        ),
        "spec.allocationFloor",
    ),
    "reference-with-neither": (_with(DP, "spec.reference", {}), "spec.reference"),
    "reference-with-both": (
        _with(DP, "spec.reference", {"uri": "s3://b/p.json", "fromStableVersion": True}),
        "spec.reference",
    ),
    "warning-above-critical": (
        _with(DP, "spec.thresholds", {"warning": 0.5, "critical": 0.2}),
        "spec.thresholds.warning",
    ),
    "retrain-without-job": (_with(DP, "spec.action", {"type": "retrain"}), "spec.action.jobTemplate"),
    "job-without-retrain": (
        _with(DP, "spec.action", {"type": "alert", "jobTemplate": {"spec": {}}}),
        "spec.action.jobTemplate",
    ),
    "ks-on-categorical": (
        _with(DP, "spec.features.0", {"name": "colour", "type": "categorical", "method": "ks"}),
        "spec.features[0].method",
    ),
    "wasserstein-on-categorical": (
        _with(DP, "spec.features.0", {"name": "colour", "type": "categorical", "method": "wasserstein"}),
        "spec.features[0].method",
    ),
    "no-features": (_with(DP, "spec.features", []), "spec.features"),
}


@pytest.mark.parametrize("obj", [MD, EXP, DP], ids=lambda o: o["kind"])
def test_valid_objects_pass_both(obj: dict[str, Any]) -> None:
    parse_object(copy.deepcopy(obj))
    assert server_errors(obj) == []


# The API server names a rule's fieldPath; the model can name the exact item. Where they differ:
CRD_FIELD = {"steps-not-increasing": "spec.rollout.canary.steps", "steps-repeated": "spec.rollout.canary.steps"}


@pytest.mark.parametrize(("name", "obj", "field"), [(k, *v) for k, v in INVALID.items()], ids=INVALID.keys())
def test_invalid_object_refused_by_model_and_crd(name: str, obj: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiValidationError) as caught:
        parse_object(copy.deepcopy(obj))
    model_paths = [e.path for e in caught.value.errors]
    assert any(p.startswith(field) for p in model_paths), f"model named {model_paths}, expected {field}"
    errors = server_errors(obj)
    assert errors, "the CRD schema accepted what the model refused"
    crd_field = CRD_FIELD.get(name, field)
    assert any(e.startswith(crd_field) for e in errors), f"CRD errors {errors} do not name {crd_field}"


def test_omitted_strategy_settings_get_defaults() -> None:
    bare = {**MD, "spec": {"model": MODEL}}
    md = ModelDeployment.model_validate(bare)
    assert md.spec.rollout.canary is not None
    assert [s.weight for s in md.spec.rollout.canary.steps] == [10, 25, 50, 75]
    shadow = ModelDeployment.model_validate(_with(bare, "spec.rollout", {"strategy": "shadow"}))
    assert shadow.spec.rollout.shadow is not None
    assert shadow.spec.rollout.shadow.mirror_percent == 100
    assert server_errors(bare) == []


def _same_where_server_has(server: Any, model: Any, path: str) -> None:
    if isinstance(server, dict):
        assert isinstance(model, dict), path
        for key, value in server.items():
            assert key in model, f"{path}.{key}: the API server defaults it, the model does not"
            _same_where_server_has(value, model[key], f"{path}.{key}")
    elif isinstance(server, list):
        assert len(server) == len(model), path
        for i, (a, b) in enumerate(zip(server, model, strict=True)):
            _same_where_server_has(a, b, f"{path}[{i}]")
    else:
        assert server == model, f"{path}: API server default {server!r}, model default {model!r}"


@pytest.mark.parametrize("obj", [MD, EXP, DP, {**MD, "spec": {"model": MODEL}}], ids=["md", "exp", "dp", "md-bare"])
def test_crd_defaults_match_model_defaults(obj: dict[str, Any]) -> None:
    """Everything the API server fills in equals what the model fills in: one set of defaults."""
    from tests.support.emulator import apply_defaults

    server = apply_defaults(copy.deepcopy(obj), schema(obj["kind"]))
    model = parse_object(copy.deepcopy(obj)).model_dump(by_alias=True, mode="json", exclude_none=True)
    _same_where_server_has(server["spec"], model["spec"], "spec")


def test_field_errors_name_paths_and_keep_pydantic_details() -> None:
    bad = _with(MD, "spec.rollout.canary.steps", [{"weight": 50}, {"weight": 20}])
    with pytest.raises(ValidationError):
        ModelDeployment.model_validate(bad)
    with pytest.raises(ApiValidationError, match=r"spec\.rollout\.canary\.steps\[1\]\.weight: canary step weights"):
        parse_object(bad)


def test_cel_evaluator_is_not_vacuous() -> None:
    """The offline CEL evaluation really evaluates: a broken rule on a real object reports it."""
    node = {"x-kubernetes-validations": [{"rule": "self.a < 2", "message": "a too big", "fieldPath": ".a"}]}
    assert cel_errors(node, {"a": 5}) == ["a: a too big"]
    assert cel_errors(node, {"a": 1}) == []
    assert yaml.safe_dump(crd("ModelDeployment")).count("x-kubernetes-validations") >= 8


def _all_rules() -> dict[str, str]:
    """message -> model class name, for every cross-field rule of the API."""
    found: dict[str, str] = {}
    pending: list[type[ApiModel]] = [ApiModel]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        found.update({rule.message: cls.__name__ for rule in cls.rules})
    return found


def test_every_rule_is_exercised_both_ways_by_the_table() -> None:
    """No rule escapes the table: each one's message comes out of the model AND out of the CRD's CEL at least once."""
    model_messages: set[str] = set()
    crd_messages: set[str] = set()
    for obj, _ in INVALID.values():
        try:
            parse_object(copy.deepcopy(obj))
        except ApiValidationError as exc:
            model_messages |= {e.message for e in exc.errors}
        crd_messages |= {e.split(": ", 1)[1] for e in server_errors(obj)}
    rules = _all_rules()
    assert len(rules) >= 25
    assert not set(rules) - model_messages, f"rules never refused by the model: {set(rules) - model_messages}"
    assert not set(rules) - crd_messages, f"rules never refused by the CRD: {set(rules) - crd_messages}"


def test_sluice_crds_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    assert main(["crds", "--output-dir", str(out), "--chart-dir", str(tmp_path / "no-chart")]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    for path in out.iterdir():
        assert path.read_bytes() == (CRD_DIR / path.name).read_bytes()
    (out / "experiments.sluice.dev.yaml").write_text("stale\n")
    capsys.readouterr()
    assert main(["crds", "--check", "--output-dir", str(out), "--chart-dir", str(tmp_path / "no-chart")]) == 1
    assert "run `sluice crds`" in capsys.readouterr().err
    assert (out / "experiments.sluice.dev.yaml").read_text() == "stale\n", "--check must not write"
