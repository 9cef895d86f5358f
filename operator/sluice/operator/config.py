"""Operator settings from the environment the Helm chart sets (deployment.yaml); bad values name their variable."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ROUTER_IMAGE = "ghcr.io/sluice-dev/sluice-serving:0.1.0"
DEFAULT_ROUTER_GPU_IMAGE = "ghcr.io/sluice-dev/sluice-serving:0.1.0-gpu"  # serving/Dockerfile built with EXTRAS=gpu,...
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
# The ServiceMonitor CRD's own pattern for `interval`.
_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


@dataclass(frozen=True)
class LeaseSettings:
    """Leader election (leader.py); client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period."""

    namespace: str
    name: str = "sluice-operator"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs 0 < SLUICE_RETRY_PERIOD_SECONDS < SLUICE_RENEW_DEADLINE_SECONDS < "
                f"SLUICE_LEASE_DURATION_SECONDS, got {self.retry_period_s} / {self.renew_deadline_s} / "
                f"{self.lease_duration_s}"
            )


@dataclass(frozen=True)
class OperatorConfig:
    router_image: str = DEFAULT_ROUTER_IMAGE  # Sluice router and Ray Serve app (serving/Dockerfile)
    router_gpu_image: str = DEFAULT_ROUTER_GPU_IMAGE  # the same with onnxruntime-gpu: model pods asking for GPUs
    triton_image: str = DEFAULT_TRITON_IMAGE  # default for backend triton when spec.tritonImage is empty
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)  # for pods asking for GPUs
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()  # for pods asking for GPUs
    watch_namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    log_level: str = "INFO"
    metrics_port: int = 8080
    health_port: int = 8081
    # ServiceMonitors for each ModelDeployment's router and model servers (prometheus-operator), with these labels
    # so a Prometheus' serviceMonitorSelector picks them up, scraped every `monitor_interval`.
    service_monitors: bool = False
    monitor_interval: str = "15s"
    monitor_labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = None  # the operator's own (POD_NAMESPACE)
    pod_name: str | None = None  # POD_NAME, the leader-election identity
    leader_election: LeaseSettings | None = None  # None: this replica acts alone (replicaCount 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorConfig:
        """Read SLUICE_* (and POD_NAMESPACE, POD_NAME); raises ValueError naming the variable and its problem."""
        selector = _json(env, "SLUICE_GPU_NODE_SELECTOR", {})
        if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
            raise ValueError('SLUICE_GPU_NODE_SELECTOR must be a JSON object of strings, e.g. {"gpu": "true"}')
        tolerations = _json(env, "SLUICE_GPU_TOLERATIONS", [])
        if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
            raise ValueError("SLUICE_GPU_TOLERATIONS must be a JSON list of toleration objects")
        monitor_labels = _json(env, "SLUICE_MONITOR_LABELS", {})
        if not isinstance(monitor_labels, dict) or not all(isinstance(v, str) for v in monitor_labels.values()):
            raise ValueError('SLUICE_MONITOR_LABELS must be a JSON object of strings, e.g. {"release": "prometheus"}')
        monitors = env.get("SLUICE_SERVICE_MONITORS", "false").strip().lower()
        if monitors not in {"true", "false"}:
            raise ValueError(f"SLUICE_SERVICE_MONITORS must be true or false, not {monitors!r}")
        interval = env.get("SLUICE_MONITOR_INTERVAL", "").strip() or "15s"
        if not _DURATION.match(interval):
            raise ValueError(
                f"SLUICE_MONITOR_INTERVAL must be a Prometheus duration such as 15s or 1m, not {interval!r}"
            )
        level = env.get("SLUICE_LOG_LEVEL", "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"SLUICE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {level!r}")
        return cls(
            router_image=env.get("SLUICE_ROUTER_IMAGE") or DEFAULT_ROUTER_IMAGE,
            router_gpu_image=env.get("SLUICE_ROUTER_GPU_IMAGE") or DEFAULT_ROUTER_GPU_IMAGE,
            triton_image=env.get("SLUICE_TRITON_IMAGE") or DEFAULT_TRITON_IMAGE,
            gpu_node_selector=selector,
            gpu_tolerations=tuple(tolerations),
            watch_namespaces=tuple(n.strip() for n in env.get("SLUICE_WATCH_NAMESPACES", "").split(",") if n.strip()),
            log_level=level,
            metrics_port=_port(env, "SLUICE_METRICS_PORT", 8080),
            health_port=_port(env, "SLUICE_HEALTH_PORT", 8081),
            service_monitors=monitors == "true",
            monitor_interval=interval,
            monitor_labels=monitor_labels,
            namespace=env.get("POD_NAMESPACE") or None,
            pod_name=env.get("POD_NAME") or None,
            leader_election=_lease(env),
        )


def _lease(env: Mapping[str, str]) -> LeaseSettings | None:
    flag = env.get("SLUICE_LEADER_ELECTION", "").strip().lower()
    if flag in ("", "false", "0"):
        return None
    if flag not in ("true", "1"):
        raise ValueError(f"SLUICE_LEADER_ELECTION must be true or false, not {flag!r}")
    namespace = env.get("POD_NAMESPACE", "").strip()
    if not namespace:
        raise ValueError("SLUICE_LEADER_ELECTION=true needs POD_NAMESPACE: the Lease lives in the operator's namespace")
    defaults = LeaseSettings(namespace=namespace)
    return LeaseSettings(
        namespace=namespace,
        name=env.get("SLUICE_LEASE_NAME", "").strip() or defaults.name,
        lease_duration_s=_seconds(env, "SLUICE_LEASE_DURATION_SECONDS", defaults.lease_duration_s),
        renew_deadline_s=_seconds(env, "SLUICE_RENEW_DEADLINE_SECONDS", defaults.renew_deadline_s),
        retry_period_s=_seconds(env, "SLUICE_RETRY_PERIOD_SECONDS", defaults.retry_period_s),
    )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"{name} must be in (0, 3600] seconds, not {text!r}")
    return value


def _json(env: Mapping[str, str], name: str, default: Any) -> Any:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} is not valid JSON: {e.msg} at column {e.colno}") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{name} must be a port number 1-65535, not {text!r}")
    return int(text)
