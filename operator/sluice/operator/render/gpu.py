"""Where a model replica's pod runs and what it asks for, shared by both backends.

GPUs are requested as `nvidia.com/gpu` limits (extended resources cannot be overcommitted, so the request follows the
limit). The chart's GPU node selector and tolerations are defaults for GPU pods only: a CPU-only model must not be
pinned to scarce GPU nodes. A spec that names its own selector or tolerations replaces the defaults, for any pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.api.model_deployment import Resources
from sluice.operator.config import OperatorConfig

GPU_RESOURCE = "nvidia.com/gpu"


def placement(
    resources: Resources, config: OperatorConfig
) -> tuple[dict[str, Any], dict[str, str], list[dict[str, Any]]]:
    """(container `resources`, pod `nodeSelector`, pod `tolerations`) for one replica of `resources`.

    CPU and memory limits equal the requests (Guaranteed QoS for a latency-bound server; Ray also reads its CPU
    count from the limit).
    """
    requests: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    gpu = resources.gpu > 0
    if gpu:
        limits[GPU_RESOURCE] = str(resources.gpu)
    node_selector = dict(resources.node_selector) or (dict(config.gpu_node_selector) if gpu else {})
    if resources.tolerations:
        tolerations = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in resources.tolerations]
    else:
        tolerations = [dict(t) for t in config.gpu_tolerations] if gpu else []
    return {"requests": requests, "limits": limits}, node_selector, tolerations


def serving_image(resources: Resources, config: OperatorConfig) -> str:
    """The Sluice serving image for a model replica: the GPU build (onnxruntime-gpu) where it asks for GPUs."""
    return config.router_gpu_image if resources.gpu > 0 else config.router_image


def insufficient_gpu(pods: Sequence[dict[str, Any]]) -> str | None:
    """The scheduler's message for the first pod waiting because no node has the GPUs it asks for, else None.

    The scheduler sets PodScheduled=False, reason Unschedulable, with a message such as
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.".
    """
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase", "Pending") != "Pending":
            continue
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
                and GPU_RESOURCE in (cond.get("message") or "")
            ):
                return str(cond["message"])
    return None
