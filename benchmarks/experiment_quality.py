"""Decision quality of Sluice's Experiment statistics, by seeded simulation through the REAL experiment core.

Every simulated experiment drives `sluice.experiment.core.step()` once per look (a look every interval), with
cumulative per-arm outcome counts drawn up front with numpy (conversions, baseline rate 10%, relative MDE 10%).
The fixed horizon n_h is the sample size for 80% power at the MDE (two-sided alpha 0.05); a look adds n_h/10
outcomes per arm (n_h/20 in the early-stopping scenario).

Scenarios
- A/A, looks up to 3x the horizon: type-I error of `sequential`, `frequentist` and `bayesian` (decisions as the core
  takes them) beside two naive rules on the same data: a z-test at every look, and "P(best) >= 97.5% at any look".
- A/B at the MDE: power of `frequentist` (and `bayesian`) by the planned horizon, of `sequential` by 3x.
- A/B at 2x the MDE: outcomes per arm at which `sequential` stops, against the fixed horizon.
- Thompson sampling vs a fixed 50/50 split at a 20% lift: expected regret and how often the better arm leads.

Run: .venv/bin/python benchmarks/experiment_quality.py [--sims 2000] [--bandit-sims 500] [--seed 1] [--workers 2]
Writes benchmarks/results/experiment_quality.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sluice.api.experiment import ExperimentPhase, ExperimentSpec, ExperimentStatus
from sluice.experiment import statistics as st
from sluice.experiment.core import TERMINAL, step
from sluice.experiment.observations import ArmObservation, Observations

P0 = 0.10
MDE = 0.10
ALPHA = 0.05
T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_H = math.ceil(st.required_sample_size(st.proportion_effectsize(P0 * (1 + MDE), P0), ALPHA, 0.8))
Counts = npt.NDArray[np.int64]


def make_spec(method: str, looks: int, **extra: Any) -> ExperimentSpec:
    model = {"name": "m", "uri": "file:m.onnx"}
    body: dict[str, Any] = {
        "target": {"name": "m"},
        "variants": [
            {"name": "control", "model": {**model, "version": "v1"}, "weight": 50},
            {"name": "treatment", "model": {**model, "version": "v2"}, "weight": 50},
        ],
        "primaryMetric": {"name": "converted", "kind": "conversion"},
        "method": method,
        "alpha": ALPHA,
        "minimumDetectableEffect": MDE,
        "minimumSamples": 1000,
        "maximumDuration": f"{looks + 1}m",  # looks at minutes 1..looks; the limit ends the run after the last
        "interval": "1m",
    }
    body.update(extra)
    return ExperimentSpec.model_validate(body)


def simulate_counts(
    rng: np.random.Generator, sims: int, looks: int, per_look: int, rates: tuple[float, float]
) -> Counts:
    """Cumulative successes, shape (sims, looks, arms), for `per_look` outcomes per arm per look."""
    draws = np.stack([rng.binomial(per_look, p, size=(sims, looks)) for p in rates], axis=-1)
    return np.cumsum(draws, axis=1)


def drive(spec: ExperimentSpec, successes: Counts, per_look: int, seed: int) -> tuple[str | None, int, int]:
    """Run one experiment through the core: (winner, look it ended at (0 = never), outcomes per arm then)."""
    status, _ = step(spec, ExperimentStatus(), Observations(uid="sim"), T0, np.random.default_rng([seed, 0]))
    for i in range(1, successes.shape[0] + 2):
        k = min(i, successes.shape[0])
        n = per_look * k
        arms = {
            name: ArmObservation(st.Sample(n, float(successes[k - 1, j]), float(successes[k - 1, j])))
            for j, name in enumerate(("control", "treatment"))
        }
        now = T0 + timedelta(minutes=i)
        status, _ = step(spec, status, Observations(uid="sim", arms=arms), now, np.random.default_rng([seed, i]))
        if status.phase in TERMINAL:
            concluded = status.phase is ExperimentPhase.CONCLUDED
            return (status.winner if concluded else None), (i if concluded else 0), n
    return None, 0, per_look * successes.shape[0]


def _chunk(task: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    spec = ExperimentSpec.model_validate(task["spec"])
    counts: Counts = np.asarray(task["counts"])
    return [drive(spec, counts[i], task["per_look"], task["seed"] + i) for i in range(counts.shape[0])]


def run_core(
    pool: ProcessPoolExecutor, spec: ExperimentSpec, counts: Counts, per_look: int, seed: int, workers: int
) -> list[tuple[str | None, int, int]]:
    """The core over every simulated experiment, in `workers` processes (each experiment is sequential)."""
    chunks = np.array_split(np.arange(counts.shape[0]), workers * 4)
    tasks = [
        {
            "spec": spec.model_dump(mode="json", by_alias=True),
            "counts": counts[idx].tolist(),
            "per_look": per_look,
            "seed": seed + int(idx[0]) * 1000,
        }
        for idx in chunks
        if len(idx)
    ]
    out: list[tuple[str | None, int, int]] = []
    for part in pool.map(_chunk, tasks):
        out.extend(part)
    return out


def naive_z_any_look(counts: Counts, per_look: int) -> float:
    """Share of experiments where a two-proportion z-test at ANY look says p < alpha (the peeking mistake)."""
    hits = 0
    for sim in counts:
        for k in range(sim.shape[0]):
            n = per_look * (k + 1)
            c, t = st.Sample(n, sim[k, 0], sim[k, 0]), st.Sample(n, sim[k, 1], sim[k, 1])
            if st.two_proportion_ztest(c, t, ALPHA).p_value < ALPHA:
                hits += 1
                break
    return hits / counts.shape[0]


def naive_bayes_any_look(counts: Counts, per_look: int) -> float:
    """Share where either arm's P(best) >= 1 - alpha/2 at ANY look (normal approximation of the Beta posteriors)."""
    n = per_look * np.arange(1, counts.shape[1] + 1)
    p = (counts + 1) / (n[None, :, None] + 2)
    var = p * (1 - p) / (n[None, :, None] + 3)
    z = (p[..., 1] - p[..., 0]) / np.sqrt(var.sum(axis=-1))
    prob = np.vectorize(st.norm_cdf)(z)
    hit = (prob >= 1 - ALPHA / 2) | (prob <= ALPHA / 2)
    return float(hit.any(axis=1).mean())


def bandit(
    allocation: str, sims: int, looks: int, per_look_total: int, rates: tuple[float, float], seed: int
) -> dict[str, float]:
    """Thompson or fixed allocation in lockstep over `sims` experiments (the core sets each look's weights)."""
    spec = make_spec("bayesian", looks, allocation=allocation, minimumSamples=10**9)
    rng = np.random.default_rng(seed)
    statuses = [
        step(spec, ExperimentStatus(), Observations(uid="sim"), T0, np.random.default_rng([seed, s, 0]))[0]
        for s in range(sims)
    ]
    n = np.zeros((sims, 2))
    x = np.zeros((sims, 2))
    best = max(rates)
    for i in range(1, looks + 1):
        weights = np.array([[v.weight for v in s.variants] for s in statuses], dtype=float) / 100.0
        alloc = rng.binomial(per_look_total, weights[:, 1])
        units = np.stack([per_look_total - alloc, alloc], axis=1)
        n += units
        x += np.stack([rng.binomial(units[:, j], rates[j]) for j in range(2)], axis=1)
        now = T0 + timedelta(minutes=i)
        for s in range(sims):
            arms = {
                name: ArmObservation(st.Sample(n[s, j], x[s, j], x[s, j]))
                for j, name in enumerate(("control", "treatment"))
            }
            statuses[s], _ = step(
                spec, statuses[s], Observations(uid="sim", arms=arms), now, np.random.default_rng([seed, s, i])
            )
    regret = (n * (best - np.array(rates))[None, :]).sum(axis=1)
    better = int(np.argmax(rates))
    names = ("control", "treatment")
    leads = [s.leader == names[better] for s in statuses]
    confident = [(s.variants[better].probability_best or 0.0) >= 1 - ALPHA / 2 for s in statuses]
    return {
        "expected_regret_conversions": float(regret.mean()),
        "regret_per_1000_units": float(regret.mean() / n.sum(axis=1).mean() * 1000),
        "better_arm_share_of_traffic": float((n[:, better] / n.sum(axis=1)).mean()),
        "better_arm_leads": float(np.mean(leads)),
        "better_arm_probability_best_975": float(np.mean(confident)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--bandit-sims", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "experiment_quality.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    per_look = math.ceil(N_H / 10)
    looks_aa = 30
    rows: list[dict[str, Any]] = []
    detail: dict[str, Any] = {"n_h": N_H, "per_look": per_look, "baseline": P0, "mde": MDE, "alpha": ALPHA}

    def row(scenario: str, method: str, measure: str, value: float, goal: str, met: bool | None, **more: Any) -> None:
        rows.append(
            {"scenario": scenario, "method": method, "measure": measure, "value": round(value, 4), "goal": goal}
            | ({"met": bool(met)} if met is not None else {})
            | more
        )
        print(f"{scenario:28s} {method:34s} {measure:34s} {value:10.4f}  {goal}", flush=True)

    with ProcessPoolExecutor(args.workers) as pool:
        # -- A/A: type-I error under continuous peeking ----------------------------------------------------
        aa = simulate_counts(rng, args.sims, looks_aa, per_look, (P0, P0))
        for method in ("sequential", "frequentist", "bayesian"):
            results = run_core(pool, make_spec(method, looks_aa), aa, per_look, args.seed * 7, args.workers)
            rate = sum(w is not None for w, _, _ in results) / len(results)
            row("A/A, 30 looks", method, "false positives", rate, f"<= {ALPHA}", rate <= ALPHA, sims=args.sims)
        rate = naive_z_any_look(aa, per_look)
        row("A/A, 30 looks", "naive z-test at every look", "false positives", rate, "20-30% expected", None)
        rate = naive_bayes_any_look(aa, per_look)
        row("A/A, 30 looks", "naive P(best)>=97.5% at every look", "false positives", rate, "(contrast)", None)

        # -- power at the MDE ------------------------------------------------------------------------------
        at_mde = simulate_counts(rng, args.sims, looks_aa, per_look, (P0, P0 * (1 + MDE)))
        for method, goal in (("frequentist", ">= 0.80"), ("bayesian", "(reported)"), ("sequential", "(reported)")):
            results = run_core(pool, make_spec(method, looks_aa), at_mde, per_look, args.seed * 11, args.workers)
            power = sum(w == "treatment" for w, _, _ in results) / len(results)
            by = "by the horizon" if method != "sequential" else "by 3x the horizon"
            row(
                f"A/B at the MDE (+{MDE:.0%})",
                method,
                f"power {by}",
                power,
                goal,
                power >= 0.8 if "0.80" in goal else None,
            )

        # -- sequential at 2x the MDE: early stopping -----------------------------------------------------
        fine = math.ceil(N_H / 20)
        at_2mde = simulate_counts(rng, args.sims, 60, fine, (P0, P0 * (1 + 2 * MDE)))
        results = run_core(pool, make_spec("sequential", 60), at_2mde, fine, args.seed * 13, args.workers)
        samples = np.array([n for _, _, n in results], dtype=float)
        stopped = sum(w == "treatment" for w, _, _ in results) / len(results)
        reduction = 1 - samples.mean() / N_H
        row(
            f"A/B at 2x the MDE (+{2 * MDE:.0%})",
            "sequential",
            "outcomes per arm at stop / fixed horizon",
            samples.mean() / N_H,
            "<= 0.70 (>= 30% fewer)",
            reduction >= 0.30,
            mean_outcomes_per_arm=round(float(samples.mean())),
            median_outcomes_per_arm=round(float(np.median(samples))),
            fixed_horizon=N_H,
            stopped_for_treatment=round(stopped, 4),
        )

    # -- Thompson vs fixed at a 20% lift ----------------------------------------------------------------------
    rates = (P0, P0 * 1.2)
    for allocation in ("fixed", "thompson"):
        out = bandit(allocation, args.bandit_sims, 20, 2 * per_look // 4, rates, args.seed * 17)
        for key, value in out.items():
            row("bandit at +20% (20 looks)", allocation, key, value, "", None, sims=args.bandit_sims)
        detail[f"bandit_{allocation}"] = out

    elapsed = time.perf_counter() - started
    report = {
        "benchmark": "experiment_quality",
        "command": "  .venv/bin/python benchmarks/experiment_quality.py".strip()
        + f" --sims {args.sims} --bandit-sims {args.bandit_sims} --seed {args.seed} --workers {args.workers}",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "seconds": round(elapsed, 1),
        "summary": rows,
        "detail": detail,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
