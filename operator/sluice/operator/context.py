"""What every handler needs, built once at startup and handed to Kopf as `memo` (no module globals)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice.api.model_deployment import Backend
from sluice.api.status import Phase
from sluice.operator.config import OperatorConfig
from sluice.operator.kube import KubeClient

# Where the builtin metric provider reads the router's /metrics, per backend ({name}, {namespace} filled in).
DEFAULT_METRICS_URLS: dict[Backend, str] = {
    Backend.RAY: "http://{name}-serve-svc.{namespace}.svc:8000/metrics",  # KubeRay's Serve Service of the RayService
    Backend.TRITON: "http://{name}-router.{namespace}.svc:8000/metrics",
}


class Metrics:
    """The operator's own Prometheus metrics, in a registry of their own (served on the metrics port)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "sluice_operator_reconciles", "Rollout loop ticks, by outcome.", ["outcome"], registry=self.registry
        )
        self.phases = Gauge(
            "sluice_operator_model_deployments",
            "ModelDeployments per rollout phase.",
            ["phase"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "sluice_operator_api_errors", "Kubernetes API calls that failed.", registry=self.registry
        )
        # Per ModelDeployment (bounded by their number): what the chart's dashboard and PrometheusRule read.
        self.phase_info = Gauge(
            "sluice_operator_model_deployment_phase",
            "1 for the rollout phase each ModelDeployment is in now.",
            ["namespace", "name", "phase"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "sluice_operator_rollbacks",
            "Rollouts that ended RolledBack, per ModelDeployment (seen by this operator process).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.drift_score = Gauge(
            "sluice_drift_score",
            "Drift score of each watched feature at the DriftPolicy's last evaluation.",
            ["namespace", "policy", "feature"],
            registry=self.registry,
        )
        self._phase_of: dict[str, str] = {}
        self._drift_features: dict[tuple[str, str], set[str]] = {}

    def phase(self, key: str, phase: str | None) -> None:
        """Record `key`'s ("namespace/name") phase (None: it is gone) and refresh the per-phase series.

        A change into RolledBack counts one rollback; a phase first seen after a restart counts nothing.
        """
        namespace, _, name = key.partition("/")
        previous = self._phase_of.get(key)
        if previous == phase:
            return
        if previous is not None:
            self.phase_info.remove(namespace, name, previous)
        if phase is None:
            self._phase_of.pop(key, None)
            with contextlib.suppress(KeyError):
                self.rollbacks.remove(namespace, name)
        else:
            self._phase_of[key] = phase
            self.phase_info.labels(namespace=namespace, name=name, phase=phase).set(1)
            rollbacks = self.rollbacks.labels(namespace=namespace, name=name)  # the series exists from the start
            if phase == Phase.ROLLED_BACK.value and previous is not None:
                rollbacks.inc()
        counts: dict[str, int] = {}
        for value in self._phase_of.values():
            counts[value] = counts.get(value, 0) + 1
        for value in {*counts, *(s.labels["phase"] for m in self.phases.collect() for s in m.samples)}:
            self.phases.labels(phase=value).set(counts.get(value, 0))

    def drift(self, namespace: str, policy: str, scores: dict[str, float | None] | None) -> None:
        """Set one policy's per-feature scores (None: it is gone); features no longer scored are removed."""
        key = (namespace, policy)
        known = self._drift_features.get(key, set())
        now = {f: s for f, s in (scores or {}).items() if s is not None}
        for feature in known - now.keys():
            self.drift_score.remove(namespace, policy, feature)
        for feature, score in now.items():
            self.drift_score.labels(namespace=namespace, policy=policy, feature=feature).set(score)
        if now:
            self._drift_features[key] = set(now)
        else:
            self._drift_features.pop(key, None)


@dataclass
class OperatorContext:
    client: KubeClient
    config: OperatorConfig
    metrics: Metrics = field(default_factory=Metrics)
    metrics_url: str | None = None  # format string with {name} and {namespace}; None: the backend's default
    poll_s: float = 1.0
    max_backoff_s: float = 30.0
    pods_every_s: float = 10.0  # pods are listed (for the GPU check) at most this often per ModelDeployment
    # Live children of the watched kinds by (kind, namespace, name), kept by the watch handlers (handlers/children.py);
    # {} marks one that was deleted. Readiness reads them here, so a quiet ModelDeployment makes no requests.
    children: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    wakers: dict[str, asyncio.Event] = field(
        default_factory=dict
    )  # ModelDeployment uid -> set when it or a child changed
    _http: httpx.AsyncClient | None = None

    def wake(self, uid: str) -> None:
        event = self.wakers.get(uid)
        if event is not None:
            event.set()

    def provider_http(self) -> httpx.AsyncClient:
        """One keep-alive client for every metric provider (one per ModelDeployment costs an SSL context each)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0, limits=httpx.Limits(max_connections=64))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        await self.client.close()

    def router_metrics_url(self, backend: Backend, name: str, namespace: str) -> str:
        template = self.metrics_url or DEFAULT_METRICS_URLS[backend]
        return template.format(name=name, namespace=namespace)
