"""ServiceMonitors (prometheus-operator) for one ModelDeployment's router and model servers, when the chart asks.

Rendered as ordinary children (ownerReferences, the owner's labels), so they come and go with the ModelDeployment
and are pruned like any other child. The router's `/metrics` carries the `sluice_*` series the rollout analysis,
the chart's PrometheusRule and its dashboard read; the model servers' carry their own (Triton's `nv_*`).

- backend triton: `<md>-router` scrapes the router Service's `http` port; `<md>-tritonserver` every version
  Service's `metrics` port (one ServiceMonitor selecting all versions by the owner's and component labels).
- backend ray: KubeRay names its Services itself, so the operator adds `<md>-serve-metrics`, a Service over the
  Ray head pod's `serve` port (the Sluice ingress answers `/metrics` there), and `<md>-router` scrapes it.
"""

from __future__ import annotations

from typing import Any

from sluice.operator.config import OperatorConfig
from sluice.operator.render import Object, Owner
from sluice.operator.render.meta import COMPONENT_LABEL, DEPLOYMENT_LABEL, child_meta, dns_label, label_value

API_VERSION = "monitoring.coreos.com/v1"
# DEPLOYMENT_LABEL of the scraped Service as Prometheus' service discovery spells it (non-alphanumerics become _).
MODEL_DEPLOYMENT_META = "__meta_kubernetes_service_label_" + "".join(
    c if c.isalnum() else "_" for c in DEPLOYMENT_LABEL
)


def _name(owner: Owner, suffix: str) -> str:
    return dns_label(f"{owner.name}-{suffix}")


def service_monitor(owner: Owner, config: OperatorConfig, suffix: str, component: str, port: str) -> Object:
    """One ServiceMonitor selecting the owner's Services of one component, scraping `port` (by name)."""
    meta = child_meta(owner, _name(owner, suffix))
    meta["labels"].update(config.monitor_labels)
    return {
        "apiVersion": API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: label_value(owner.name), COMPONENT_LABEL: component}},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [
                {
                    "port": port,
                    "path": "/metrics",
                    "interval": config.monitor_interval,
                    "scheme": "http",
                    # The chart's PrometheusRule and dashboard aggregate per ModelDeployment by this label.
                    "relabelings": [{"sourceLabels": [MODEL_DEPLOYMENT_META], "targetLabel": "model_deployment"}],
                }
            ],
        },
    }


def triton_monitors(owner: Owner, config: OperatorConfig, router_component: str, triton_component: str) -> list[Object]:
    """The router's ServiceMonitor (its `http` port) and one for every version's tritonserver (`metrics` port)."""
    if not config.service_monitors:
        return []
    return [
        service_monitor(owner, config, "router", router_component, "http"),
        service_monitor(owner, config, "tritonserver", triton_component, "metrics"),
    ]


def ray_monitors(owner: Owner, config: OperatorConfig, head: dict[str, str], port: int) -> list[Object]:
    """The Service over the head pod (`head`: its labels) at Serve's `port`, and the ServiceMonitor scraping it."""
    if not config.service_monitors:
        return []
    component = "serve-metrics"
    meta = child_meta(owner, _name(owner, "serve-metrics"))
    meta["labels"][COMPONENT_LABEL] = component
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": head,
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }
    return [service, service_monitor(owner, config, "router", component, "http")]
