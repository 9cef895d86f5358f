"""Builders shared by the experiment tests and the decision-quality benchmark's checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from sluice.api.experiment import ExperimentSpec, ExperimentStatus
from sluice.experiment.actions import Action
from sluice.experiment.core import step
from sluice.experiment.observations import ArmObservation, Observations
from sluice.experiment.statistics import Sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = {"name": "iris", "uri": "file:models/iris.onnx", "version": "v1"}


def make_spec(arms: int = 2, **spec: Any) -> ExperimentSpec:
    names = ["control", "treatment", "third", "fourth"][:arms]
    weights = [100 // arms + (1 if i < 100 % arms else 0) for i in range(arms)]
    body: dict[str, Any] = {
        "target": {"name": "iris"},
        "variants": [
            {"name": n, "model": {**MODEL, "version": f"v{i + 1}"}, "weight": w}
            for i, (n, w) in enumerate(zip(names, weights, strict=True))
        ],
        "primaryMetric": {"name": "clicked"},
        "minimumSamples": 100,
    }
    body.update(spec)
    return ExperimentSpec.model_validate(body)


def conversions(**arms: tuple[int, int]) -> Observations:
    """Observations with cumulative (trials, successes) per arm."""
    return Observations(uid="uid-1", arms={k: ArmObservation(Sample(n, x, x)) for k, (n, x) in arms.items()})


def started(spec: ExperimentSpec) -> ExperimentStatus:
    status, _ = step(spec, ExperimentStatus(), Observations(uid="uid-1"), T0, np.random.default_rng(0))
    return status


def look(
    spec: ExperimentSpec, status: ExperimentStatus, obs: Observations, minutes: float = 1, seed: int = 0
) -> tuple[ExperimentStatus, list[Action]]:
    return step(spec, status, obs, T0 + timedelta(minutes=minutes), np.random.default_rng(seed))
