"""Reference capture for DriftPolicies with `reference.fromStableVersion`: a bounded uniform sample of live rows.

A policy cannot be counted on bins before it has a reference, and its reference is to be what the stable version
saw. So while it captures, its `DriftProfileConfig` carries `capture` (the version, the sample size and a token)
instead of bins, and the router keeps, per such policy, one reservoir of at most `size` rows (Algorithm R: after
n rows each row is in it with probability size/n) of the rows that version served: the watched features' values
(numbers as float64, categories as strings cut to `MAX_CATEGORY_CHARS`) and the prediction. Nothing else of a
request is kept, and the whole is bounded by `MAX_CAPTURE_VALUES` values per router (numbers: 1.6 MB).

Per batch the work is vectorised: one draw of the batch's slots (`Generator.integers` with per-row bounds), and
only the rows that land in the reservoir are read out, so a full reservoir costs a random draw per batch. The
control plane reads the sample on `GET /v2/drift/{policy}/sample` with the capture's token; each feature's
values come back sorted on their own, so rows cannot be put back together from the answer.

Each router replica samples the rows it served: behind a Service, one replica's reservoir is a uniform sample of a
random share of the traffic, which is what a reference needs.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sluice.serving.config import MAX_CATEGORY_CHARS, PREDICTION, CaptureConfig, CaptureFeature, DriftProfileConfig
from sluice.serving.scores import Scored
from sluice.serving.tensors import Tensor

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _column(tensor: Tensor | None, feature: CaptureFeature, rows: int) -> npt.NDArray[Any] | None:
    """The feature's column (all rows), or None when the request cannot give it (the rows count as missing)."""
    if tensor is None:
        return None
    data = tensor.data
    if data.ndim == 0 or data.shape[0] != rows:
        return None
    m = data.reshape(rows, -1)
    if feature.column is None:
        return m[:, 0] if m.shape[1] == 1 else None
    return m[:, feature.column] if feature.column < m.shape[1] else None


def _block(tensor: Tensor | None, rows: int, take: IntArray, cols: IntArray) -> FloatArray:
    """The taken rows of one input's numeric features (columns `cols`, -1: the input's only column), as float64;
    NaN where a feature cannot be read (no such input or column, another row count, not numbers)."""
    out = np.full((len(take), len(cols)), np.nan)
    if tensor is None or tensor.data.ndim == 0 or tensor.data.shape[0] != rows:
        return out
    m = tensor.data.reshape(rows, -1)
    width = m.shape[1]
    readable = np.where(cols < 0, width == 1, cols < width)
    if not readable.any():
        return out
    picked = _floats(m[take][:, np.where(readable & (cols >= 0), cols, 0)], len(take))
    if picked.ndim == 2:
        out[:, readable] = picked[:, readable]
    return out


def _floats(values: npt.NDArray[Any] | None, n: int) -> FloatArray:
    if values is not None:
        if values.dtype.kind in "biuf":
            return values.astype(np.float64)
        try:
            return np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return np.full(n, np.nan)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, float | np.floating) and np.isnan(value):
        return None
    return str(value)[:MAX_CATEGORY_CHARS]


def _texts(values: npt.NDArray[Any] | None, n: int) -> list[str | None]:
    if values is None:
        return [None] * n
    return [_text(v) for v in values.tolist()]


@dataclass(slots=True)
class Reservoir:
    """One policy's sample: `size` row slots of its numeric and categorical features, filled by Algorithm R."""

    config: CaptureConfig
    rng: np.random.Generator
    numeric: list[str] = field(init=False)
    categorical: list[str] = field(init=False)
    values: FloatArray = field(init=False)  # size x numeric features, NaN: missing
    texts: npt.NDArray[np.object_] = field(init=False)  # size x categorical features, None: missing
    groups: dict[str, tuple[IntArray, IntArray]] = field(init=False)  # input -> (value columns, input columns)
    seen: int = 0  # rows offered so far
    _weight: float = 0.0  # Algorithm L's W once the reservoir is full
    _next: int = 0  # stream index of the next row to keep once full
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        cfg = self.config
        kinds = [(f.key, f.type) for f in cfg.features]
        if cfg.prediction is not None:
            kinds.append((PREDICTION, cfg.prediction))
        self.numeric = [k for k, t in kinds if t == "numeric"]
        self.categorical = [k for k, t in kinds if t == "categorical"]
        self.values = np.full((cfg.size, len(self.numeric)), np.nan)
        self.texts = np.full((cfg.size, len(self.categorical)), None, dtype=object)
        # Numeric features grouped by input: one read of the input's taken rows per request, whatever the columns.
        groups: dict[str, list[tuple[int, int]]] = {}
        for f in cfg.features:
            if f.type == "numeric":
                groups.setdefault(f.input, []).append((self.numeric.index(f.key), -1 if f.column is None else f.column))
        self.groups = {
            name: (np.array([d for d, _ in pairs], dtype=np.int64), np.array([c for _, c in pairs], dtype=np.int64))
            for name, pairs in groups.items()
        }

    @property
    def kept(self) -> int:
        return min(self.seen, self.config.size)

    def slots(self, rows: int) -> tuple[IntArray, IntArray]:
        """(batch rows, reservoir slots) the next `rows` rows take; a later row wins a slot two rows drew.

        Filling: every row, in order. Full: Algorithm L (Li, 1994) draws how many rows to skip until the next one
        kept, so a batch in which no row is kept costs one comparison; the sample is uniform as with Algorithm R.
        """
        size, seen = self.config.size, self.seen
        end = seen + rows
        if end <= size:
            index = np.arange(rows, dtype=np.int64)
            return index, seen + index
        take: list[int] = []
        slot: list[int] = []
        if seen < size:
            take += range(size - seen)
            slot += range(seen, size)
        if self._weight == 0.0:  # just full: the first skip
            self._weight = math.exp(math.log(self._uniform()) / size)
            self._next = size - 1 + self._skip()
        while self._next < end:
            take.append(self._next - seen)
            slot.append(int(self.rng.integers(size)))
            self._weight *= math.exp(math.log(self._uniform()) / size)
            self._next += self._skip()
        takes, slots = np.asarray(take, dtype=np.int64), np.asarray(slot, dtype=np.int64)
        if len(slots) > 1:  # keep the last row per slot, as one row at a time would
            _, first_of_reversed = np.unique(slots[::-1], return_index=True)
            last = len(slots) - 1 - first_of_reversed
            takes, slots = takes[last], slots[last]
        return takes, slots

    def _uniform(self) -> float:
        return float(self.rng.random()) or 1e-300  # (0, 1): log() of it is finite

    def _skip(self) -> int:
        """Rows from the last kept one to the next (at least 1)."""
        if self._weight >= 1.0:
            return 1
        return math.floor(math.log(self._uniform()) / math.log1p(-self._weight)) + 1

    def offer(self, inputs: Sequence[Tensor], scored: Scored | None, rows: int) -> None:
        """Sample from one request's rows; only the rows that land in the reservoir are read out."""
        take, slot = self.slots(rows)
        self.seen += rows
        if not len(take):
            return
        by_name = {t.name: t for t in inputs}
        n = len(take)
        for name, (dst, cols) in self.groups.items():
            self.values[slot[:, None], dst] = _block(by_name.get(name), rows, take, cols)
        cat = 0
        for feature in self.config.features:
            if feature.type == "categorical":
                column = _column(by_name.get(feature.input), feature, rows)
                picked = column[take] if column is not None else None
                self.texts[slot, cat] = np.array(_texts(picked, n), dtype=object)
                cat += 1
        kind = self.config.prediction
        if kind == "numeric":
            ok = scored is not None and len(scored.scores) == rows
            self.values[slot, len(self.numeric) - 1] = scored.scores[take] if ok and scored is not None else np.nan
        elif kind == "categorical":
            labels = None
            if scored is not None:
                labels = scored.labels if scored.labels is not None else scored.scores
            picked = labels[take] if labels is not None and len(labels) == rows else None
            self.texts[slot, cat] = np.array(_texts(picked, n), dtype=object)

    def summary(self, with_values: bool) -> dict[str, Any]:
        """The sample as JSON: rows seen and kept, age, and per feature its values sorted on their own."""
        kept = self.kept
        features: list[dict[str, Any]] = []
        order = [(f.key, f.type) for f in self.config.features]
        if self.config.prediction is not None:
            order.append((PREDICTION, self.config.prediction))
        for key, kind in order:
            if kind == "numeric":
                column = self.values[:kept, self.numeric.index(key)]
                finite = np.sort(column[np.isfinite(column)])
                entry: dict[str, Any] = {"name": key, "type": kind, "missing": int(kept - len(finite))}
                if with_values:
                    entry["values"] = finite.tolist()
            else:
                texts = [v for v in self.texts[:kept, self.categorical.index(key)].tolist() if v is not None]
                entry = {"name": key, "type": kind, "missing": kept - len(texts)}
                if with_values:
                    entry["values"] = sorted(texts)
            features.append(entry)
        return {
            "version": self.config.version,
            "size": self.config.size,
            "rows": self.seen,
            "kept": kept,
            "age_s": round(time.monotonic() - self.started, 3),
            "features": features,
        }


class Captures:
    """The reservoirs of every capturing DriftPolicy on this router."""

    def __init__(self, profiles: Sequence[DriftProfileConfig], seed: int | None = None) -> None:
        self._seed = np.random.SeedSequence(seed)
        self.reservoirs: dict[str, Reservoir] = {}
        self.configure(profiles)

    @property
    def active(self) -> bool:
        return bool(self.reservoirs)

    def configure(self, profiles: Sequence[DriftProfileConfig]) -> None:
        """The captures in `profiles`; a policy whose capture config is unchanged keeps its sample."""
        new: dict[str, Reservoir] = {}
        for p in profiles:
            if p.capture is None:
                continue
            old = self.reservoirs.get(p.policy)
            if old is not None and old.config == p.capture:
                new[p.policy] = old
            else:
                new[p.policy] = Reservoir(p.capture, np.random.default_rng(self._seed.spawn(1)[0]))
        self.reservoirs = new

    def observe(self, version: str, inputs: Sequence[Tensor], scored: Scored | None) -> None:
        """Offer one request's rows to the captures of the version that served it."""
        if not inputs:
            return
        first = inputs[0].data
        rows = int(first.shape[0]) if first.ndim else 1
        if rows == 0:
            return
        for reservoir in self.reservoirs.values():
            if reservoir.config.version == version:
                reservoir.offer(inputs, scored, rows)

    def allows(self, policy: str, headers: Mapping[str, str]) -> bool:
        """True when `headers` carry `Authorization: Bearer <the capture's token>` (constant-time compare)."""
        reservoir = self.reservoirs.get(policy)
        if reservoir is None:
            return False
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode("latin-1", "replace"), f"Bearer {reservoir.config.token}".encode())

    def sample(self, policy: str, with_values: bool = True) -> dict[str, Any] | None:
        reservoir = self.reservoirs.get(policy)
        if reservoir is None:
            return None
        return {"policy": policy, **reservoir.summary(with_values)}
