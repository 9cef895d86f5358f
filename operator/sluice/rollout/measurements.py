"""Metric readings as data: a value, no data, or an error. Providers produce them; analysis consumes them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Value(Generic[T]):
    value: T


@dataclass(frozen=True)
class NoData:
    """Nothing to judge yet (no series, first scrape, too little traffic). Holds progress, never decides."""

    reason: str


@dataclass(frozen=True)
class MetricError:
    """The metric could not be read (timeout, HTTP error, bad response). Counted apart from failures."""

    message: str


Measurement: TypeAlias = Value[T] | NoData | MetricError


@dataclass(frozen=True)
class Histogram:
    """Per-bucket (not cumulative) counts; `upper_bounds` ascend and end with +Inf."""

    upper_bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.upper_bounds) != len(self.counts):
            raise ValueError(f"{len(self.upper_bounds)} bucket bounds but {len(self.counts)} counts")
        if list(self.upper_bounds) != sorted(self.upper_bounds):
            raise ValueError(f"bucket bounds must ascend, got {self.upper_bounds}")

    @property
    def total(self) -> float:
        return sum(self.counts)

    @classmethod
    def from_cumulative(cls, buckets: dict[float, float]) -> Histogram:
        """Build from Prometheus `le` buckets (cumulative counts keyed by upper bound)."""
        bounds = sorted(buckets)
        if not bounds or not math.isinf(bounds[-1]):
            bounds.append(math.inf)
            buckets = {**buckets, math.inf: max(buckets.values(), default=0.0)}
        cum = [buckets[b] for b in bounds]
        counts = [max(0.0, c - p) for c, p in zip(cum, [0.0, *cum[:-1]], strict=True)]
        return cls(tuple(bounds), tuple(counts))


@dataclass(frozen=True)
class VariantSample:
    """One variant's traffic during one analysis interval."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    latency: Histogram | None = None  # seconds
    scores: Histogram | None = None  # prediction scores, buckets shared by both variants


@dataclass(frozen=True)
class TrafficSample:
    """What the built-in checks need about one interval: both variants, plus shadow comparison counts."""

    stable: VariantSample
    canary: VariantSample
    shadow_agree: float = 0.0
    shadow_disagree: float = 0.0
    shadow_errors: float = 0.0
