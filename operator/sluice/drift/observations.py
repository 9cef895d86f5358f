"""What a platform tells the drift core: the reference, the window's counts (or why they could not be had).

Counts come from the router's cumulative counters. `window_counts` turns two readings into the counts of the
window between them (a counter that went down was restarted: its later value is the increase, as Prometheus'
`increase()` reads it); `baseline` picks the earlier reading for a window from a platform's short history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy.typing as npt

from sluice.drift.profile import Profile

Counts = Mapping[str, Sequence[float]]  # feature key -> count per bin, in the profile's bin order


@dataclass(frozen=True)
class Reading:
    """Cumulative per-bin counters of every feature at one time, summed over versions and variants."""

    time: datetime
    bins: Counts
    missing: Mapping[str, float] = field(default_factory=dict)  # rows whose feature could not be read


@dataclass(frozen=True)
class Problem:
    """Why an evaluation could not run: a CamelCase reason, the field at fault and a sentence."""

    reason: str
    field: str
    message: str


@dataclass(frozen=True)
class Observations:
    """Everything `step` may look at besides the spec, the status and the time."""

    policy: str  # the DriftPolicy's name (Job names, env vars, messages)
    generation: int | None = None
    reference: Profile | None = None
    reference_uri: str = ""  # where the reference came from, passed on to a retrain Job
    window: Counts | None = None  # counts per feature in the window ending now; None: not measured
    window_start: datetime | None = None
    window_missing: Mapping[str, float] = field(default_factory=dict)  # rows without the feature in the window
    problem: Problem | None = None  # the reference or the counters could not be read
    capturing: str | None = None  # the reference is still being captured (fromStableVersion): how far, in words
    current_samples: Mapping[str, npt.ArrayLike] = field(default_factory=dict)  # raw values for exact KS


def window_counts(earlier: Reading | None, later: Reading) -> dict[str, list[float]]:
    """Per-bin increase from `earlier` to `later`; a bin whose counter went down restarted from zero."""
    out: dict[str, list[float]] = {}
    for key, now_bins in later.bins.items():
        before = earlier.bins.get(key) if earlier is not None else None
        if before is None or len(before) != len(now_bins):
            out[key] = [float(v) for v in now_bins]
            continue
        out[key] = [float(n - b) if n >= b else float(n) for n, b in zip(now_bins, before, strict=True)]
    return out


def window_missing(earlier: Reading | None, later: Reading) -> dict[str, float]:
    """Per-feature increase of the missing-row counters (a counter that went down restarted)."""
    out: dict[str, float] = {}
    for key, now in later.missing.items():
        before = earlier.missing.get(key, 0.0) if earlier is not None else 0.0
        out[key] = now - before if now >= before else now
    return out


def baseline(readings: Sequence[Reading], now: datetime, window: timedelta) -> Reading | None:
    """The newest reading at least `window` old; else the oldest one (a partial window); None when empty."""
    if not readings:
        return None
    ordered = sorted(readings, key=lambda r: r.time)
    old_enough = [r for r in ordered if r.time <= now - window]
    return old_enough[-1] if old_enough else ordered[0]
