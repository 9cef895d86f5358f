"""The generated Sluice CRDs, served by the emulator, accept every example and refuse every invalid one.

This runs the CRDs' structural schemas and CEL rules on a real CEL engine (cel-python), the way the API server
would, and checks each refusal names the field and message the example's header promises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support.emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
SLUICE_KINDS = {"ModelDeployment", "Experiment", "DriftPolicy"}


@pytest.fixture(scope="module")
def http(kube_emulator: EmulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kube_emulator.url, timeout=30) as session:
        yield session


def plural_path(http: httpx.Client, doc: dict[str, Any]) -> str:
    group, version = doc["apiVersion"].split("/")
    resources = http.get(f"/apis/{group}/{version}").json()["resources"]
    plural = next(r["name"] for r in resources if r["kind"] == doc["kind"] and "/" not in r["name"])
    namespace = doc.get("metadata", {}).get("namespace", "default")
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"


def sluice_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") in SLUICE_KINDS]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_valid_examples_are_accepted(http: httpx.Client, path: Path) -> None:
    docs = sluice_docs(path)
    assert docs, f"{path.name} holds no Sluice object"
    for doc in docs:
        response = http.post(plural_path(http, doc), params={"dryRun": "All"}, json=doc)
        assert response.status_code == 201, f"{path.name}: {response.json().get('message')}"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_examples_are_refused_naming_the_field(http: httpx.Client, path: Path) -> None:
    text = path.read_text()
    field = re.search(r"^# expect-field: (\S+)", text, re.M)
    error = re.search(r"^# expect-error: (.+)$", text, re.M)
    (doc,) = sluice_docs(path)
    response = http.post(plural_path(http, doc), params={"dryRun": "All"}, json=doc)
    assert response.status_code == 422, f"{path.name} was accepted"
    status = response.json()
    if field is not None:
        fields = [cause["field"] for cause in status["details"]["causes"]]
        assert any(f.startswith(field[1]) or field[1].startswith(f) for f in fields), (fields, status["message"])
    if error is not None:
        assert error[1].strip() in status["message"], status["message"]
