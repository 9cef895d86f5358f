"""Reads the router's own /metrics and differences consecutive scrapes, so analysis needs no Prometheus.

Counters and histogram buckets are cumulative; the interval's value is this scrape minus the previous one. A
series that went down restarted (router restart), so its current value is the interval's value, as Prometheus's
increase() treats resets. The first scrape only takes the baseline and answers NoData.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sluice.providers.base import MISSING_BIN, ArmsReading, FeatureBinCounts, Window, assemble, assemble_arms, parse_le
from sluice.rollout.measurements import Measurement, MetricError, NoData, TrafficSample, Value
from sluice.serving import metric_names as mn

Key = tuple[str, ...]

_REQUESTS = mn.REQUESTS_TOTAL
_LATENCY = f"{mn.REQUEST_DURATION_SECONDS}_bucket"
_SCORES = f"{mn.PREDICTION_SCORE}_bucket"
_SHADOW = mn.SHADOW_COMPARISONS_TOTAL
_OUTCOME_SUMS = {mn.OUTCOMES_TOTAL: "count", mn.OUTCOME_VALUE_SUM: "sum", mn.OUTCOME_VALUE_SQUARES_SUM: "squares"}


def parse_snapshot(text: str, model: str) -> dict[Key, float]:
    """The series analysis needs, for one model, keyed by (metric, labels...). Raises ValueError on bad text."""
    snap: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            variant = s.labels.get("variant", "")
            if s.name == _REQUESTS:
                key: Key = (_REQUESTS, variant, s.labels.get("code", ""))
            elif s.name in (_LATENCY, _SCORES):
                key = (s.name, variant, s.labels.get("le", "+Inf"))
            elif s.name == _SHADOW:
                key = (_SHADOW, s.labels.get("outcome", ""))
            else:
                continue
            snap[key] = snap.get(key, 0.0) + float(s.value)
    return snap


def parse_arms(text: str, model: str, metric: str) -> ArmsReading:
    """Cumulative per-arm counters of one model (outcomes of `metric`, requests, latency). Raises ValueError."""
    outcomes: dict[tuple[str, str], float] = defaultdict(float)
    requests: dict[tuple[str, str], float] = defaultdict(float)
    latency: dict[str, dict[float, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            variant = s.labels.get("variant", "")
            if s.name in _OUTCOME_SUMS and s.labels.get("metric") == metric:
                outcomes[(variant, _OUTCOME_SUMS[s.name])] += float(s.value)
            elif s.name == _REQUESTS:
                requests[(variant, s.labels.get("code", ""))] += float(s.value)
            elif s.name == _LATENCY:
                le = parse_le(s.labels.get("le", "+Inf"))
                latency[variant][le] = latency[variant].get(le, 0.0) + float(s.value)
    return assemble_arms(outcomes, requests, latency)


def parse_feature_bins(text: str, model: str, policy: str) -> FeatureBinCounts:
    """Cumulative rows per feature and bin of one drift policy (MISSING_BIN: rows without the feature), summed over
    versions and variants. Raises ValueError."""
    out: FeatureBinCounts = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model or s.labels.get("policy") != policy:
                continue
            if s.name == mn.FEATURE_BIN_TOTAL:
                index = int(s.labels.get("bin", ""))
            elif s.name == mn.FEATURE_MISSING_TOTAL:
                index = MISSING_BIN
            else:
                continue
            feature = s.labels.get("feature", "")
            out[feature][index] = out[feature].get(index, 0.0) + float(s.value)
    return dict(out)


def difference(now: dict[Key, float], before: dict[Key, float]) -> dict[Key, float]:
    """Per-series increase; a series that went down was reset, so its whole current value is new."""
    out = {}
    for key, value in now.items():
        prev = before.get(key, 0.0)
        out[key] = value - prev if value >= prev else value
    return out


def to_sample(delta: dict[Key, float]) -> TrafficSample:
    requests: dict[tuple[str, str], float] = defaultdict(float)
    latency: dict[str, dict[float, float]] = defaultdict(dict)
    scores: dict[str, dict[float, float]] = defaultdict(dict)
    shadow: dict[str, float] = defaultdict(float)
    for key, v in delta.items():
        if key[0] == _REQUESTS:
            requests[(key[1], key[2])] += v
        elif key[0] == _LATENCY:
            latency[key[1]][parse_le(key[2])] = v
        elif key[0] == _SCORES:
            scores[key[1]][parse_le(key[2])] = v
        elif key[0] == _SHADOW:
            shadow[key[1]] += v
    return assemble(requests, latency, scores, shadow)


class BuiltinProvider:
    """Scrapes one router's /metrics; keeps the previous scrape per model to difference against."""

    def __init__(self, metrics_url: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None) -> None:
        self.metrics_url = metrics_url
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None
        self._previous: dict[str, dict[Key, float]] = {}

    async def _text(self) -> str | MetricError:
        try:
            resp = await self._client.get(self.metrics_url)
        except httpx.HTTPError as exc:
            return MetricError(f"router metrics at {self.metrics_url} unreachable: {type(exc).__name__}: {exc}")
        if resp.status_code != 200:
            return MetricError(f"router metrics at {self.metrics_url} answered HTTP {resp.status_code}")
        return resp.text

    async def sample(self, window: Window) -> Measurement[TrafficSample]:
        text = await self._text()
        if isinstance(text, MetricError):
            return text
        try:
            snap = parse_snapshot(text, window.model)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            return MetricError(f"router metrics at {self.metrics_url} are not Prometheus text: {exc}")
        before = self._previous.get(window.model)
        self._previous[window.model] = snap
        if before is None:
            return NoData("first scrape of the router's metrics: baseline taken, deltas from the next analysis")
        delta = difference(snap, before)
        if not any(k[0] == _REQUESTS for k in delta):
            return NoData(f"no {mn.REQUESTS_TOTAL} series for model {window.model!r} at {self.metrics_url}")
        return Value(to_sample(delta))

    async def arms(self, window: Window, metric: str) -> Measurement[ArmsReading]:
        text = await self._text()
        if isinstance(text, MetricError):
            return text
        try:
            reading = parse_arms(text, window.model, metric)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            return MetricError(f"router metrics at {self.metrics_url} are not Prometheus text: {exc}")
        if not reading:
            return NoData(f"no per-arm series for model {window.model!r} at {self.metrics_url}")
        return Value(reading)

    async def feature_bins(self, model: str, policy: str) -> Measurement[FeatureBinCounts]:
        """Cumulative per-bin counters of a drift policy's features (the drift loop differences two readings)."""
        text = await self._text()
        if isinstance(text, MetricError):
            return text
        try:
            return Value(parse_feature_bins(text, model, policy))
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            return MetricError(f"router metrics at {self.metrics_url} are not Prometheus text: {exc}")

    async def query(self, promql: str) -> Measurement[float]:
        return MetricError("checks of type promql need provider type prometheus; builtin reads only the router")

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()
