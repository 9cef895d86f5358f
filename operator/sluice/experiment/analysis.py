"""One look at the arms: per-arm statistics, the leader, and the verdict if the method allows one now.

Pure. The running minimum of each sequential p-value is passed in (it lives in the status), so the always-valid
p-value never rises between looks and a restart continues where it was.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sluice.api.experiment import ExperimentSpec, Method, MetricKind
from sluice.experiment import statistics as st

POSTERIOR_DRAWS = 2000  # Monte Carlo error of a probability near 0.975: +-0.0035 (one standard error)


@dataclass(frozen=True)
class ArmResult:
    name: str
    samples: int
    value: float | None
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    p_value: float | None = None  # Holm-adjusted against control
    running_p: float | None = None  # sequential: the unadjusted always-valid p-value to carry to the next look
    probability_best: float | None = None
    expected_loss: float | None = None


@dataclass(frozen=True)
class Decision:
    winner: str | None  # None: the method concluded there is no difference
    verdict: str


@dataclass(frozen=True)
class Analysis:
    arms: dict[str, ArmResult]
    leader: str | None
    confidence: float | None
    required_samples: int | None
    decision: Decision | None


def higher_is_better(spec: ExperimentSpec) -> bool:
    return spec.primary_metric.direction == "increase"


def _required(spec: ExperimentSpec, control: st.Sample, comparisons: int) -> int | None:
    """Outcomes per arm for 80% power at the relative MDE, planned with the control's current value."""
    c, alpha = control.mean, spec.alpha / max(1, comparisons)
    mde = spec.minimum_detectable_effect
    if control.n < max(2, spec.minimum_samples):
        return None  # plan with a control value measured on at least minimumSamples outcomes
    if spec.primary_metric.kind is MetricKind.CONVERSION:
        if not 0.0 < c < 1.0:
            return None
        other = c * (1 + mde) if c * (1 + mde) < 1.0 else c * (1 - mde)
        effect = st.proportion_effectsize(other, c)
    else:
        sd = math.sqrt(control.variance)
        if sd == 0 or c == 0:
            return None
        effect = mde * abs(c) / sd
    return max(spec.minimum_samples, math.ceil(st.required_sample_size(effect, alpha, 0.8)))


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def evaluate(
    spec: ExperimentSpec,
    samples: Mapping[str, st.Sample],
    active: Sequence[str],
    running_p: Mapping[str, float],
    rng: np.random.Generator,
    *,
    planned: int | None = None,
) -> Analysis:
    """Compare each active treatment with the control (the first variant), which is always active.

    `planned` is the horizon fixed at an earlier look (status.requiredSamples): once planned, it no longer follows
    the control's value, so when the verdict is read does not depend on the data it judges.
    """
    control_name = spec.variants[0].name
    treatments = [n for n in active if n != control_name]
    k = max(1, len(treatments))
    higher = higher_is_better(spec)
    conversion = spec.primary_metric.kind is MetricKind.CONVERSION
    ctl = samples.get(control_name, st.Sample(0, 0, 0))
    c = ctl.mean if ctl.n > 0 else None

    tests: dict[str, st.Test] = {}
    raw_p: dict[str, float] = {}
    for name in treatments:
        t = samples.get(name, st.Sample(0, 0, 0))
        if t.n < 2 or ctl.n < 2:
            continue
        alpha_ci = spec.alpha / k  # Bonferroni for the intervals; Holm for the decisions
        if spec.method is Method.SEQUENTIAL:
            tau2 = (spec.minimum_detectable_effect * abs(c or 0.0)) ** 2
            if tau2 <= 0:
                continue
            test = st.msprt_test(ctl, t, alpha_ci, tau2)
            raw_p[name] = min(test.p_value, running_p.get(name, 1.0))
        else:
            test = st.two_proportion_ztest(ctl, t, alpha_ci) if conversion else st.welch_ttest(ctl, t, alpha_ci)
            raw_p[name] = test.p_value
        tests[name] = test
    tested = list(raw_p)
    adjusted = dict(zip(tested, st.holm([raw_p[n] for n in tested]), strict=True))

    ordered = [control_name, *treatments]
    posterior = st.posterior_draws(
        [samples.get(n, st.Sample(0, 0, 0)) for n in ordered], conversion, rng, POSTERIOR_DRAWS
    )
    best = dict(zip(ordered, st.probability_best(posterior, higher), strict=True))
    loss = dict(zip(ordered, st.expected_loss(posterior, higher), strict=True))

    arms: dict[str, ArmResult] = {}
    for name in ordered:
        s = samples.get(name, st.Sample(0, 0, 0))
        value = s.mean if s.n > 0 else None
        lift = low = high = None
        found = tests.get(name)
        if c and value is not None:
            lift = (value - c) / abs(c)
            if found is not None:
                low, high = found.low / abs(c), found.high / abs(c)
        arms[name] = ArmResult(
            name=name,
            samples=int(s.n),
            value=value,
            lift=lift,
            lift_low=low,
            lift_high=high,
            p_value=adjusted.get(name),
            running_p=raw_p.get(name) if spec.method is Method.SEQUENTIAL else None,
            probability_best=best[name],
            expected_loss=loss[name],
        )

    with_data = [n for n in ordered if arms[n].value is not None]
    leader = None
    for name in with_data:
        if leader is None or _better(arms[name].value or 0.0, arms[leader].value or 0.0, higher):
            leader = name
    required = None
    if spec.method is not Method.SEQUENTIAL:
        required = planned if planned is not None else _required(spec, ctl, len(treatments))
    confidence = _confidence(spec, arms, leader, control_name, adjusted)
    decision = _decide(
        spec, arms=arms, ordered=ordered, adjusted=adjusted, required=required, control=control_name, higher=higher
    )
    return Analysis(arms, leader, confidence, required, decision)


def _confidence(
    spec: ExperimentSpec,
    arms: Mapping[str, ArmResult],
    leader: str | None,
    control: str,
    adjusted: Mapping[str, float],
) -> float | None:
    if leader is None:
        return None
    if spec.method is Method.BAYESIAN:
        return arms[leader].probability_best
    if leader != control:
        p = adjusted.get(leader)
        return None if p is None else 1 - p
    return 1 - min(adjusted.values()) if adjusted else None


def _decide(
    spec: ExperimentSpec,
    *,
    arms: Mapping[str, ArmResult],
    ordered: Sequence[str],
    adjusted: Mapping[str, float],
    required: int | None,
    control: str,
    higher: bool,
) -> Decision | None:
    min_n = min(arms[n].samples for n in ordered)
    if min_n < spec.minimum_samples:
        return None
    method = spec.method.value
    if spec.method is Method.BAYESIAN:
        if required is None or min_n < required:
            return None
        threshold = 1 - spec.alpha / len(ordered)
        top = max(ordered, key=lambda n: arms[n].probability_best or 0.0)
        p_best = arms[top].probability_best or 0.0
        if p_best >= threshold:
            return Decision(
                top,
                f"{top} is best with probability {p_best:.1%} (bayesian, threshold {threshold:.1%})"
                + _lift_text(arms[top], control),
            )
        return Decision(None, f"no arm is best with probability >= {threshold:.1%} at {min_n} outcomes per arm")
    treatments = [n for n in ordered if n != control]
    significant = [n for n in treatments if n in adjusted and adjusted[n] <= spec.alpha]
    better = [n for n in significant if _better(arms[n].value or 0.0, arms[control].value or 0.0, higher)]
    if spec.method is Method.FREQUENTIST and (required is None or min_n < required):
        return None
    if better:
        win = better[0]
        for n in better[1:]:
            if _better(arms[n].value or 0.0, arms[win].value or 0.0, higher):
                win = n
        return Decision(
            win,
            f"{win} beats {control}: p={adjusted[win]:.3g} ({method}, alpha {spec.alpha})"
            + _lift_text(arms[win], control),
        )
    if treatments and len(significant) == len(treatments):
        return Decision(control, f"{control} beats every treatment ({method}, alpha {spec.alpha})")
    if spec.method is Method.FREQUENTIST:
        return Decision(None, f"no significant difference at the horizon of {required} outcomes per arm")
    return None


def _lift_text(arm: ArmResult, control: str) -> str:
    if arm.name == control or arm.lift is None:
        return ""
    interval = ""
    if arm.lift_low is not None and arm.lift_high is not None:
        interval = f" [{arm.lift_low:+.1%}, {arm.lift_high:+.1%}]"
    return f"; lift {arm.lift:+.1%}{interval}"
