"""What the data plane is told to do: the versions it serves and how traffic is split between them.

This is the contract between the control plane (operator, `sluice run`) and the data plane. It travels as
JSON: in a RayService's `user_config`, in the Triton router's ConfigMap, or in-process for `sluice serve`.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STABLE = "stable"
# The largest `max_request_bytes` any config may set (the ModelDeployment API's own bound).
MAX_REQUEST_BYTES_CAP = 1024 * 1024 * 1024
CANARY = "canary"
PREDICTION = "prediction"  # feature key of the model's primary output in drift profiles

# Bounds that keep the router's memory and /metrics bounded whatever a config says.
MAX_EDGES = 100  # numeric bin edges per feature (k = edges + 1 bins)
MAX_CATEGORIES = 100  # top-K categories per feature (k = K + 1 bins, "other" last)
MAX_PROFILES = 16
MAX_BINS_TOTAL = 20_000  # bins over all profiles and features, per variant
MAX_CAPTURE_SIZE = 10_000  # rows a capture keeps (a uniform reservoir sample), per policy
MAX_CAPTURE_VALUES = 200_000  # values kept over all captures (rows x features): 1.6 MB as float64
MAX_CATEGORY_CHARS = 256  # a captured categorical value is cut to this many characters
_METRIC_NAME = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Model):
    """Dynamic batching of one model version."""

    enabled: bool = True
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_in_flight: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Calls one router keeps open to a remote version; requests arriving meanwhile go in the next one.",
    )


class VariantConfig(_Model):
    """One served model version."""

    name: str = Field(description="Variant name: 'stable', 'canary', or an experiment arm.")
    version: str = Field(description="Model version label returned with every response.")
    uri: str = Field(description="Model file URI (file://, http(s)://, s3://, gs://).")
    sha256: str | None = None
    weight: int = Field(default=0, ge=0, le=100, description="Percent of primary traffic.")
    endpoint: str | None = Field(
        default=None, description="Backend address when the version runs elsewhere (e.g. a tritonserver)."
    )


class MirrorConfig(_Model):
    """Shadow traffic: a share of requests is copied to a variant whose answer is compared, never returned."""

    variant: str
    percent: int = Field(default=0, ge=0, le=100)


class OutcomesConfig(_Model):
    """Outcomes clients report for served requests (`POST /v2/models/{name}/outcomes`), joined to the arm.

    Only the metrics named here are accepted, so clients cannot grow /metrics; the kind decides what a value may be.
    """

    metrics: dict[str, Literal["conversion", "mean"]] = Field(
        min_length=1, max_length=32, description="Accepted metric names and kinds: conversion (0/1) or mean (any)."
    )
    max_entries: int = Field(
        default=100_000, ge=1, le=10_000_000, description="Request and unit ids remembered; the oldest go first."
    )
    ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400, description="How long an id can be joined.")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_batch: int = Field(default=1000, ge=1, le=100_000, description="Outcomes per POST.")

    @model_validator(mode="after")
    def _check(self) -> OutcomesConfig:
        for name in self.metrics:
            if not re.fullmatch(_METRIC_NAME, name) or len(name) > 63:
                raise ValueError(f"outcomes.metrics: invalid metric name {name!r} (lower-case, digits, - and _)")
        return self


class Bins(_Model):
    """Numeric edges (bin i holds edges[i-1] <= x < edges[i], open at both ends) or categorical top-K values."""

    edges: tuple[float, ...] | None = Field(default=None, max_length=MAX_EDGES)
    categories: tuple[str, ...] | None = Field(default=None, max_length=MAX_CATEGORIES)

    @model_validator(mode="after")
    def _check_bins(self) -> Bins:
        if (self.edges is None) == (self.categories is None):
            raise ValueError("give exactly one of edges (numeric) or categories (categorical)")
        if self.edges is not None:
            if not self.edges:
                raise ValueError("edges: need at least one edge")
            if not all(math.isfinite(e) for e in self.edges):
                raise ValueError("edges: must be finite numbers (the open ends are implied)")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
                raise ValueError(f"edges: must be strictly increasing, got {list(self.edges)}")
        if self.categories is not None:
            if not self.categories:
                raise ValueError("categories: need at least one category")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("categories: must be unique")
        return self

    @property
    def size(self) -> int:
        """Number of bins k: len(edges) + 1, or len(categories) + 1 ("other")."""
        return len(self.edges) + 1 if self.edges is not None else len(self.categories or ()) + 1


class FeatureBins(Bins):
    """One watched input feature: an input tensor, and a column of it when the tensor is 2-D."""

    input: str = Field(min_length=1, max_length=253)
    column: int | None = Field(default=None, ge=0, le=1_000_000)

    @property
    def key(self) -> str:
        """The `feature` label: `input[column]` for a column of a 2-D input, `input` for a 1-D one."""
        return self.input if self.column is None else f"{self.input}[{self.column}]"


class CaptureFeature(_Model):
    """A feature whose values a capture samples: an input (and a column of it when 2-D), numeric or categorical."""

    input: str = Field(min_length=1, max_length=253)
    column: int | None = Field(default=None, ge=0, le=1_000_000)
    type: Literal["numeric", "categorical"] = "numeric"

    @property
    def key(self) -> str:
        return self.input if self.column is None else f"{self.input}[{self.column}]"


class CaptureConfig(_Model):
    """A DriftPolicy capturing its reference from live traffic (`reference.fromStableVersion`): the router keeps a
    uniform reservoir sample of `size` rows served by `version`, per feature, and serves it on
    `GET /v2/drift/{policy}/sample` to callers holding `token` (or the admin token)."""

    version: str = Field(min_length=1, max_length=253, description="Only rows this version served are sampled.")
    size: int = Field(default=MAX_CAPTURE_SIZE, ge=1, le=MAX_CAPTURE_SIZE, description="Rows kept (reservoir).")
    token: str = Field(
        min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_.~-]+$", description="Bearer token of the sample."
    )
    features: tuple[CaptureFeature, ...] = Field(default=(), max_length=256)
    prediction: Literal["numeric", "categorical"] | None = Field(
        default=None, description="Sample the model's primary score (numeric) or label (categorical)."
    )

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.features] + ([PREDICTION] if self.prediction is not None else [])

    @property
    def values(self) -> int:
        """Values the reservoir holds when full: rows x features."""
        return self.size * len(self.keys)


class DriftProfileConfig(_Model):
    """A DriftPolicy's reference bins, which the router counts every request's rows on; or, while the policy
    captures its reference, `capture` alone (no bins yet: the router samples values instead)."""

    policy: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.-]+$")
    features: tuple[FeatureBins, ...] = Field(default=(), max_length=256)
    prediction: Bins | None = Field(default=None, description="Bins of the model's primary score or label.")
    capture: CaptureConfig | None = Field(default=None, description="Sample values instead of counting bins.")

    @model_validator(mode="after")
    def _check_profile(self) -> DriftProfileConfig:
        if self.capture is not None:
            keys = self.capture.keys
            if self.features or self.prediction is not None:
                raise ValueError(f"drift profile {self.policy!r}: capture takes no bins (features, prediction)")
            if self.capture.values > MAX_CAPTURE_VALUES:
                raise ValueError(
                    f"drift profile {self.policy!r}: capture.size x features = {self.capture.values} values exceed "
                    f"the limit of {MAX_CAPTURE_VALUES}"
                )
        else:
            keys = [f.key for f in self.features] + ([PREDICTION] if self.prediction is not None else [])
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"drift profile {self.policy!r}: feature keys must be unique, repeated: {dupes}")
        if not keys:
            raise ValueError(f"drift profile {self.policy!r}: needs at least one feature or the prediction")
        return self

    @property
    def bins_total(self) -> int:
        return sum(f.size for f in self.features) + (self.prediction.size if self.prediction else 0)

    @property
    def capture_values(self) -> int:
        return self.capture.values if self.capture is not None else 0


class ServingConfig(_Model):
    """Everything the router and backends need; weights and mirror can change live."""

    model_name: str
    variants: tuple[VariantConfig, ...] = Field(min_length=1)
    mirror: MirrorConfig | None = None
    sticky_header: str | None = Field(default=None, description="Request header with the unit id (sticky).")
    sticky_salt: str = Field(
        default="", max_length=256, description="Mixed into the unit id's hash: experiments assign independently."
    )
    enrolment: Literal["all", "unit"] = Field(
        default="all",
        description="unit: only requests with the sticky header are enrolled; the rest go to control_variant.",
    )
    control_variant: str | None = Field(default=None, description="Where unenrolled requests go (default: first).")
    override_header: str = Field(
        default="x-sluice-variant", description="Request header forcing a variant (never enrolled)."
    )
    outcomes: OutcomesConfig | None = None
    override_enabled: bool = Field(
        default=False,
        description="Honour `override_header` from any client. Off by default: a client that can pick the canary "
        "skews its analysis; callers holding the admin token may always use it.",
    )
    drift: tuple[DriftProfileConfig, ...] = Field(default=(), max_length=MAX_PROFILES)
    fallback_to_stable: bool = False
    request_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=MAX_REQUEST_BYTES_CAP)
    max_request_rows: int = Field(
        default=65_536, ge=1, le=16_777_216, description="Largest first dimension of any input tensor (else 413)."
    )
    max_request_elements: int = Field(
        default=4_194_304, ge=1, le=268_435_456, description="Most elements in all input tensors together (else 413)."
    )
    batching: BatchingConfig = BatchingConfig()
    gpus_per_replica: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"variant weights must sum to 100, got {total}")
        if self.mirror is not None and self.mirror.variant not in names:
            raise ValueError(f"mirror.variant {self.mirror.variant!r} is not one of {names}")
        if self.control_variant is not None and self.control_variant not in names:
            raise ValueError(f"control_variant {self.control_variant!r} is not one of {names}")
        if self.enrolment == "unit" and not self.sticky_header:
            raise ValueError("enrolment 'unit' needs sticky_header (the header carrying the unit id)")
        policies = [p.policy for p in self.drift]
        if len(set(policies)) != len(policies):
            raise ValueError(f"drift: policy names must be unique, got {policies}")
        bins = sum(p.bins_total for p in self.drift)
        if bins > MAX_BINS_TOTAL:
            raise ValueError(f"drift: {bins} bins in all exceed the limit of {MAX_BINS_TOTAL}")
        values = sum(p.capture_values for p in self.drift)
        if values > MAX_CAPTURE_VALUES:
            raise ValueError(f"drift: captures of {values} values in all exceed the limit of {MAX_CAPTURE_VALUES}")
        return self

    @property
    def control(self) -> str:
        """The control arm: `control_variant`, else the first variant."""
        return self.control_variant or self.variants[0].name

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)
