"""Turn YAML documents into API objects, and validation failures into messages that name the field path.

`sluice validate`, `sluice run` and the operator all parse through here, so a bad field reads the same
everywhere: `spec.rollout.canary.steps[1].weight: canary step weights must be strictly increasing`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sluice.api.base import API_VERSION, RuleViolation
from sluice.api.drift_policy import DriftPolicy
from sluice.api.experiment import Experiment
from sluice.api.model_deployment import ModelDeployment

ApiObject = ModelDeployment | Experiment | DriftPolicy

KINDS: dict[str, type[ModelDeployment] | type[Experiment] | type[DriftPolicy]] = {
    "ModelDeployment": ModelDeployment,
    "Experiment": Experiment,
    "DriftPolicy": DriftPolicy,
}


@dataclass(frozen=True)
class FieldError:
    """One problem, at one field path of one object."""

    path: str  # e.g. spec.rollout.canary.steps[1].weight; "" for the whole document
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ApiValidationError(ValueError):
    """A document that is not a valid Sluice object; `errors` name every failing field."""

    def __init__(self, kind: str, name: str, errors: Sequence[FieldError]) -> None:
        self.kind = kind
        self.name = name
        self.errors = list(errors)
        super().__init__(f"{kind}/{name}: " + "; ".join(str(e) for e in self.errors))


def format_path(loc: Sequence[int | str]) -> str:
    """('spec', 'steps', 1, 'weight') -> 'spec.steps[1].weight'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def field_errors(exc: ValidationError) -> list[FieldError]:
    """Every error of a pydantic ValidationError as path + message; cross-field rules extend the path."""
    errors = []
    for err in exc.errors(include_url=False):
        path = format_path(err["loc"])
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, RuleViolation):
            path += cause.path
            message = cause.message
        elif err["type"] == "extra_forbidden":
            message = "unknown field (not part of the Sluice API; check spelling and camelCase)"
        errors.append(FieldError(path, message))
    return errors


def parse_object(doc: Any) -> ApiObject:
    """One parsed YAML document to its API model; raises ApiValidationError naming each bad field."""
    if not isinstance(doc, dict):
        raise ApiValidationError("?", "?", [FieldError("", f"expected a mapping, got {type(doc).__name__}")])
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
    if kind not in KINDS:
        known = ", ".join(KINDS)
        raise ApiValidationError(str(kind), name, [FieldError("kind", f"unknown kind {kind!r}; expected {known}")])
    if doc.get("apiVersion") != API_VERSION:
        got = doc.get("apiVersion")
        raise ApiValidationError(kind, name, [FieldError("apiVersion", f"expected {API_VERSION}, got {got!r}")])
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        raise ApiValidationError(kind, name, field_errors(exc)) from None


@dataclass(frozen=True)
class LoadedDocument:
    """One document of a file: the object, or why it is not one."""

    source: str  # "FILE#INDEX" (0-based document index)
    obj: ApiObject | None
    error: ApiValidationError | None


def load_documents(text: str, source: str = "<string>") -> Iterator[LoadedDocument]:
    """Every non-empty document of a multi-document YAML text; YAML syntax errors become one error entry."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        yield LoadedDocument(
            source, None, ApiValidationError("?", "?", [FieldError("", f"invalid YAML{where}: {problem}")])
        )
        return
    for index, doc in enumerate(docs):
        try:
            yield LoadedDocument(f"{source}#{index}", parse_object(doc), None)
        except ApiValidationError as exc:
            yield LoadedDocument(f"{source}#{index}", None, exc)


def load_file(path: str | Path) -> list[LoadedDocument]:
    """All documents of one YAML file (see load_documents)."""
    return list(load_documents(Path(path).read_text(encoding="utf-8"), str(path)))
