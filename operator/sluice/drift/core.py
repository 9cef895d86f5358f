"""The drift decision core: `step(spec, status, observations, now) -> (status', actions)`.

Pure: no I/O, no clock, no randomness. Each evaluation scores every watched feature's window counts against the
reference profile, gives each a state (NoData below minSamples, so too little traffic never reads as drift), and
the policy a verdict. Every state change is a condition and an Event (the `alert` action, always on); while the
policy is Drifted, a `rollback` or `retrain` action runs at most once per cooldown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt

from sluice.api.base import get_condition, parse_duration, set_condition
from sluice.api.drift_policy import (
    P_VALUE_METHODS,
    ActionType,
    DriftMethod,
    DriftPolicySpec,
    DriftPolicyStatus,
    DriftState,
    FeatureScore,
)
from sluice.drift import statistics as st
from sluice.drift.actions import Action, CreateRetrainJob, EmitEvent, RollbackTarget
from sluice.drift.observations import Counts, Observations, Problem
from sluice.drift.profile import CategoricalFeature, NumericFeature, Profile, feature_key

EVALUATED = "Evaluated"  # condition: True when the last evaluation ran; False names the field that stopped it
DRIFTED = "Drifted"  # condition: True while the policy's verdict is Drifted
CAPTURING = "CapturingReference"  # Evaluated reason while a fromStableVersion reference is being captured
_SEVERITY = {DriftState.NO_DATA: 0, DriftState.OK: 1, DriftState.WARNING: 2, DriftState.DRIFTED: 3}


@dataclass(frozen=True)
class FeatureResult:
    key: str
    method: DriftMethod
    samples: int
    state: DriftState
    score: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None


@dataclass(frozen=True)
class Evaluation:
    """Per-feature results and the dataset verdict."""

    features: tuple[FeatureResult, ...]
    state: DriftState
    drifted: int
    evaluated: int
    samples: int

    @property
    def share(self) -> float | None:
        return self.drifted / self.evaluated if self.evaluated else None

    @property
    def score(self) -> float | None:
        scores = [f.score for f in self.features if f.score is not None]
        return max(scores) if scores else None

    @property
    def drifted_keys(self) -> list[str]:
        return [f.key for f in self.features if f.state == DriftState.DRIFTED]


def feature_keys(spec: DriftPolicySpec) -> list[str]:
    return [feature_key(f.name, f.index) for f in spec.features]


def check_reference(spec: DriftPolicySpec, profile: Profile, window: Counts | None) -> Problem | None:
    """The first way the profile or the window does not fit the spec's features, naming the field."""
    known = {f.name: f for f in profile.features}
    for i, (feature, key) in enumerate(zip(spec.features, feature_keys(spec), strict=True)):
        where = f"spec.features[{i}]"
        ref = known.get(key)
        if ref is None:
            return Problem(
                "ReferenceMismatch", where, f"feature {key!r} is not in the reference profile (has: {', '.join(known)})"
            )
        if ref.type != feature.type:
            return Problem(
                "ReferenceMismatch", f"{where}.type", f"{key!r} is {ref.type} in the profile, not {feature.type}"
            )
        if window is not None and key in window and len(window[key]) != ref.bins:
            return Problem(
                "CountsMismatch",
                where,
                f"the router counted {len(window[key])} bins for {key!r}, the profile has {ref.bins}: "
                "it has not loaded this profile yet",
            )
    return None


def check_missing(spec: DriftPolicySpec, window: Counts, missing: Mapping[str, float]) -> Problem | None:
    """A feature none of whose (at least minSamples) rows in the window could be read: the model's requests do not
    have it (no such input, or a column beyond its width), so the feature is named rather than left NoData."""
    for i, (feature, key) in enumerate(zip(spec.features, feature_keys(spec), strict=True)):
        lost = missing.get(key, 0.0)
        if lost >= spec.min_samples and sum(window.get(key, ())) == 0:
            where = f"input {feature.name!r}" + (f" column {feature.index}" if feature.index is not None else "")
            return Problem(
                "FeatureMissing",
                f"spec.features[{i}]",
                f"none of the {lost:.0f} rows in the window had {where}: the model's requests do not carry it",
            )
    return None


def _score(
    method: DriftMethod,
    ref: NumericFeature | CategoricalFeature,
    counts: st.FloatArray,
    current: npt.ArrayLike | None,
) -> tuple[float, float | None]:
    ref_counts = np.asarray(ref.counts, dtype=np.float64)
    if method == DriftMethod.PSI:
        return float(st.psi(ref_counts, counts)), None
    if method == DriftMethod.JS:
        return float(st.js(ref_counts, counts)), None
    if method == DriftMethod.CHI2:
        v, _, p = st.chi2(ref_counts, counts)
        return v, p
    assert isinstance(ref, NumericFeature)  # check_reference and the API rules keep ks/wasserstein numeric
    if method == DriftMethod.KS:
        if current is not None and ref.sample:
            result = st.ks_exact(ref.sample, current, reference_sorted=True)
            return result.statistic, result.p_value
        d, p = st.ks_binned(ref_counts, counts)
        return float(d), float(p)
    distance = st.wasserstein_binned(ref_counts, counts, ref.edges)
    scale = ref.std if ref.std else 1.0
    return distance / scale, None


@dataclass(frozen=True)
class WatchedFeature:
    key: str
    type: str  # numeric | categorical
    method: DriftMethod


@dataclass(frozen=True)
class Settings:
    """What an evaluation needs of a policy; `sluice drift` builds one without a DriftPolicy."""

    features: tuple[WatchedFeature, ...]
    warning: float = 0.1
    critical: float = 0.25
    alpha: float = 0.05
    min_samples: int = 1
    drift_share: float = 0.0

    @classmethod
    def from_spec(cls, spec: DriftPolicySpec) -> Settings:
        features = tuple(
            WatchedFeature(key, f.type, f.method or spec.method)
            for f, key in zip(spec.features, feature_keys(spec), strict=True)
        )
        return cls(
            features,
            spec.thresholds.warning,
            spec.thresholds.critical,
            spec.alpha,
            spec.min_samples,
            spec.drift_share,
        )


def _feature_state(score: float, significant: bool, settings: Settings) -> DriftState:
    if significant and score >= settings.critical:
        return DriftState.DRIFTED
    if significant and score >= settings.warning:
        return DriftState.WARNING
    return DriftState.OK


def evaluate(
    settings: Settings | DriftPolicySpec,
    profile: Profile,
    window: Counts,
    current_samples: Mapping[str, npt.ArrayLike] | None = None,
) -> Evaluation:
    """Score each feature's window counts against the profile; Holm-correct the p-values; give the verdict.

    With raw current values for a ks feature whose profile has a sample, KS is exact on the samples.
    """
    if isinstance(settings, DriftPolicySpec):
        settings = Settings.from_spec(settings)
    samples_by_key = current_samples or {}
    raw: list[tuple[str, DriftMethod, int, float | None, float | None]] = []
    for feature in settings.features:
        key, method = feature.key, feature.method
        if feature.type == "categorical" and method in (DriftMethod.KS, DriftMethod.WASSERSTEIN):
            method = DriftMethod.CHI2  # the policy's default suits numeric features; categories get chi2
        counts = np.asarray(window.get(key, ()), dtype=np.float64)
        n = int(counts.sum()) if counts.size else 0
        if n < settings.min_samples:
            raw.append((key, method, n, None, None))
            continue
        score, p = _score(method, profile.feature(key), counts, samples_by_key.get(key))
        raw.append((key, method, n, score, p))
    tested = {i: r[4] for i, r in enumerate(raw) if r[1] in P_VALUE_METHODS and r[3] is not None and r[4] is not None}
    adjusted = dict(zip(tested, st.holm(list(tested.values())).tolist(), strict=True))
    results = []
    for i, (key, method, n, value, p_value) in enumerate(raw):
        if value is None:
            results.append(FeatureResult(key, method, n, DriftState.NO_DATA))
            continue
        adj = adjusted.get(i)
        verdict = _feature_state(value, adj is None or adj < settings.alpha, settings)
        results.append(FeatureResult(key, method, n, verdict, value, p_value, adj))
    evaluated = [r for r in results if r.state != DriftState.NO_DATA]
    drifted = sum(r.state == DriftState.DRIFTED for r in results)
    if not evaluated:
        state = DriftState.NO_DATA
    elif drifted and drifted / len(evaluated) >= settings.drift_share:
        state = DriftState.DRIFTED
    elif any(r.state in (DriftState.WARNING, DriftState.DRIFTED) for r in evaluated):
        state = DriftState.WARNING
    else:
        state = DriftState.OK
    return Evaluation(tuple(results), state, drifted, len(evaluated), max((r.samples for r in results), default=0))


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def summary(evaluation: Evaluation) -> str:
    """The verdict in one sentence."""
    if evaluation.state == DriftState.NO_DATA:
        return "too few samples in the window for every feature"
    worst = max(evaluation.features, key=lambda f: (_SEVERITY[f.state], f.score or 0.0))
    text = (
        f"{evaluation.drifted} of {evaluation.evaluated} evaluated features drifted; "
        f"highest {worst.method.value} {worst.score:.4g} on {worst.key}"
    )
    if evaluation.drifted_keys:
        text += f" (drifted: {', '.join(evaluation.drifted_keys)})"
    return text


def job_name(policy: str, decision: str) -> str:
    """A DNS-1123 name for the retrain Job: `<policy>-retrain-<decision>`, `decision` a digest of the status the
    action was decided from, so the same decision taken again after a restart names the same Job (created once)."""
    suffix = "-retrain-" + decision[:10]
    base = re.sub(r"[^a-z0-9-]", "-", policy.lower())[: 63 - len(suffix)].strip("-") or "drift"
    return base + suffix


def retrain_env(
    spec: DriftPolicySpec, obs: Observations, evaluation: Evaluation, now: datetime
) -> tuple[tuple[str, str], ...]:
    return (
        ("SLUICE_POLICY", obs.policy),
        ("SLUICE_TARGET", spec.target.name),
        ("SLUICE_WINDOW_START", obs.window_start.isoformat() if obs.window_start else ""),
        ("SLUICE_WINDOW_END", now.isoformat()),
        ("SLUICE_DRIFTED_FEATURES", ",".join(evaluation.drifted_keys)),
        ("SLUICE_DRIFT_SCORE", f"{evaluation.score:.6g}" if evaluation.score is not None else ""),
        ("SLUICE_REFERENCE_URI", obs.reference_uri),
    )


def _seconds(duration: str) -> timedelta:
    return timedelta(seconds=parse_duration(duration))


def _due(spec: DriftPolicySpec, status: DriftPolicyStatus, obs: Observations, now: datetime) -> bool:
    if status.last_evaluated is None or obs.generation != status.observed_generation:
        return True
    return now >= status.last_evaluated + _seconds(spec.interval)


def step(
    spec: DriftPolicySpec, status: DriftPolicyStatus | None, obs: Observations, now: datetime
) -> tuple[DriftPolicyStatus, list[Action]]:
    """One evaluation when due: scores, states, conditions, Events on state changes, and the action."""
    status = status or DriftPolicyStatus()
    if not _due(spec, status, obs, now):
        return status, []
    problem = obs.problem
    if problem is None and obs.capturing is not None:
        return _capturing(status, obs, now, obs.capturing)
    if problem is None and obs.reference is None:
        problem = Problem("NoReference", "spec.reference", "the reference profile has not been loaded")
    if problem is None and obs.window is None:
        problem = Problem("NoCounts", "spec.target", "the target's feature counters could not be read")
    if problem is None:
        assert obs.reference is not None
        problem = check_reference(spec, obs.reference, obs.window)
    if problem is None:
        assert obs.window is not None
        problem = check_missing(spec, obs.window, obs.window_missing)
    if problem is not None:
        return _stopped(status, obs, now, problem)
    assert obs.reference is not None
    assert obs.window is not None
    evaluation = evaluate(spec, obs.reference, obs.window, obs.current_samples)
    return _evaluated(spec, status, obs, now, evaluation)


def _stopped(
    status: DriftPolicyStatus, obs: Observations, now: datetime, problem: Problem
) -> tuple[DriftPolicyStatus, list[Action]]:
    """Bad input: a condition naming the field, an Event when it is new, nothing else (no action)."""
    message = f"{problem.field}: {problem.message}"
    old = get_condition(status.conditions, EVALUATED)
    conditions = set_condition(
        status.conditions, EVALUATED, False, reason=problem.reason, message=message, now=now, generation=obs.generation
    )
    actions: list[Action] = []
    if old is None or old.reason != problem.reason or old.message != message:
        actions.append(EmitEvent("Warning", problem.reason, message))
    new = status.model_copy(
        update={
            "conditions": conditions,
            "message": message,
            "last_evaluated": now,
            "observed_generation": obs.generation,
        }
    )
    return new, actions


def _capturing(
    status: DriftPolicyStatus, obs: Observations, now: datetime, progress: str
) -> tuple[DriftPolicyStatus, list[Action]]:
    """No reference yet, by design: NoData (never a verdict on a reference still being captured), Evaluated False
    with the progress, one Normal Event when the capture starts; no action."""
    old = get_condition(status.conditions, EVALUATED)
    conditions = set_condition(
        status.conditions, EVALUATED, False, reason=CAPTURING, message=progress, now=now, generation=obs.generation
    )
    conditions = set_condition(
        conditions,
        DRIFTED,
        False,
        reason=DriftState.NO_DATA.value,
        message=progress,
        now=now,
        generation=obs.generation,
    )
    actions: list[Action] = []
    if old is None or old.reason != CAPTURING:
        actions.append(EmitEvent("Normal", CAPTURING, progress))
    new = status.model_copy(
        update={
            "conditions": conditions,
            "state": DriftState.NO_DATA,
            "score": None,
            "features": [],
            "samples": 0,
            "drifted_features": 0,
            "drifted_share": None,
            "message": progress,
            "last_evaluated": now,
            "observed_generation": obs.generation,
        }
    )
    return new, actions


def _evaluated(
    spec: DriftPolicySpec, status: DriftPolicyStatus, obs: Observations, now: datetime, evaluation: Evaluation
) -> tuple[DriftPolicyStatus, list[Action]]:
    message = summary(evaluation)
    conditions = set_condition(
        status.conditions, EVALUATED, True, reason="Evaluated", message=message, now=now, generation=obs.generation
    )
    conditions = set_condition(
        conditions,
        DRIFTED,
        evaluation.state == DriftState.DRIFTED,
        reason=evaluation.state.value,
        message=message,
        now=now,
        generation=obs.generation,
    )
    actions: list[Action] = []
    if evaluation.state != status.state:
        event_type: Literal["Normal", "Warning"] = (
            "Warning" if evaluation.state in (DriftState.WARNING, DriftState.DRIFTED) else "Normal"
        )
        actions.append(
            EmitEvent(event_type, f"Drift{evaluation.state.value}", f"{status.state} -> {evaluation.state}: {message}")
        )
    update: dict[str, object] = {}
    cooldown = _seconds(spec.action.cooldown)
    cooled = status.last_action is None or now >= status.last_action + cooldown
    if evaluation.state == DriftState.DRIFTED and spec.action.type != ActionType.ALERT and cooled:
        if spec.action.type == ActionType.ROLLBACK:
            actions.append(RollbackTarget(spec.target.name, f"drift: {message}"))
            actions.append(EmitEvent("Warning", "DriftRollback", f"rolling {spec.target.name} back: {message}"))
        else:
            name = job_name(obs.policy, status.digest())
            actions.append(CreateRetrainJob(name, retrain_env(spec, obs, evaluation, now)))
            actions.append(EmitEvent("Warning", "DriftRetrain", f"created Job {name}: {message}"))
            update["last_job"] = name
        update["last_action"] = now
        update["last_action_type"] = spec.action.type.value
    features = [
        FeatureScore(
            name=f.key,
            method=f.method,
            score=_finite(f.score),
            p_value=_finite(f.p_value),
            adjusted_p_value=_finite(f.adjusted_p_value),
            samples=f.samples,
            state=f.state,
        )
        for f in evaluation.features
    ]
    new = status.model_copy(
        update={
            **update,
            "observed_generation": obs.generation,
            "state": evaluation.state,
            "score": _finite(evaluation.score),
            "last_evaluated": now,
            "features": features,
            "conditions": conditions,
            "message": message,
            "samples": evaluation.samples,
            "window_start": obs.window_start,
            "drifted_features": evaluation.drifted,
            "drifted_share": evaluation.share,
        }
    )
    return new, actions
