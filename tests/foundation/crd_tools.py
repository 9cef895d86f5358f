"""Validate objects against the generated CRD schemas the way the API server does, offline.

Order as in kube-apiserver: defaults applied, structural validation (jsonschema, Draft 4 = OpenAPI v3 bounds,
unknown fields refused as with kubectl's strict field validation), then every x-kubernetes-validations CEL rule
evaluated with `self` = the node (cel-python, plus the Kubernetes list functions the rules use).
"""

from __future__ import annotations

import copy
import itertools
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from tests.support.emulator import apply_defaults

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
PLURALS = {"ModelDeployment": "modeldeployments", "Experiment": "experiments", "DriftPolicy": "driftpolicies"}


@cache
def crd(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CRD_DIR / f"{PLURALS[kind]}.sluice.dev.yaml").read_text())
    return loaded


def schema(kind: str) -> dict[str, Any]:
    found: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return found


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def structural_errors(kind: str, obj: dict[str, Any]) -> list[str]:
    """Schema violations as 'path: message'."""
    strict = _strict(schema(kind))
    strict["properties"]["metadata"].pop("additionalProperties")  # the API server owns the rest of metadata
    validator = jsonschema.Draft4Validator(strict)
    out = []
    for err in validator.iter_errors(obj):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        out.append(f"{path}: {err.message}")
    return out


def _is_sorted(lst: Any) -> celtypes.BoolType:
    items = list(lst)
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


def _sum(lst: Any) -> Any:
    items = list(lst)
    if items and isinstance(items[0], celtypes.DoubleType):
        return celtypes.DoubleType(sum(items))
    return celtypes.IntType(sum(items))


_ENV = celpy.Environment()
_FUNCTIONS = {"isSorted": _is_sorted, "sum": _sum}


@cache
def cel_program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule), functions=_FUNCTIONS)


def _typed(node: dict[str, Any], value: Any) -> Any:
    """Numbers as the schema types them: CEL compares int and double only explicitly."""
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and "properties" in node:
        return {k: _typed(node["properties"].get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list) and "items" in node:
        return [_typed(node["items"], v) for v in value]
    return value


def cel_errors(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every failing CEL rule below `node` as 'path: message' (fieldPath appended, like the API server)."""
    out = []
    for rule in node.get("x-kubernetes-validations", []):
        try:
            result = cel_program(rule["rule"]).evaluate({"self": json_to_cel(_typed(node, value))})
        except CELEvalError as exc:  # e.g. a field the rule reads is absent: the API server refuses too
            result = exc
        if isinstance(result, Exception) or not bool(result):
            out.append(f"{(path + rule.get('fieldPath', '')).lstrip('.')}: {rule['message']}")
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name in value:
                out += cel_errors(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            out += cel_errors(node["items"], item, f"{path}[{i}]")
    return out


def server_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server would refuse in `obj` (after defaulting); empty when it would be accepted."""
    kind = obj["kind"]
    obj = apply_defaults(copy.deepcopy(obj), schema(kind))
    errors = structural_errors(kind, obj)
    return errors or cel_errors(schema(kind), obj)
