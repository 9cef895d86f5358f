"""PromQL over a Prometheus HTTP API (`/api/v1/query`). Every failure comes back as a MetricError with its cause."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import httpx

from sluice.providers.base import MISSING_BIN, ArmsReading, FeatureBinCounts, Window, assemble, assemble_arms, parse_le
from sluice.rollout.measurements import Measurement, MetricError, NoData, TrafficSample, Value
from sluice.serving import metric_names as mn

Series = list[tuple[dict[str, str], float]]


class PrometheusProvider:
    """Reads interval increases of the router's series from Prometheus."""

    def __init__(self, address: str, *, timeout_s: float = 5.0, client: httpx.AsyncClient | None = None) -> None:
        self.address = address.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._owns_client = client is None

    async def _vector(self, promql: str) -> Series | MetricError:
        try:
            resp = await self._client.get(f"{self.address}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            return MetricError(f"prometheus at {self.address} unreachable: {type(exc).__name__}: {exc}")
        try:
            body: dict[str, Any] = resp.json()
        except ValueError:
            return MetricError(f"prometheus answered HTTP {resp.status_code} with a non-JSON body")
        if resp.status_code != 200 or body.get("status") != "success":
            return MetricError(f"prometheus refused {promql!r}: HTTP {resp.status_code}: {body.get('error', body)}")
        data = body.get("data", {})
        kind = data.get("resultType")
        if kind == "scalar":
            return [({}, float(data["result"][1]))]
        if kind != "vector":
            return MetricError(f"query {promql!r} returned a {kind}, expected a vector or scalar")
        try:
            return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return MetricError(f"malformed prometheus result for {promql!r}: {exc}")

    async def query(self, promql: str) -> Measurement[float]:
        series = await self._vector(promql)
        if isinstance(series, MetricError):
            return series
        if not series:
            return NoData(f"query {promql!r} returned no series")
        if len(series) > 1:
            return MetricError(f"query {promql!r} returned {len(series)} series; aggregate it to one number")
        return Value(series[0][1])

    async def sample(self, window: Window) -> Measurement[TrafficSample]:
        matchers = f'model="{window.model}"' + (f",{window.selector}" if window.selector else "")
        rng = f"{max(1, round(window.interval_s))}s"

        def increase(metric: str, by: str) -> str:
            return f"sum by ({by}) (increase({metric}{{{matchers}}}[{rng}]))"

        results = await asyncio.gather(
            self._vector(increase(mn.REQUESTS_TOTAL, "variant, code")),
            self._vector(increase(f"{mn.REQUEST_DURATION_SECONDS}_bucket", "variant, le")),
            self._vector(increase(f"{mn.PREDICTION_SCORE}_bucket", "variant, le")),
            self._vector(increase(mn.SHADOW_COMPARISONS_TOTAL, "outcome")),
        )
        for r in results:
            if isinstance(r, MetricError):
                return r
        req, lat, score, shadow = (r for r in results if not isinstance(r, MetricError))
        if not req:
            return NoData(f"no {mn.REQUESTS_TOTAL} series for {matchers} in the last {rng}")
        requests: dict[tuple[str, str], float] = defaultdict(float)
        for labels, v in req:
            requests[(labels.get("variant", ""), labels.get("code", ""))] += v
        return Value(assemble(requests, _buckets(lat), _buckets(score), {m.get("outcome", ""): v for m, v in shadow}))

    async def arms(self, window: Window, metric: str) -> Measurement[ArmsReading]:
        """Cumulative counters (not increases): an experiment's statistics use everything since its arms started."""
        matchers = f'model="{window.model}"' + (f",{window.selector}" if window.selector else "")
        outcome = f'{matchers},metric="{metric}"'
        results = await asyncio.gather(
            self._vector(f"sum by (variant) ({mn.OUTCOMES_TOTAL}{{{outcome}}})"),
            self._vector(f"sum by (variant) ({mn.OUTCOME_VALUE_SUM}{{{outcome}}})"),
            self._vector(f"sum by (variant) ({mn.OUTCOME_VALUE_SQUARES_SUM}{{{outcome}}})"),
            self._vector(f"sum by (variant, code) ({mn.REQUESTS_TOTAL}{{{matchers}}})"),
            self._vector(f"sum by (variant, le) ({mn.REQUEST_DURATION_SECONDS}_bucket{{{matchers}}})"),
        )
        for r in results:
            if isinstance(r, MetricError):
                return r
        count, total, squares, req, lat = (r for r in results if not isinstance(r, MetricError))
        outcomes: dict[tuple[str, str], float] = {}
        for kind, series in (("count", count), ("sum", total), ("squares", squares)):
            for labels, v in series:
                outcomes[(labels.get("variant", ""), kind)] = v
        requests = {(labels.get("variant", ""), labels.get("code", "")): v for labels, v in req}
        reading = assemble_arms(outcomes, requests, _buckets(lat))
        if not reading:
            return NoData(f"no per-arm series for {matchers}")
        return Value(reading)

    async def feature_bins(self, model: str, policy: str) -> Measurement[FeatureBinCounts]:
        """Cumulative per-bin counters of a drift policy, summed over versions, variants and router replicas.

        Cumulative like the builtin provider's, so the drift loop differences two readings the same way (a sum that
        went down, e.g. one replica restarted, counts as a reset).
        """
        matchers = f'model="{model}",policy="{policy}"'
        series, missing = await asyncio.gather(
            self._vector(f"sum by (feature, bin) ({mn.FEATURE_BIN_TOTAL}{{{matchers}}})"),
            self._vector(f"sum by (feature) ({mn.FEATURE_MISSING_TOTAL}{{{matchers}}})"),
        )
        if isinstance(series, MetricError):
            return series
        if isinstance(missing, MetricError):
            return missing
        out: FeatureBinCounts = defaultdict(dict)
        for labels, v in missing:
            out[labels.get("feature", "")][MISSING_BIN] = v
        try:
            for labels, v in series:
                out[labels.get("feature", "")][int(labels.get("bin", ""))] = v
        except ValueError as exc:
            return MetricError(f"{mn.FEATURE_BIN_TOTAL}: a bin label is not a number: {exc}")
        return Value(dict(out))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _buckets(series: Series) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for labels, v in series:
        if "le" in labels:
            out[labels.get("variant", "")][parse_le(labels["le"])] = v
    return out
