"""Decision quality of Sluice's rollout analysis against a bare-threshold policy, by seeded simulation.

Each simulated rollout drives the REAL `sluice.rollout.step()`; every interval's checks run through the real
`sluice.rollout.analysis.evaluate()` (Sluice) or a bare-threshold evaluation (naive) on the same simulated counts.
Per interval the simulation draws, at a given request rate: the canary/stable split from the canary weight the
core set, 5xx errors per variant, a latency histogram and a prediction-score histogram on the router's buckets.

Scenarios: A/A (identical canary), 2x the stable error rate, a prediction shift with PSI >= 0.25.
Run: .venv/bin/python benchmarks/decision_quality.py [--runs 200] [--seed 1]
Writes benchmarks/results/decision_quality.json.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from results_io import write_results
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import CheckResult, ModelDeploymentStatus, Phase, Verdict
from sluice.rollout import Observations, revision_hash, step
from sluice.rollout import statistics as st
from sluice.rollout.analysis import AnalysisOutcome, evaluate
from sluice.rollout.measurements import Histogram, TrafficSample, Value, VariantSample
from sluice.serving.metric_names import LATENCY_BUCKETS, SCORE_BUCKETS

INTERVAL_S = 30
STEPS = (20, 40, 60, 80)
POLICIES = ("sluice", "sluice-advance-when-inconclusive", "naive")
MAX_INTERVALS = 20
STABLE_ERROR_RATE = 0.01
PSI_LIMIT = 0.2
RATIO_LIMIT = 2.0
SCORE_EDGES = (*SCORE_BUCKETS, math.inf)
LATENCY_EDGES = (*LATENCY_BUCKETS, math.inf)


def make_spec(version: str) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "fraud", "uri": f"file:models/{version}.onnx", "version": version},
            "rollout": {"strategy": "canary", "canary": {"steps": [{"weight": w} for w in STEPS]}},
            "analysis": {
                "interval": f"{INTERVAL_S}s",
                "failureThreshold": 2,
                "minRequests": 50,
                "progressDeadline": "15m",
                "checks": [
                    {"name": "error-rate", "type": "error-rate", "maxRatioToStable": RATIO_LIMIT},
                    {"name": "latency-p99", "type": "latency-p99", "maxRatioToStable": 2.0},
                    {"name": "prediction-drift", "type": "prediction-drift", "max": PSI_LIMIT},
                ],
            },
        }
    )


def bucket_probs(cdf: Any, edges: tuple[float, ...]) -> npt.NDArray[np.float64]:
    upper = np.array([min(e, 1e9) for e in edges])
    c = cdf(upper)
    c[-1] = 1.0
    return np.diff(np.concatenate([[0.0], c]))


STABLE_SCORES = bucket_probs(stats.beta(2, 5).cdf, SCORE_EDGES)
SHIFTED_SCORES = bucket_probs(stats.beta(2.5, 4.2).cdf, SCORE_EDGES)  # PSI 0.278 vs stable
LATENCY = bucket_probs(stats.lognorm(s=0.5, scale=0.02).cdf, LATENCY_EDGES)
_USED = STABLE_SCORES > 0
TRUE_SHIFT_PSI = float(
    np.sum((SHIFTED_SCORES[_USED] - STABLE_SCORES[_USED]) * np.log(SHIFTED_SCORES[_USED] / STABLE_SCORES[_USED]))
)


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_error_rate: float
    canary_scores: npt.NDArray[np.float64]
    bad: bool


SCENARIOS = (
    Scenario("aa-identical", STABLE_ERROR_RATE, STABLE_SCORES, bad=False),
    Scenario("error-rate-2x", 2 * STABLE_ERROR_RATE, STABLE_SCORES, bad=True),
    Scenario("prediction-shift", STABLE_ERROR_RATE, SHIFTED_SCORES, bad=True),
)


def draw(rng: np.random.Generator, rps: float, weight: int, sc: Scenario) -> TrafficSample:
    total = rng.poisson(rps * INTERVAL_S)
    nc = int(rng.binomial(total, weight / 100))
    ns = int(total - nc)

    def variant(n: int, error_rate: float, scores: npt.NDArray[np.float64]) -> VariantSample:
        return VariantSample(
            requests=n,
            errors=int(rng.binomial(n, error_rate)),
            latency=Histogram(LATENCY_EDGES, tuple(float(x) for x in rng.multinomial(n, LATENCY))),
            scores=Histogram(SCORE_EDGES, tuple(float(x) for x in rng.multinomial(n, scores))),
        )

    return TrafficSample(
        stable=variant(ns, STABLE_ERROR_RATE, STABLE_SCORES), canary=variant(nc, sc.canary_error_rate, sc.canary_scores)
    )


def naive_evaluate(spec: ModelDeploymentSpec, sample: TrafficSample, now: datetime) -> AnalysisOutcome:
    """A bare-threshold policy: point estimates against the same limits, no sample-size awareness."""
    c, s = sample.canary, sample.stable
    if c.requests < spec.analysis.min_requests:
        return AnalysisOutcome(now, (CheckResult(name="naive", verdict=Verdict.NO_DATA),))
    fail = []
    if c.errors / c.requests > RATIO_LIMIT * (s.errors / s.requests if s.requests else 0.0):
        fail.append("error-rate")
    if not (c.latency and s.latency and c.scores and s.scores):
        return AnalysisOutcome(now, (CheckResult(name="naive", verdict=Verdict.NO_DATA),))
    p99c = st.histogram_quantile(0.99, c.latency.upper_bounds, c.latency.counts) or 0.0
    p99s = st.histogram_quantile(0.99, s.latency.upper_bounds, s.latency.counts) or 0.0
    if p99c > 2.0 * p99s:
        fail.append("latency-p99")
    if st.psi(s.scores.counts, c.scores.counts) > PSI_LIMIT:
        fail.append("prediction-drift")
    verdict = Verdict.FAIL if fail else Verdict.PASS
    return AnalysisOutcome(now, (CheckResult(name="naive", verdict=verdict, message=",".join(fail)),))


def rollout(rng: np.random.Generator, rps: float, sc: Scenario, policy: str) -> tuple[str, int]:
    """One rollout from a stable v1 to v2. Returns (outcome, analyses until it ended)."""
    v1, v2 = make_spec("v1"), make_spec("v2")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    status = ModelDeploymentStatus()
    for spec, canary_ready in ((v1, False), (v1, False), (v2, False), (v2, True)):
        now += timedelta(seconds=1)
        status, _ = step(spec, status, Observations(revision_hash(spec), 1, True, canary_ready), now)
    if status.phase is not Phase.PROGRESSING or status.canary_weight != STEPS[0]:
        raise RuntimeError(f"rollout did not start as expected: {status.message}")
    rev = revision_hash(v2)
    for analyses in range(1, MAX_INTERVALS + 1):
        now += timedelta(seconds=INTERVAL_S)
        sample = draw(rng, rps, status.canary_weight, sc)
        if policy == "sluice":
            outcome = evaluate(v2, status, Value(sample), {}, now)
        elif policy == "sluice-advance-when-inconclusive":
            outcome = evaluate(v2, status, Value(sample), {}, now, accept_llr=math.inf)
        else:
            outcome = naive_evaluate(v2, sample, now)
        status, _ = step(v2, status, Observations(rev, 1, True, True, analysis=outcome), now)
        if status.phase is Phase.ROLLED_BACK:
            return "rolled-back", analyses
        if status.phase is Phase.PROMOTING:
            return "promoted", analyses
    return "undecided", MAX_INTERVALS


def summarise(results: list[tuple[str, int]], within: int) -> dict[str, Any]:
    n = len(results)
    rolled = [k for o, k in results if o == "rolled-back"]
    promoted = [k for o, k in results if o == "promoted"]
    return {
        "runs": n,
        "rolled_back": len(rolled) / n,
        "rolled_back_within_threshold_plus_1": sum(1 for k in rolled if k <= within) / n,
        "promoted": sum(1 for o, _ in results if o == "promoted") / n,
        "mean_analyses_to_promotion": float(np.mean(promoted)) if promoted else None,
        "mean_analyses_to_rollback": float(np.mean(rolled)) if rolled else None,
    }


GOAL = "A/A rolled back <= 1%; a 2x error rate rolled back within failureThreshold + 1 analyses in >= 95%"
MACHINE = "not machine-dependent: a seeded simulation (same seed, same numbers)"
DEFAULT_RPS = (50.0, 200.0, 500.0)


def summary_rows(results: dict[str, Any], within: int) -> list[dict[str, Any]]:
    """One flat row per rate, scenario and policy: the table of the benchmarks page (shares in percent)."""
    rows = []
    for rate, scenarios in results.items():
        for scenario, policies in scenarios.items():
            for policy, r in policies.items():
                if not isinstance(r, dict) or "runs" not in r:
                    continue  # the per-scenario ratios and target, not a policy
                rows.append(
                    {
                        "rate": rate,
                        "scenario": scenario,
                        "policy": policy,
                        "runs": r["runs"],
                        "rolled back %": round(100 * r["rolled_back"], 1),
                        f"within {within} analyses %": round(100 * r["rolled_back_within_threshold_plus_1"], 1),
                        "promoted %": round(100 * r["promoted"], 1),
                        "analyses to promotion": r["mean_analyses_to_promotion"],
                        "meets target": scenarios[scenario].get("sluice_meets_target") if policy == "sluice" else None,
                    }
                )
    return rows


def page_notes(setup: dict[str, Any], runs: int) -> list[str]:
    """The paragraphs under the table on the benchmarks page: what one row is and the policies compared."""
    return [
        f"Each row: {runs} seeded rollouts driving the real `step()` and check evaluation. "
        f"Interval {setup['interval_s']} s, canary steps {setup['canary_steps']}, failureThreshold "
        f"{setup['failure_threshold']}, minRequests {setup['min_requests']}, stable error rate "
        f"{setup['stable_error_rate']}; checks: {setup['checks']}; true PSI of the prediction shift "
        f"{setup['true_psi_of_prediction_shift']}.",
        f"*naive*: {setup['naive_policy']}. *sluice-advance-when-inconclusive*: "
        f"{setup['sluice-advance-when-inconclusive']}.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="simulated rollouts per scenario, policy and rate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rps", type=float, nargs="+", default=list(DEFAULT_RPS), help="request rates to test")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decision_quality.json")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    within = make_spec("v2").analysis.failure_threshold + 1
    started = time.perf_counter()
    command = f"python benchmarks/decision_quality.py --runs {args.runs} --seed {args.seed}"
    if tuple(args.rps) != DEFAULT_RPS:
        command += " --rps " + " ".join(f"{r:g}" for r in args.rps)
    report: dict[str, Any] = {
        "goal": GOAL,
        "setup": {
            "interval_s": INTERVAL_S,
            "canary_steps": list(STEPS),
            "failure_threshold": within - 1,
            "min_requests": 50,
            "stable_error_rate": STABLE_ERROR_RATE,
            "checks": "error-rate maxRatioToStable 2 | latency-p99 maxRatioToStable 2 | prediction-drift max 0.2",
            "true_psi_of_prediction_shift": round(TRUE_SHIFT_PSI, 4),
            "naive_policy": "point estimates: canary error rate > 2x stable, raw PSI > 0.2, p99 > 2x stable",
            "sluice-advance-when-inconclusive": "Sluice's tests, but a step advances whenever the error-ratio SPRT "
            "has not rejected (ablation of holding while the evidence leans towards 'worse')",
        },
        "results": {},
    }
    rng_root = np.random.default_rng(args.seed)
    for rps in args.rps:
        per_rate: dict[str, Any] = {}
        for sc in SCENARIOS:
            seed = int(rng_root.integers(2**32))
            row: dict[str, Any] = {}
            for policy in POLICIES:
                rng = np.random.default_rng(seed)  # same traffic draws for both policies
                row[policy] = summarise([rollout(rng, rps, sc, policy) for _ in range(args.runs)], within)
            key = "rolled_back" if not sc.bad else "rolled_back_within_threshold_plus_1"
            naive, ours = row["naive"][key], row["sluice"][key]
            ratios = {key: (naive / ours) if ours else None}
            if sc.bad:  # a bad canary that reaches full traffic is the harm this exists to prevent
                bad_naive, bad_ours = row["naive"]["promoted"], row["sluice"]["promoted"]
                ratios["promoted"] = (bad_naive / bad_ours) if bad_ours else None
            row["naive_over_sluice"] = ratios
            row["target"] = "rolled_back <= 0.01" if not sc.bad else f"rolled back within {within} analyses >= 0.95"
            row["sluice_meets_target"] = ours <= 0.01 if not sc.bad else ours >= 0.95
            per_rate[sc.name] = row
        report["results"][f"{rps:g}rps"] = per_rate
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["notes"] = page_notes(report["setup"], args.runs)
    write_results(
        args.out, "decision_quality", command, MACHINE, summary_rows(report["results"], within), detail=report
    )
    for rate, per_rate in report["results"].items():
        for name, row in per_rate.items():
            cells = " | ".join(
                f"{p}: rolled back {row[p]['rolled_back']:.3f} (within {within}: "
                f"{row[p]['rolled_back_within_threshold_plus_1']:.3f}) promoted {row[p]['promoted']:.3f}"
                for p in POLICIES
            )
            print(f"{rate:>7} {name:17} {cells} | target met: {row['sluice_meets_target']}")
    print(f"true PSI of the shift: {TRUE_SHIFT_PSI:.3f}; {report['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
