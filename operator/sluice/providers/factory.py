"""Build the provider a ModelDeployment's analysis names; unknown types are refused, never defaulted."""

from __future__ import annotations

import httpx

from sluice.api.model_deployment import ProviderSpec, ProviderType
from sluice.providers.base import MetricProvider
from sluice.providers.builtin import BuiltinProvider
from sluice.providers.prometheus import PrometheusProvider


def create_provider(
    spec: ProviderSpec,
    *,
    metrics_url: str | None = None,
    timeout_s: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> MetricProvider:
    """`metrics_url` is the router's /metrics, needed by the builtin provider. Raises ValueError naming the problem.

    `client`: a shared HTTP client for the builtin provider (the operator runs one per process, not per resource).
    """
    kind = str(getattr(spec.type, "value", spec.type))
    if kind == ProviderType.BUILTIN.value:
        if not metrics_url:
            raise ValueError("provider builtin needs the router's metrics URL")
        return BuiltinProvider(metrics_url, timeout_s=timeout_s, client=client)
    if kind == ProviderType.PROMETHEUS.value:
        if not spec.address:
            raise ValueError("provider prometheus needs address, e.g. http://prometheus.monitoring:9090")
        return PrometheusProvider(spec.address, timeout_s=timeout_s)
    known = ", ".join(t.value for t in ProviderType)
    raise ValueError(f"unknown metric provider type {kind!r}; known: {known}")
