"""Online feature histograms for DriftPolicies: every request's rows counted per bin of a reference profile.

The router never keeps a payload: each request's features and prediction become bin indices on the profile's
edges (vectorised over the batch), and only the counts stay, per (version, variant). All counts of all policies
live in one int64 vector per variant with a fixed slot layout (each feature: its k bins, then one "missing" slot),
so a request costs one `np.bincount` and one vector add whatever the number of features, and /metrics renders
bounded series (policy x feature x bin x variant), never more than `MAX_BINS_TOTAL` per variant.

Missing: a row whose feature cannot be read (input absent, column beyond the input's width, an input whose row
count differs from the request's, a 2-D input of several columns named without a column, NaN, a non-numeric
value for numeric edges) lands in the feature's missing slot, exported as `sluice_feature_missing_total`; so
`rows - sum(bins) == missing` for every feature. The rows of a request are the first dimension of its first input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.serving import metric_names as mn
from sluice.serving.config import PREDICTION, Bins, DriftProfileConfig
from sluice.serving.scores import Scored
from sluice.serving.tensors import Tensor

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

# Below this many comparisons (rows x features x edges) one broadcast compare beats a searchsorted per feature.
_BROADCAST_MAX = 8192


@dataclass(frozen=True, slots=True)
class _Slot:
    policy: int
    key: str
    size: int  # k bins
    offset: int  # slot of bin 0; the missing slot is offset + size


@dataclass(slots=True)
class _Numeric:
    """Numeric features of one input, binned together."""

    columns: IntArray  # -1: the input's only column (a 1-D input, or 2-D of width 1)
    edges: list[FloatArray]
    padded: FloatArray  # features x max edges, NaN-padded (NaN never compares true)
    offsets: IntArray
    missing: IntArray


@dataclass(slots=True)
class _Categorical:
    column: int
    offset: int
    missing: int
    other: int  # bin index of "other" (k - 1)
    lookup: dict[Any, int]  # category as str and as UTF-8 bytes -> bin
    numbers: FloatArray  # categories that parse as numbers, sorted
    number_bins: IntArray  # their bins


@dataclass(slots=True)
class _Plan:
    profiles: tuple[DriftProfileConfig, ...]
    slots: list[_Slot]
    total: int
    numeric: dict[str, _Numeric] = field(default_factory=dict)
    categorical: dict[str, list[_Categorical]] = field(default_factory=dict)
    prediction: list[tuple[_Slot, Bins]] = field(default_factory=list)


def _categorical(bins: Bins, column: int, offset: int) -> _Categorical:
    cats = bins.categories or ()
    lookup: dict[Any, int] = {}
    numbers: list[tuple[float, int]] = []
    for i, c in enumerate(cats):
        lookup[c] = i
        lookup[c.encode()] = i
        with contextlib.suppress(ValueError):
            numbers.append((float(c), i))
    numbers.sort()
    return _Categorical(
        column=column,
        offset=offset,
        missing=offset + len(cats) + 1,
        other=len(cats),
        lookup=lookup,
        numbers=np.array([n for n, _ in numbers], dtype=np.float64),
        number_bins=np.array([b for _, b in numbers], dtype=np.int64),
    )


def _compile(profiles: tuple[DriftProfileConfig, ...]) -> _Plan:
    plan = _Plan(profiles=profiles, slots=[], total=0)
    numeric: dict[str, list[tuple[int, FloatArray, int]]] = {}
    offset = 0
    for p, profile in enumerate(profiles):
        for f in profile.features:
            slot = _Slot(p, f.key, f.size, offset)
            plan.slots.append(slot)
            column = -1 if f.column is None else f.column
            if f.edges is not None:
                numeric.setdefault(f.input, []).append((column, np.array(f.edges, dtype=np.float64), offset))
            else:
                plan.categorical.setdefault(f.input, []).append(_categorical(f, column, offset))
            offset += f.size + 1
        if profile.prediction is not None:
            slot = _Slot(p, PREDICTION, profile.prediction.size, offset)
            plan.slots.append(slot)
            plan.prediction.append((slot, profile.prediction))
            offset += profile.prediction.size + 1
    plan.total = offset
    for name, feats in numeric.items():
        width = max(len(e) for _, e, _ in feats)
        padded = np.full((len(feats), width), np.nan)
        for j, (_, e, _) in enumerate(feats):
            padded[j, : len(e)] = e
        plan.numeric[name] = _Numeric(
            columns=np.array([c for c, _, _ in feats], dtype=np.int64),
            edges=[e for _, e, _ in feats],
            padded=padded,
            offsets=np.array([o for _, _, o in feats], dtype=np.int64),
            missing=np.array([o + len(e) + 1 for _, e, o in feats], dtype=np.int64),
        )
    return plan


def _matrix(tensor: Tensor | None, rows: int) -> npt.NDArray[Any] | None:
    """The input as rows x width, or None when it cannot give `rows` rows."""
    if tensor is None:
        return None
    data = tensor.data
    if data.ndim == 0 or data.shape[0] != rows:
        return None
    return data.reshape(rows, -1)


def _numeric_bins(group: _Numeric, x: FloatArray) -> IntArray:
    """Bin index per row and feature: the number of edges <= x (np.searchsorted side='right')."""
    rows, feats = x.shape
    if rows * feats * group.padded.shape[1] <= _BROADCAST_MAX:
        counted: IntArray = (x[:, :, None] >= group.padded[None, :, :]).sum(axis=2, dtype=np.int64)
        return counted
    out = np.empty((rows, feats), dtype=np.int64)
    for j, edges in enumerate(group.edges):
        out[:, j] = np.searchsorted(edges, x[:, j], side="right")
    return out


def _as_float(values: npt.NDArray[Any]) -> FloatArray | None:
    if values.dtype.kind in "biuf":
        return values.astype(np.float64, copy=False)
    try:
        return np.asarray(values, dtype=np.float64)  # BYTES that hold numbers ("1.5")
    except (TypeError, ValueError):
        return None


class FeatureCounts(Collector):
    """Bin counts of every DriftPolicy profile, per (version, variant); a Prometheus collector for /metrics."""

    def __init__(self, profiles: Sequence[DriftProfileConfig], model: Any) -> None:
        self._model = model  # () -> current model name
        self._plan = _compile(tuple(profiles))
        self.counts: dict[tuple[str, str], tuple[IntArray, IntArray]] = {}  # -> (slots, rows per policy)

    @property
    def active(self) -> bool:
        return bool(self._plan.slots)

    def configure(self, profiles: Sequence[DriftProfileConfig]) -> None:
        """New profiles; counts of a policy whose profile is unchanged carry over, others start from zero."""
        profiles = tuple(profiles)
        old = self._plan
        if profiles == old.profiles:
            return
        new = _compile(profiles)
        carried: dict[tuple[str, str], tuple[IntArray, IntArray]] = {}
        for key, (slots, rows) in self.counts.items():
            nslots, nrows = np.zeros(new.total, dtype=np.int64), np.zeros(len(profiles), dtype=np.int64)
            for p_new, profile in enumerate(profiles):
                p_old = next((i for i, q in enumerate(old.profiles) if q == profile), None)
                if p_old is None:
                    continue
                nrows[p_new] = rows[p_old]
                src = [s for s in old.slots if s.policy == p_old]
                dst = [s for s in new.slots if s.policy == p_new]
                for a, b in zip(src, dst, strict=True):
                    nslots[b.offset : b.offset + b.size + 1] = slots[a.offset : a.offset + a.size + 1]
            carried[key] = (nslots, nrows)
        self._plan, self.counts = new, carried

    def observe(self, version: str, variant: str, inputs: Sequence[Tensor], scored: Scored | None) -> None:
        """Count one request's rows (no payload kept)."""
        plan = self._plan
        if not plan.slots or not inputs:
            return
        first = inputs[0].data
        rows = int(first.shape[0]) if first.ndim else 1
        if rows == 0:
            return
        by_name = {t.name: t for t in inputs}
        parts: list[IntArray] = []
        missing: list[IntArray] = []
        for name, group in plan.numeric.items():
            m = _matrix(by_name.get(name), rows)
            x = _as_float(m) if m is not None else None
            if x is None or m is None or m.shape[1] == 0:
                missing.append(group.missing)
                continue
            width = m.shape[1]
            cols = np.where(group.columns < 0, 0, group.columns)
            readable = (cols < width) & ((group.columns >= 0) | (width == 1))
            if not readable.all():
                missing.append(group.missing[~readable])
            values = x[:, np.where(readable, cols, 0)]
            idx = group.offsets + _numeric_bins(group, values)
            nan = np.isnan(values)
            if nan.any():
                idx = np.where(nan, group.missing, idx)
            parts.append(idx[:, readable].ravel())
        for name, cats in plan.categorical.items():
            m = _matrix(by_name.get(name), rows)
            for cat in cats:
                parts.append(self._categories(cat, m, rows))
        for slot, bins in plan.prediction:
            parts.append(self._prediction(slot, bins, scored, rows))
        counts = self.counts.get((version, variant))
        if counts is None:
            counts = self.counts[(version, variant)] = (
                np.zeros(plan.total, dtype=np.int64),
                np.zeros(len(plan.profiles), dtype=np.int64),
            )
        slots, per_policy = counts
        if parts:
            slots += np.bincount(np.concatenate(parts), minlength=plan.total)
        for miss in missing:
            slots[miss] += rows  # slots within one group are distinct: fancy-index add is exact
        per_policy += rows

    @staticmethod
    def _categories(cat: _Categorical, m: npt.NDArray[Any] | None, rows: int) -> IntArray:
        col = 0 if cat.column < 0 else cat.column
        if m is None or col >= m.shape[1] or (cat.column < 0 and m.shape[1] != 1):
            return np.full(rows, cat.missing, dtype=np.int64)
        values = m[:, col]
        if values.dtype.kind in "biuf":
            v = values.astype(np.float64, copy=False)
            bins = np.full(rows, cat.other, dtype=np.int64)
            if len(cat.numbers):
                pos = np.minimum(np.searchsorted(cat.numbers, v), len(cat.numbers) - 1)
                hit = cat.numbers[pos] == v
                bins = np.where(hit, cat.number_bins[pos], bins)
            if v.dtype.kind == "f":
                bins = np.where(np.isnan(v), cat.missing - cat.offset, bins)
        else:
            lookup, other = cat.lookup, cat.other
            bins = np.fromiter((lookup.get(x, other) for x in values), dtype=np.int64, count=rows)
        return cat.offset + bins

    @staticmethod
    def _prediction(slot: _Slot, bins: Bins, scored: Scored | None, rows: int) -> IntArray:
        miss = np.full(rows, slot.offset + slot.size, dtype=np.int64)
        if scored is None:
            return miss
        if bins.edges is not None:
            values = scored.scores
            if len(values) != rows:
                return miss
            idx = slot.offset + np.searchsorted(np.asarray(bins.edges), values, side="right")
            return np.where(np.isnan(values), miss, idx)
        labels = scored.labels if scored.labels is not None else scored.scores
        if len(labels) != rows:
            return miss
        cat = _categorical(bins, 0, slot.offset)  # labels are few and small: built per call, not worth caching
        return FeatureCounts._categories(cat, np.asarray(labels).reshape(rows, 1), rows)

    def collect(self) -> Iterator[Metric]:
        plan, model = self._plan, self._model()
        if not plan.slots:
            return
        bins = CounterMetricFamily(
            mn.FEATURE_BIN_TOTAL.removesuffix("_total"),
            "Rows per bin of a DriftPolicy feature.",
            labels=[*mn.LABELS, "policy", "feature", "bin"],
        )
        missing = CounterMetricFamily(
            mn.FEATURE_MISSING_TOTAL.removesuffix("_total"),
            "Rows whose feature could not be read.",
            labels=[*mn.LABELS, "policy", "feature"],
        )
        rows = CounterMetricFamily(
            mn.FEATURE_ROWS_TOTAL.removesuffix("_total"), "Rows binned per policy.", labels=[*mn.LABELS, "policy"]
        )
        names = [p.policy for p in plan.profiles]
        for (version, variant), (slots, per_policy) in list(self.counts.items()):
            values = slots.tolist()
            for s in plan.slots:
                base = [model, version, variant, names[s.policy], s.key]
                for i in range(s.size):
                    bins.add_metric([*base, str(i)], values[s.offset + i])
                missing.add_metric(base, values[s.offset + s.size])
            for p, n in enumerate(per_policy.tolist()):
                rows.add_metric([model, version, variant, names[p]], n)
        yield from (bins, missing, rows)
