"""The two generated pages are current, and say what they claim to: every field and rule, every results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from tests.docs.support import REPO, load_docs_gen, load_results_io

from sluice.api.base import ApiModel
from sluice.api.crd import CRDS

gen = load_docs_gen()
results_io = load_results_io()


def test_generated_pages_are_up_to_date() -> None:
    stale = gen.stale_pages()
    assert not stale, f"out of date: {[str(p) for p in stale]}; run `{gen.REGENERATE}`"


def test_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / gen.API_PAGE
    page.parent.mkdir(parents=True)
    page.write_text("# API reference\n\nhand-edited\n")
    (tmp_path / gen.BENCHMARKS_PAGE).write_text(gen.benchmarks_page())
    assert gen.stale_pages(tmp_path) == [gen.API_PAGE]


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    """Every pydantic model reachable from `model` through its fields (lists, optionals and dicts included)."""
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        stack: list[Any] = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                _models(tp, seen)
            stack.extend(getattr(tp, "__args__", ()))


def _all_models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    for info in CRDS:
        _models(info.model, seen)
    return seen


def test_api_reference_lists_every_field_and_rule_of_the_models() -> None:
    """Read off the pydantic models directly, not the schema the generator walks: nothing may be dropped."""
    page = (REPO / gen.API_PAGE).read_text()
    models = _all_models()
    roots = {info.model for info in CRDS}  # their apiVersion, kind and metadata are described by the CRD itself
    assert len(models) > 20
    for model in models:
        for name, field in model.model_fields.items():
            if model.__name__ == "ObjectMeta" and name != "name":
                continue  # the CRD constrains metadata.name only; the API server owns the rest
            wire = field.alias or name
            assert f"| `{wire}` |" in page, f"{model.__name__}.{name} ({wire}) missing from {gen.API_PAGE}"
            if field.description and not (model in roots and name in ("api_version", "kind", "metadata")):
                assert gen.cell(field.description) in page, f"description of {model.__name__}.{name}"
        if issubclass(model, ApiModel):
            for rule in model.rules:
                assert rule.message in page, f"rule of {model.__name__}: {rule.message}"
                assert gen.span(rule.cel) in page, f"CEL of {model.__name__}: {rule.cel}"
    for info in CRDS:
        for column in info.columns:
            assert f"| {column['name']} | {column['type']} | `{column['jsonPath']}` |" in page


def test_api_reference_shows_defaults_and_bounds() -> None:
    page = (REPO / gen.API_PAGE).read_text()
    # spec.revisionHistoryLimit: default 10, 1..100 (model_deployment.py)
    assert "| `revisionHistoryLimit` | <code>integer</code> | <code>10</code> |" in page
    assert "≥ 1<br>≤ 100" in page


def test_benchmarks_page_has_a_section_per_results_file() -> None:
    page = (REPO / gen.BENCHMARKS_PAGE).read_text()
    for path in sorted((REPO / gen.RESULTS_DIR).glob("*.json")):
        assert f"- File: `benchmarks/results/{path.name}`" in page


def test_a_summary_file_renders_generically(tmp_path: Path) -> None:
    result = {
        "benchmark": "widget throughput",
        "command": ".venv/bin/python benchmarks/widget.py --seconds 5",
        "measured_at": "2026-11-29T21:00:00Z",
        "machine": "2 shared cores",
        "summary": [{"case": "a", "req/s": 1234.5, "p99 ms": 3.21}, {"case": "b", "req/s": 99.0, "ratio": None}],
        "detail": {"ignored": True},
    }
    (tmp_path / "widget.json").write_text(json.dumps(result))
    page = gen.benchmarks_page(tmp_path)
    assert "## widget throughput (`benchmarks/results/widget.json`) { #widget }" in page
    assert "- Command: `.venv/bin/python benchmarks/widget.py --seconds 5`" in page
    assert "- Measured: 2026-11-29T21:00:00Z" in page
    assert "| case | req/s | p99 ms | ratio |" in page
    dash = gen.DASH
    assert f"| a | 1,234 | 3.21 | {dash} |" in page
    assert f"| b | 99 | {dash} | {dash} |" in page


def test_write_results_puts_the_house_keys_first_and_the_page_shows_goal_and_notes(tmp_path: Path) -> None:
    written = results_io.write_results(
        tmp_path / "widget.json",
        "widget",
        "python benchmarks/widget.py --runs 3",
        "2 CPUs",
        [{"case": "a", "req/s": 12.5}],
        {"goal": "req/s >= 10", "notes": ["One run, seeded."], "raw": {"a": [1, 2]}},
        measured_at="2026-11-29T21:00:00Z",
    )
    on_disk = json.loads((tmp_path / "widget.json").read_text())
    assert on_disk == written
    assert list(on_disk)[:5] == ["benchmark", "command", "measured_at", "machine", "summary"]
    page = gen.benchmarks_page(tmp_path)
    assert "- Goal: req/s >= 10" in page
    assert "| a | 12.5 |" in page
    assert "One run, seeded." in page


def test_write_results_refuses_nested_rows_and_a_repeated_house_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"summary row 0 is not flat: \['a'\]"):
        results_io.write_results(tmp_path / "x.json", "x", "c", "m", [{"a": {"b": 1}}], {})
    with pytest.raises(ValueError, match=r"house key\(s\) \['machine'\]"):
        results_io.write_results(tmp_path / "x.json", "x", "c", "m", [], {"machine": "again"})
    assert not (tmp_path / "x.json").exists()


def test_a_results_file_without_summary_or_extractor_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mystery.json").write_text(json.dumps({"benchmark": "mystery", "numbers": [1, 2]}))
    with pytest.raises(ValueError, match=r"mystery\.json has no `summary`"):
        gen.benchmarks_page(tmp_path)


def test_legacy_results_keep_their_numbers() -> None:
    """Spot checks against the JSON: the extractors carry the measured values through unchanged."""
    page = (REPO / gen.BENCHMARKS_PAGE).read_text()
    ray = json.loads((REPO / "benchmarks/results/e2e_ray.json").read_text())
    assert f"| {ray['results']['mlp']['sluice-ray']['rps']} |" in page
    assert f"{ray['results']['mlp']['ratio_sluice_vs_plain_ray']}{gen.TIMES}" in page
    scale = json.loads((REPO / "benchmarks/results/operator_scale.json").read_text())
    assert f"| {scale['all_rendered_with_phase_s']} |" in page
