"""Per-router Prometheus metrics, named exactly as in `metric_names` (the rollout analysis queries these).

Each router owns its CollectorRegistry, so several routers (tests, Ray replicas in one process) never collide
and nothing leaks into the global registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sluice.serving import metric_names as mn

__all__ = ["CONTENT_TYPE_LATEST", "RouterMetrics"]


def _base(name: str) -> str:
    """prometheus-client appends `_total` to counters itself."""
    return name.removesuffix("_total")


class RouterMetrics:
    """The router's metrics for one model; label values are (model, version, variant[, code|outcome|provider])."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = list(mn.LABELS)
        r = self.registry
        self.requests = Counter(
            _base(mn.REQUESTS_TOTAL), "Requests by HTTP status code.", [*labels, "code"], registry=r
        )
        self.latency = Histogram(
            mn.REQUEST_DURATION_SECONDS, "End-to-end router latency.", labels, buckets=mn.LATENCY_BUCKETS, registry=r
        )
        self.score = Histogram(
            mn.PREDICTION_SCORE, "Prediction score per row.", labels, buckets=mn.SCORE_BUCKETS, registry=r
        )
        self.batch = Histogram(
            mn.BATCH_SIZE, "Backend batch size reported per request.", labels, buckets=mn.BATCH_SIZE_BUCKETS, registry=r
        )
        self.shadow = Counter(
            _base(mn.SHADOW_COMPARISONS_TOTAL), "Shadow comparisons by outcome.", [*labels, "outcome"], registry=r
        )
        self.shadow_dropped = Counter(
            _base(mn.SHADOW_DROPPED_TOTAL), "Shadow copies dropped (too many in flight).", labels, registry=r
        )
        self.shadow_diff = Histogram(
            mn.SHADOW_SCORE_DIFF, "|shadow - primary| score per row.", labels, buckets=mn.SCORE_BUCKETS, registry=r
        )
        self.loaded = Gauge(mn.MODEL_LOADED, "1 when loaded and warmed up.", [*labels, "provider"], registry=r)
        self.weight = Gauge(mn.VARIANT_WEIGHT, "Traffic weight percent.", labels, registry=r)
        self.feature_errors = Counter(
            _base(mn.FEATURE_ERRORS_TOTAL), "Requests whose feature counting failed (answered).", labels, registry=r
        )
        self._loaded_keys: dict[tuple[str, str], str] = {}
        # labels() costs a lock and a tuple build per call; the hot path looks its children up here instead.
        self._hot: dict[tuple[str, str, str, int], tuple[Any, Any, Any]] = {}
        self._batch_hot: dict[tuple[str, str, str], Any] = {}

    def _children(self, version: str, variant: str, code: int) -> tuple[Any, Any, Any]:
        key = (self.model, version, variant, code)
        hit = self._hot.get(key)
        if hit is None:
            hit = (
                self.requests.labels(self.model, version, variant, str(code)),
                self.latency.labels(self.model, version, variant),
                self.score.labels(self.model, version, variant),
            )
            self._hot[key] = hit
        return hit

    def request(self, version: str, variant: str, code: int, seconds: float | None) -> None:
        counter, latency, _ = self._children(version, variant, code)
        counter.inc()
        if seconds is not None:
            latency.observe(seconds)

    def scores(self, version: str, variant: str, values: Iterable[float]) -> None:
        h = self._children(version, variant, 200)[2]
        for v in values:
            h.observe(v)

    def feature_error(self, version: str, variant: str) -> None:
        self.feature_errors.labels(self.model, version, variant).inc()

    def batch_size(self, version: str, variant: str, size: int) -> None:
        key = (self.model, version, variant)
        child = self._batch_hot.get(key)
        if child is None:
            child = self._batch_hot[key] = self.batch.labels(*key)
        child.observe(size)

    def shadow_outcome(self, version: str, variant: str, outcome: str, diffs: Iterable[float] = ()) -> None:
        self.shadow.labels(self.model, version, variant, outcome).inc()
        h = self.shadow_diff.labels(self.model, version, variant)
        for d in diffs:
            h.observe(d)

    def shadow_drop(self, version: str, variant: str) -> None:
        self.shadow_dropped.labels(self.model, version, variant).inc()

    def set_loaded(self, version: str, variant: str, provider: str, loaded: bool) -> None:
        old = self._loaded_keys.get((version, variant))
        if old is not None and old != provider:
            self.loaded.remove(self.model, version, variant, old)
        self._loaded_keys[(version, variant)] = provider
        self.loaded.labels(self.model, version, variant, provider).set(1 if loaded else 0)

    def set_weights(self, weights: dict[tuple[str, str], int]) -> None:
        """Replace all weight series: variants no longer configured disappear instead of showing a stale value."""
        self.weight.clear()
        for (version, variant), w in weights.items():
            self.weight.labels(self.model, version, variant).set(w)

    def render(self) -> bytes:
        return generate_latest(self.registry)
