"""ServiceMonitors per ModelDeployment on the API (emulator), as the operator process writes them: without
prometheus-operator's CRD the model still serves (the ServiceMonitor is skipped), with it the ServiceMonitor appears
and goes with its owner; every request is granted by the chart rendered with monitoring.modelServiceMonitors on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from tests.operator.test_rbac import CHART, grants, used
from tests.support import wait_for
from tests.support.kube import start_emulator
from tests.support.operator_process import GROUP_VERSION, OPERATOR_AGENTS, TEST_AGENT, OperatorProcess, model_deployment
from tests.support.router_metrics import SyntheticRouterMetrics
from tests.support.simulator import ClusterSimulator

SERVICEMONITOR_CRD = Path(__file__).resolve().parents[1] / "schemas" / "monitoring.coreos.com_servicemonitors.yaml"
MONITORS = "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors"


def _chart_grants_with_monitors() -> set[tuple[str, str, str]]:
    values = helm.parse_set_string("monitoring.modelServiceMonitors.enabled=true")
    rendered = helm.Chart.load(CHART).render(values, name="sluice", namespace="sluice-system", is_install=True)
    docs = [d for name, text in rendered.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    return grants(role["rules"])


@pytest.mark.parametrize("crd_installed", [False, True])
def test_model_deployment_with_service_monitors(crd_installed: bool, tmp_path: Path) -> None:
    emulator = start_emulator()
    operator: OperatorProcess | None = None
    try:
        if crd_installed:
            crd: dict[str, Any] = yaml.safe_load(SERVICEMONITOR_CRD.read_text())
            emulator.call(lambda: emulator.emulator.register_crd(crd))
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig")
        env = {"SLUICE_SERVICE_MONITORS": "true", "SLUICE_MONITOR_LABELS": '{"release": "prometheus"}'}
        with (
            SyntheticRouterMetrics() as metrics,
            ClusterSimulator(emulator.url),
            httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=30) as http,
        ):
            operator = OperatorProcess(kubeconfig, tmp_path, {"SLUICE_ROUTER_METRICS_URL": metrics.url_format, **env})
            operator.start()
            ns, path = "mon", f"/apis/{GROUP_VERSION}/namespaces/mon/modeldeployments"
            assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
            assert http.post(path, json=model_deployment("m", "v1", [50])).status_code == 201

            def phase() -> str:
                return str((http.get(f"{path}/m").json().get("status") or {}).get("phase"))

            wait_for("Stable", lambda: phase() == "Stable", 60)
            if crd_installed:
                monitors = http.get(MONITORS.format(ns=ns)).json()["items"]
                assert [m["metadata"]["name"] for m in monitors] == ["m-router"]
                assert monitors[0]["metadata"]["labels"]["release"] == "prometheus"
                service = http.get(f"/api/v1/namespaces/{ns}/services/m-serve-metrics")
                assert service.status_code == 200, service.text
            assert http.delete(f"{path}/m").status_code == 200
            wait_for("the finalizer released", lambda: http.get(f"{path}/m").status_code == 404, 30)
            logs = operator.logs()
            assert operator.stop() == 0, logs[-4000:]
            assert "Traceback" not in logs, logs[-4000:]
            if not crd_installed:
                assert logs.count("ServiceMonitor m-router not written") == 1  # warned once, not every tick
        requests = emulator.call(lambda: emulator.emulator.audited(OPERATOR_AGENTS))
        missing = used(requests) - _chart_grants_with_monitors()
        assert not missing, f"the chart with monitors on does not allow what the operator does: {sorted(missing)}"
        if crd_installed:
            assert ("monitoring.coreos.com", "servicemonitors", "create") in used(requests)
    finally:
        if operator is not None:
            operator.stop()
        emulator.stop()
