"""The MetricProvider seam, and the assembly of raw series into what the built-in checks need."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sluice.experiment.statistics import Sample
from sluice.rollout.actions import CANARY, STABLE
from sluice.rollout.measurements import Histogram, Measurement, TrafficSample, VariantSample


@dataclass(frozen=True)
class Window:
    """Which series to read and over how long: the router labels every series with model/version/variant."""

    model: str
    interval_s: float
    selector: str = ""  # extra PromQL label matchers, e.g. 'namespace="prod"' (prometheus only)


@dataclass(frozen=True)
class ArmCounters:
    """One experiment arm's cumulative counters (since the router started): the primary metric's outcomes joined to
    the arm (count, sum, sum of squares), and the arm's requests, 5xx errors and latency buckets for guardrails."""

    outcomes: Sample
    requests: float = 0.0
    errors: float = 0.0
    latency: Histogram | None = None


ArmsReading = dict[str, ArmCounters]  # by variant (arm) name
FeatureBinCounts = dict[str, dict[int, float]]  # drift: feature key -> bin index -> cumulative rows
MISSING_BIN = -1  # the FeatureBinCounts index of the rows whose feature could not be read (input absent, NaN, ...)


@runtime_checkable
class FeatureCounts(Protocol):
    """Reads a drift policy's per-feature bin counters from the router (builtin provider)."""

    async def feature_bins(self, model: str, policy: str) -> Measurement[FeatureBinCounts]:
        """Cumulative rows per feature and bin since the router started, summed over versions and variants."""
        ...


@runtime_checkable
class MetricProvider(Protocol):
    """Reads one analysis interval's measurements. Failures are returned as data (NoData/MetricError), not raised."""

    async def sample(self, window: Window) -> Measurement[TrafficSample]:
        """Requests, 5xx errors, latency and score histograms per variant, and shadow comparisons, over the window."""
        ...

    async def query(self, promql: str) -> Measurement[float]:
        """One number from a custom query (checks of type promql)."""
        ...

    async def arms(self, window: Window, metric: str) -> Measurement[ArmsReading]:
        """Experiment arms: cumulative outcomes of `metric` and requests/errors/latency, per variant."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


def parse_le(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)


def assemble(
    requests: Mapping[tuple[str, str], float],
    latency: Mapping[str, Mapping[float, float]],
    scores: Mapping[str, Mapping[float, float]],
    shadow: Mapping[str, float],
) -> TrafficSample:
    """Build a TrafficSample from per-interval series: requests by (variant, code), cumulative buckets by variant."""

    def variant(name: str) -> VariantSample:
        total = sum(v for (var, _), v in requests.items() if var == name)
        errors = sum(v for (var, code), v in requests.items() if var == name and code.startswith("5"))
        lat = Histogram.from_cumulative(dict(latency[name])) if latency.get(name) else None
        sc = Histogram.from_cumulative(dict(scores[name])) if scores.get(name) else None
        return VariantSample(requests=total, errors=errors, latency=lat, scores=sc)

    return TrafficSample(
        stable=variant(STABLE),
        canary=variant(CANARY),
        shadow_agree=shadow.get("agree", 0.0),
        shadow_disagree=shadow.get("disagree", 0.0),
        shadow_errors=shadow.get("error", 0.0),
    )


def assemble_arms(
    outcomes: Mapping[tuple[str, str], float],
    requests: Mapping[tuple[str, str], float],
    latency: Mapping[str, Mapping[float, float]],
) -> ArmsReading:
    """ArmsReading from cumulative series: outcomes by (variant, kind of sum), requests by (variant, code)."""
    names = {v for v, _ in outcomes} | {v for v, _ in requests}
    out: ArmsReading = {}
    for name in sorted(names):
        total = sum(v for (var, _), v in requests.items() if var == name)
        errors = sum(v for (var, code), v in requests.items() if var == name and code.startswith("5"))
        lat = Histogram.from_cumulative(dict(latency[name])) if latency.get(name) else None
        sample = Sample(
            outcomes.get((name, "count"), 0.0), outcomes.get((name, "sum"), 0.0), outcomes.get((name, "squares"), 0.0)
        )
        out[name] = ArmCounters(sample, total, errors, lat)
    return out
