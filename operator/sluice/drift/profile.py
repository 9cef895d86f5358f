"""Reference profiles: what the training data looked like, per feature, as a small versioned JSON document.

A profile holds, per numeric feature, quantile bin edges (open at both ends: k = len(edges) + 1 bins) with the
reference counts and a bounded sorted sample for exact KS; per categorical feature, the top-K categories with
their counts and "other" last. The router bins live traffic on the same edges, so the drift core compares counts
with counts. Bin i of a numeric feature holds values v with edges[i-1] <= v < edges[i] (numpy
`searchsorted(edges, v, side="right")`); NaN is counted apart as missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
PREDICTION = "prediction"  # the feature key of the model's primary output
OTHER = "other"  # the last bin of a categorical feature

DEFAULT_BINS = 10
DEFAULT_TOP_K = 20
DEFAULT_SAMPLE_SIZE = 10_000


class ProfileError(ValueError):
    """A profile or its data cannot be used; the message names the field or column."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class NumericFeature(_Model):
    """A numeric feature: quantile edges, counts per bin (len(edges) + 1, open ends) and a sorted sample."""

    name: str = Field(min_length=1, description="Feature key: `input[column]`, `input` or `prediction`.")
    type: Literal["numeric"] = "numeric"
    edges: list[float] = Field(description="Strictly increasing finite bin edges; bins are open at both ends.")
    counts: list[int] = Field(description="Reference rows per bin, len(edges) + 1 of them.")
    missing: int = Field(default=0, ge=0, description="Reference rows whose value was NaN.")
    mean: float | None = Field(default=None, description="Mean of the values (not NaN).")
    std: float | None = Field(default=None, ge=0, description="Standard deviation; scales the Wasserstein score.")
    sample: list[float] = Field(default_factory=list, description="Sorted uniform sample of the values, for exact KS.")

    @model_validator(mode="after")
    def _check(self) -> NumericFeature:
        edges = np.asarray(self.edges, dtype=np.float64)
        if not np.all(np.isfinite(edges)):
            raise ValueError("edges must be finite numbers")
        if edges.size > 1 and not np.all(np.diff(edges) > 0):
            raise ValueError("edges must be strictly increasing")
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(
                f"counts has {len(self.counts)} entries; edges need len(edges) + 1 = {len(self.edges) + 1}"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("counts must not be negative")
        sample = np.asarray(self.sample, dtype=np.float64)
        if sample.size and not (np.all(np.isfinite(sample)) and np.all(np.diff(sample) >= 0)):
            raise ValueError("sample must be finite numbers in ascending order")
        return self

    @property
    def bins(self) -> int:
        return len(self.counts)


class CategoricalFeature(_Model):
    """A categorical feature: the top-K categories and their counts, then "other" (the rest) last."""

    name: str = Field(min_length=1, description="Feature key.")
    type: Literal["categorical"] = "categorical"
    categories: list[str] = Field(description="The most frequent categories, most frequent first.")
    counts: list[int] = Field(description="Reference rows per category, then the rows of all other categories.")
    missing: int = Field(default=0, ge=0, description="Reference rows with no value.")

    @model_validator(mode="after")
    def _check(self) -> CategoricalFeature:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must be unique")
        if len(self.counts) != len(self.categories) + 1:
            raise ValueError(
                f"counts has {len(self.counts)} entries; categories need len(categories) + 1 = "
                f"{len(self.categories) + 1} (the last is {OTHER!r})"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("counts must not be negative")
        return self

    @property
    def bins(self) -> int:
        return len(self.counts)


FeatureProfile = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="type")]


class Profile(_Model):
    """A reference profile, schema version 1."""

    schema_version: Literal[1] = Field(default=1, alias="schemaVersion", description="Profile schema version.")
    kind: Literal["SluiceProfile"] = Field(default="SluiceProfile", description="Marks the document as a profile.")
    rows: int = Field(ge=0, description="Rows the profile was built from.")
    source: str = Field(default="", description="Where the data came from (file name), for people.")
    features: list[FeatureProfile] = Field(min_length=1, description="One entry per feature, keys unique.")

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        for feature in self.features:
            if feature.name in seen:
                raise ValueError(f"feature {feature.name!r} appears twice")
            seen.add(feature.name)
        return self

    def feature(self, name: str) -> NumericFeature | CategoricalFeature:
        for feature in self.features:
            if feature.name == name:
                return feature
        known = ", ".join(f.name for f in self.features)
        raise ProfileError(f"feature {name!r} is not in the profile (it has: {known})")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1) + "\n"


def feature_key(input_name: str, column: int | None) -> str:
    """The `feature` label of the router's counters: `name[column]` for a column of a 2-D input, else `name`."""
    return input_name if column is None else f"{input_name}[{column}]"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(document)"
        lines.append(f"{source}: {where}: {error['msg']}")
    return "\n".join(lines)


def parse_profile(text: str | bytes, source: str = "profile") -> Profile:
    """Parse and validate a profile document; ProfileError names each wrong field."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{source}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a JSON object, got {type(data).__name__}")
    version = data.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise ProfileError(f"{source}: schemaVersion: expected {SCHEMA_VERSION}, got {version!r}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(exc, source)) from None


def load_profile(path: str | Path) -> Profile:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_profile(raw, str(path))


# ---- building a profile from data ----

Column = npt.NDArray[Any]


def quantile_edges(values: npt.NDArray[np.float64], bins: int) -> npt.NDArray[np.float64]:
    """Interior quantile edges for `bins` equal-mass bins; repeated quantiles (heavy ties) collapse into one."""
    if bins < 2:
        raise ProfileError(f"bins: need at least 2, got {bins}")
    if values.size == 0:
        return np.empty(0, dtype=np.float64)
    qs = np.quantile(values, np.arange(1, bins) / bins)
    edges: npt.NDArray[np.float64] = np.unique(qs)
    return edges


COMPARE_MAX_EDGES = 32  # up to this many edges, one vectorised comparison per edge beats a binary search per value


def bin_numeric(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Counts per bin (len(edges) + 1, open ends) of the non-NaN values: bin i holds edges[i-1] <= v < edges[i].

    For the usual few edges it counts `values < edge` per edge (SIMD comparisons over a contiguous column, ~7x
    faster than searchsorted here); for many edges it bins with searchsorted. Both give the same counts.
    """
    values = np.asarray(values, dtype=np.float64)
    valid = values.size - int(np.count_nonzero(np.isnan(values)))
    if edges.size <= COMPARE_MAX_EDGES:
        below = [int(np.count_nonzero(values < edge)) for edge in edges.tolist()]
        return np.diff(np.asarray([0, *below, valid], dtype=np.int64))
    finite = values[~np.isnan(values)] if valid < values.size else values
    index = np.searchsorted(edges, finite, side="right")
    return np.bincount(index, minlength=edges.size + 1).astype(np.int64)


def bin_categorical(values: Sequence[str] | Column, categories: Sequence[str]) -> npt.NDArray[np.int64]:
    """Counts per category in `categories` order, then everything else."""
    lookup = {c: i for i, c in enumerate(categories)}
    uniques, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    out = np.zeros(len(categories) + 1, dtype=np.int64)
    for value, count in zip(uniques.tolist(), counts.tolist(), strict=True):
        out[lookup.get(value, len(categories))] += count
    return out


def count_values(feature: NumericFeature | CategoricalFeature, values: Column) -> npt.NDArray[np.int64]:
    """Counts of `values` in the feature's bins, as the router counts them (NaN and None left out)."""
    if isinstance(feature, NumericFeature):
        if not is_numeric(values):
            raise ProfileError(
                f"feature {feature.name!r}: numeric in the profile, but the data is {np.asarray(values).dtype}"
            )
        return bin_numeric(np.asarray(values, dtype=np.float64), np.asarray(feature.edges, dtype=np.float64))
    present = [v for v in np.asarray(values, dtype=object).tolist() if not _is_missing(v)]
    return bin_categorical([str(v) for v in present], feature.categories)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def numeric_profile(
    name: str, values: Column, bins: int = DEFAULT_BINS, sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0
) -> NumericFeature:
    data = np.asarray(values, dtype=np.float64)
    if np.isinf(data).any():
        raise ProfileError(f"column {name!r}: infinite values cannot be profiled")
    nan = np.isnan(data)
    finite = data[~nan]
    edges = quantile_edges(finite, bins)
    counts = bin_numeric(finite, edges)
    rng = np.random.default_rng(seed)
    sample = finite if finite.size <= sample_size else rng.choice(finite, size=sample_size, replace=False)
    return NumericFeature(
        name=name,
        edges=edges.tolist(),
        counts=counts.tolist(),
        missing=int(nan.sum()),
        mean=float(finite.mean()) if finite.size else None,
        std=float(finite.std()) if finite.size else None,
        sample=np.sort(sample).tolist(),
    )


def categorical_profile(name: str, values: Column, top_k: int = DEFAULT_TOP_K) -> CategoricalFeature:
    if top_k < 1:
        raise ProfileError(f"top_k: need at least 1, got {top_k}")
    present = [v for v in np.asarray(values, dtype=object).tolist() if not _is_missing(v)]
    missing = len(values) - len(present)
    uniques, counts = np.unique(np.asarray([str(v) for v in present], dtype=str), return_counts=True)
    order = sorted(range(len(uniques)), key=lambda i: (-int(counts[i]), str(uniques[i])))
    top = [str(uniques[i]) for i in order[:top_k]]
    rest = int(sum(int(counts[i]) for i in order[top_k:]))
    return CategoricalFeature(
        name=name,
        categories=top,
        counts=[int(counts[i]) for i in order[:top_k]] + [rest],
        missing=missing,
    )


def is_numeric(values: Column) -> bool:
    return np.asarray(values).dtype.kind in "iuf"


def build_profile(
    columns: Mapping[str, Column],
    *,
    categorical: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    top_k: int = DEFAULT_TOP_K,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    source: str = "",
) -> Profile:
    """A profile of named 1-D columns; non-numeric columns and those named in `categorical` are categorical."""
    if not columns:
        raise ProfileError("data has no columns to profile")
    unknown = [c for c in categorical if c not in columns]
    if unknown:
        raise ProfileError(f"categorical: no column named {unknown[0]!r} (columns: {', '.join(columns)})")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1:
        raise ProfileError(f"columns differ in length: {sorted(lengths)}")
    if bins < 2:
        raise ProfileError(f"bins: need at least 2, got {bins}")
    if sample_size < 0:
        raise ProfileError(f"sample_size: must not be negative, got {sample_size}")
    features: list[NumericFeature | CategoricalFeature] = []
    for name, values in columns.items():
        if name in categorical or not is_numeric(values):
            features.append(categorical_profile(name, values, top_k))
        else:
            features.append(numeric_profile(name, values, bins, sample_size, seed))
    return Profile(rows=lengths.pop(), source=source, features=features)
