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
BoolArray = npt.NDArray[np.bool_]

# Up to this many comparisons (rows x features x edges) one broadcast compare beats a searchsorted per feature.
_BROADCAST_MAX = 16384


@dataclass(frozen=True, slots=True)
class _Slot:
    """A feature's place in the count vector: its missing slot at `offset`, bin i at `offset + 1 + i`.

    Missing first, so a count of "edges <= x, plus one for x >= -inf" (0 for NaN, which compares false to all)
    is directly the slot offset: no separate NaN pass on the hot path."""

    policy: int
    key: str
    size: int  # k bins
    offset: int


@dataclass(slots=True)
class _View:
    """How a numeric group reads an input of a given width (cached per width)."""

    take: IntArray | None  # columns to read, None: the input's columns as they are
    readable: BoolArray | None  # None: every feature readable
    lost: IntArray  # missing slots of unreadable features


@dataclass(slots=True)
class _Numeric:
    """Numeric features of one input, binned together."""

    columns: IntArray  # -1: the input's only column (a 1-D input, or 2-D of width 1)
    edges: list[FloatArray]
    padded: FloatArray  # (1 + max edges) x features: -inf, the edges, NaN padding (NaN never compares true)
    offsets: IntArray  # missing slot of each feature
    views: dict[int, _View] = field(default_factory=dict)

    def view(self, width: int) -> _View:
        hit = self.views.get(width)
        if hit is None:
            cols = np.where(self.columns < 0, 0, self.columns)
            readable = (cols < width) & ((self.columns >= 0) | (width == 1))
            if readable.all():
                identity = len(cols) == width and bool((cols == np.arange(width)).all())
                hit = _View(None if identity else cols, None, self.offsets[:0])
            else:
                hit = _View(np.where(readable, cols, 0), readable, self.offsets[~readable])
            self.views[width] = hit
        return hit


@dataclass(slots=True)
class _Categorical:
    column: int
    offset: int  # missing slot; category i at offset + 1 + i, "other" at offset + 1 + K
    other: int  # K
    lookup: dict[Any, int]  # category as str and as UTF-8 bytes -> index
    numbers: FloatArray  # categories that parse as numbers, sorted
    number_bins: IntArray  # their indices


@dataclass(slots=True)
class _Prediction:
    offset: int
    edges: FloatArray | None  # -inf, then the profile's edges
    categorical: _Categorical | None


@dataclass(slots=True)
class _Plan:
    profiles: tuple[DriftProfileConfig, ...]
    slots: list[_Slot]
    total: int
    numeric: dict[str, _Numeric] = field(default_factory=dict)
    categorical: dict[str, list[_Categorical]] = field(default_factory=dict)
    prediction: list[_Prediction] = field(default_factory=list)


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
            plan.slots.append(_Slot(p, f.key, f.size, offset))
            column = -1 if f.column is None else f.column
            if f.edges is not None:
                numeric.setdefault(f.input, []).append((column, np.array(f.edges, dtype=np.float64), offset))
            else:
                plan.categorical.setdefault(f.input, []).append(_categorical(f, column, offset))
            offset += f.size + 1
        if profile.prediction is not None:
            pb = profile.prediction
            plan.slots.append(_Slot(p, PREDICTION, pb.size, offset))
            edges = np.array([-np.inf, *pb.edges], dtype=np.float64) if pb.edges is not None else None
            plan.prediction.append(
                _Prediction(offset, edges, None if edges is not None else _categorical(pb, 0, offset))
            )
            offset += pb.size + 1
    plan.total = offset
    for name, feats in numeric.items():
        width = max(len(e) for _, e, _ in feats)
        padded = np.full((width + 1, len(feats)), np.nan)
        padded[0, :] = -np.inf
        for j, (_, e, _) in enumerate(feats):
            padded[1 : len(e) + 1, j] = e
        plan.numeric[name] = _Numeric(
            columns=np.array([c for c, _, _ in feats], dtype=np.int64),
            edges=[e for _, e, _ in feats],
            padded=padded,
            offsets=np.array([o for _, _, o in feats], dtype=np.int64),
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


def _numbers(m: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """Numbers compare with the float edges as they are (numpy promotes exactly); BYTES that hold numbers are
    parsed; anything else cannot be binned on edges."""
    if m.dtype.kind in "biuf":
        return m
    try:
        return np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _numeric_slots(group: _Numeric, x: npt.NDArray[Any]) -> IntArray:
    """Slot per row and feature: offset + (1 + number of edges <= x), or the missing slot for NaN."""
    rows, feats = x.shape
    if rows * feats * group.padded.shape[0] <= _BROADCAST_MAX:
        # rows x edges x features: the sum runs over the middle axis, i.e. adds whole rows of features at a time.
        counted: IntArray = np.add.reduce(x[:, None, :] >= group.padded, axis=1, dtype=np.int64)
        return group.offsets + counted
    out = np.empty((rows, feats), dtype=np.int64)
    for j, edges in enumerate(group.edges):
        col = x[:, j]
        out[:, j] = np.searchsorted(edges, col, side="right") + 1
        if col.dtype.kind == "f":
            out[np.isnan(col), j] = 0
    return group.offsets + out


def _category_index(cat: _Categorical, values: npt.NDArray[Any], rows: int) -> IntArray:
    """Slot per row of one categorical column."""
    if values.dtype.kind in "biuf":
        idx = np.full(rows, cat.other, dtype=np.int64)
        if len(cat.numbers):
            pos = np.minimum(np.searchsorted(cat.numbers, values), len(cat.numbers) - 1)
            idx = np.where(cat.numbers[pos] == values, cat.number_bins[pos], idx)
        idx += cat.offset + 1
        if values.dtype.kind == "f":
            idx[np.isnan(values)] = cat.offset
        return idx
    lookup, other = cat.lookup, cat.other
    return cat.offset + 1 + np.fromiter((lookup.get(v, other) for v in values), dtype=np.int64, count=rows)


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
        lost: list[IntArray] = []
        for name, group in plan.numeric.items():
            m = _matrix(by_name.get(name), rows)
            x = _numbers(m) if m is not None else None
            if x is None or x.shape[1] == 0:
                lost.append(group.offsets)
                continue
            view = group.view(x.shape[1])
            if view.take is not None:
                x = x[:, view.take]
            idx = _numeric_slots(group, x)
            if view.readable is not None:
                lost.append(view.lost)
                idx = idx[:, view.readable]
            parts.append(idx.ravel())
        for name, cats in plan.categorical.items():
            m = _matrix(by_name.get(name), rows)
            for cat in cats:
                col = 0 if cat.column < 0 else cat.column
                if m is None or col >= m.shape[1] or (cat.column < 0 and m.shape[1] != 1):
                    lost.append(np.array([cat.offset], dtype=np.int64))
                else:
                    parts.append(_category_index(cat, m[:, col], rows))
        for pred in plan.prediction:
            binned = self._prediction(pred, scored, rows)
            if binned is None:
                lost.append(np.array([pred.offset], dtype=np.int64))
            else:
                parts.append(binned)
        counts = self.counts.get((version, variant))
        if counts is None:
            counts = self.counts[(version, variant)] = (
                np.zeros(plan.total, dtype=np.int64),
                np.zeros(len(plan.profiles), dtype=np.int64),
            )
        slots, per_policy = counts
        if parts:
            flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if len(flat) <= 1024:
                np.add.at(slots, flat, 1)
            else:
                slots += np.bincount(flat, minlength=plan.total)
        for miss in lost:
            slots[miss] += rows  # slots within one group are distinct: fancy-index add is exact
        per_policy += rows

    @staticmethod
    def _prediction(pred: _Prediction, scored: Scored | None, rows: int) -> IntArray | None:
        if scored is None:
            return None
        if pred.edges is not None:
            values = scored.scores
            if len(values) != rows:
                return None
            counted: IntArray = np.add.reduce(values[:, None] >= pred.edges, axis=1, dtype=np.int64)
            return pred.offset + counted
        labels = scored.labels if scored.labels is not None else scored.scores
        if pred.categorical is None or len(labels) != rows:
            return None
        return _category_index(pred.categorical, labels, rows)

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
                    bins.add_metric([*base, str(i)], values[s.offset + 1 + i])
                missing.add_metric(base, values[s.offset])
            for p, n in enumerate(per_policy.tolist()):
                rows.add_metric([model, version, variant, names[p]], n)
        yield from (bins, missing, rows)
