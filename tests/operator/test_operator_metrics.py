"""The operator's per-ModelDeployment series that the chart's dashboard and PrometheusRule read."""

from __future__ import annotations

from prometheus_client import generate_latest

from sluice.operator.context import Metrics


def _samples(metrics: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(("sluice_operator_model_deployment_phase{", "sluice_operator_rollbacks_total{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_phase_series_follow_each_model_deployment_and_rollbacks_count_transitions() -> None:
    metrics = Metrics()
    metrics.phase("ns/a", "RolledBack")  # first seen after a restart: no rollback counted
    metrics.phase("ns/b", "Stable")
    metrics.phase("ns/b", "Progressing")
    metrics.phase("ns/b", "RolledBack")
    metrics.phase("ns/b", "RolledBack")  # the same phase again: nothing new
    samples = _samples(metrics)
    assert samples['sluice_operator_model_deployment_phase{name="b",namespace="ns",phase="RolledBack"}'] == 1
    assert not any('name="b"' in k and 'phase="Progressing"' in k for k in samples)  # the old phase is gone
    assert samples['sluice_operator_rollbacks_total{name="b",namespace="ns"}'] == 1
    assert samples['sluice_operator_rollbacks_total{name="a",namespace="ns"}'] == 0
    metrics.phase("ns/b", None)  # deleted: its series go
    assert not any('name="b"' in k for k in _samples(metrics))
