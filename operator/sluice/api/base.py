"""Shared building blocks of the Sluice API: the model base class, durations, conditions.

Every field carries a description: the CRDs are generated from these models, so the descriptions are
what `kubectl explain` shows.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "sluice.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# Manual commands (`kubectl sluice promote|abort|retry|undo`) travel in this annotation as "<verb>:<nonce>".
COMMAND_ANNOTATION = f"{GROUP}/command"

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=32,
        description="A duration such as 30s, 5m, 1h30m or 250ms.",
        json_schema_extra={"example": "30s"},
    ),
]


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError on anything the CRD pattern would refuse."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: expected e.g. 30s, 5m, 1h30m, 250ms")
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class Rule:
    """One cross-field rule, written twice side by side: as CEL for the API server and as Python for the models.

    Keeping both in one place is what makes `sluice run` on a laptop refuse exactly what the cluster refuses;
    tests evaluate every rule both ways on the same table of objects.
    """

    cel: str  # evaluated by the API server with `self` = this object (after defaulting)
    message: str  # shown by both sides
    field: str  # JSON path of the offending field relative to this object, e.g. ".query"; "" for the object
    violation: Callable[[Any], str | None]  # None when valid, else the precise relative path (e.g. ".steps[1].weight")


def first_duplicate(prefix: str, names: list[str]) -> str | None:
    """Path of the first name seen before, e.g. `.checks[2].name` (a `Rule`'s violation for unique names)."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            return f"{prefix}[{i}].name"
        seen.add(name)
    return None


class RuleViolation(ValueError):
    """A broken cross-field rule; `path` continues the pydantic location so messages name the exact field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path.lstrip('.') or '(object)'}: {message}")
        self.path = path
        self.message = message


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused (they would be pruned)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
        use_enum_values=False,
    )

    # Cross-field rules of this object: checked here after validation, emitted as x-kubernetes-validations.
    rules: ClassVar[tuple[Rule, ...]] = ()

    def digest(self, exclude: set[str] | None = None) -> str:
        """16 hex of a sha256 over the object as it is stored (camelCase JSON, keys sorted, None left out).

        Equal for a status an operator saved and the one its successor reads back: the controllers name what a
        decision produces (Events, Jobs, commands) after the status it was taken from, so a decision taken again
        after a restart produces the same names and the API server refuses the repeat.
        """
        state = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            path = rule.violation(self)
            if path is not None:
                raise RuleViolation(path, rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.rules:
            schema["x-kubernetes-validations"] = [
                {"rule": r.cel, "message": r.message, **({"fieldPath": r.field} if r.field else {})} for r in cls.rules
            ]
        return schema


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-convention condition (metav1.Condition)."""

    type: str = Field(description="Condition type in CamelCase, e.g. Ready, Progressing, Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="One CamelCase word saying why the condition has this status, for machines.",
    )
    message: str = Field(default="", description="A sentence for humans: what happened, with values.")
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the condition was computed for."
    )


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    *,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """Return `conditions` with `type_` set; the transition time is kept when the status is unchanged."""
    value = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # DNS-1123 label


class ObjectMeta(ApiModel):
    """The part of metadata Sluice reads; everything else is kept untouched by the API server."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = Field(
        description="Object name: a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters), "
        "because Services and Deployments are named after it.",
        min_length=1,
        max_length=63,
        pattern=NAME_PATTERN,
    )
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    generation: int | None = Field(default=None, description="Spec generation, set by the API server.")
    uid: str | None = Field(default=None, description="UID, set by the API server.")
    resource_version: str | None = Field(default=None, description="Resource version, set by the API server.")


class LocalObjectReference(ApiModel):
    """A reference to another Sluice object in the same namespace."""

    name: str = Field(
        description="Name of the referenced object in the same namespace.",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    )
