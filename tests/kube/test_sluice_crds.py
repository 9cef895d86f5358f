"""The generated Sluice CRDs, served by the emulator, accept every example and refuse every invalid one.

This runs the CRDs' structural schemas and CEL rules on a real CEL engine (cel-python), the way the API server
would, and checks each refusal names the field and message the example's header promises.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
SLUICE_KINDS = {"ModelDeployment", "Experiment", "DriftPolicy"}


def plural_path(kube_http: httpx.Client, doc: dict[str, Any]) -> str:
    group, version = doc["apiVersion"].split("/")
    resources = kube_http.get(f"/apis/{group}/{version}").json()["resources"]
    plural = next(r["name"] for r in resources if r["kind"] == doc["kind"] and "/" not in r["name"])
    namespace = doc.get("metadata", {}).get("namespace", "default")
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}"


def sluice_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") in SLUICE_KINDS]


@pytest.fixture
def namespace(kube_http: httpx.Client) -> str:
    """A namespace of this test's own: the session's one emulator may already hold objects of the examples' names."""
    name = f"examples-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    response = kube_http.post("/api/v1/namespaces", json=body)
    assert response.status_code == 201, response.text
    return name


def in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**doc, "metadata": {**doc.get("metadata", {}), "namespace": namespace}}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_valid_examples_are_accepted(kube_http: httpx.Client, path: Path, namespace: str) -> None:
    docs = sluice_docs(path)
    assert docs, f"{path.name} holds no Sluice object"
    for doc in (in_namespace(d, namespace) for d in docs):
        response = kube_http.post(plural_path(kube_http, doc), params={"dryRun": "All"}, json=doc)
        assert response.status_code == 201, f"{path.name}: {response.json().get('message')}"


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_examples_are_refused_naming_the_field(kube_http: httpx.Client, path: Path, namespace: str) -> None:
    text = path.read_text()
    field = re.search(r"^# expect-field: (\S+)", text, re.M)
    error = re.search(r"^# expect-error: (.+)$", text, re.M)
    (doc,) = (in_namespace(d, namespace) for d in sluice_docs(path))
    response = kube_http.post(plural_path(kube_http, doc), params={"dryRun": "All"}, json=doc)
    assert response.status_code == 422, f"{path.name} was accepted"
    status = response.json()
    if field is not None:
        fields = [cause["field"] for cause in status["details"]["causes"]]
        assert any(f.startswith(field[1]) or field[1].startswith(f) for f in fields), (fields, status["message"])
    if error is not None:
        assert error[1].strip() in status["message"], status["message"]
