"""Builders shared by the rollout tests: specs, observations and analysis outcomes without boilerplate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import CheckResult, ModelDeploymentStatus, Verdict
from sluice.rollout import Observations, revision_hash, step
from sluice.rollout.actions import Action
from sluice.rollout.analysis import AnalysisOutcome

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_spec(version: str = "v1", **overrides: Any) -> ModelDeploymentSpec:
    raw: dict[str, Any] = {
        "model": {"name": "fraud", "uri": f"file:models/{version}.onnx", "version": version},
        "analysis": {"interval": "30s", "progressDeadline": "5m", "failureThreshold": 2, "minRequests": 10},
        "rollout": {"strategy": "canary", "canary": {"steps": [{"weight": 10}, {"weight": 50}]}},
    }
    for key, value in overrides.items():
        raw[key] = value
    return ModelDeploymentSpec.model_validate(raw)


def with_version(spec: ModelDeploymentSpec, version: str) -> ModelDeploymentSpec:
    data = spec.model_dump(by_alias=True)
    data["model"] = {"name": "fraud", "uri": f"file:models/{version}.onnx", "version": version}
    return ModelDeploymentSpec.model_validate(data)


def outcome(verdict: Verdict, name: str = "error-rate", value: float | None = 0.01) -> AnalysisOutcome:
    return AnalysisOutcome(
        time=T0,
        results=(CheckResult(name=name, verdict=verdict, value=value, threshold="<= 2x stable", message="m"),),
    )


def obs(spec: ModelDeploymentSpec, **kw: Any) -> Observations:
    kw.setdefault("stable_ready", True)
    kw.setdefault("canary_ready", True)
    return Observations(revision=revision_hash(spec), generation=1, **kw)


class Driver:
    """Feeds step() one observation at a time, advancing a fake clock by the analysis interval."""

    def __init__(self, spec: ModelDeploymentSpec, status: ModelDeploymentStatus | None = None) -> None:
        self.spec = spec
        self.status = status or ModelDeploymentStatus()
        self.now = T0
        self.actions: list[Action] = []

    def tick(self, seconds: float = 30, **kw: Any) -> list[Action]:
        self.now += timedelta(seconds=seconds)
        self.status, self.actions = step(self.spec, self.status, obs(self.spec, **kw), self.now)
        return self.actions

    def deploy_stable(self) -> Driver:
        self.tick(stable_ready=False, canary_ready=False)
        self.tick(canary_ready=False)
        return self

    def start(self, spec: ModelDeploymentSpec) -> Driver:
        """Change the spec to a new version and let the canary become ready."""
        self.spec = spec
        self.tick(canary_ready=False)
        self.tick()
        return self


class Clock:
    """A clock the test moves: the loop asks it for `now`."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
