"""Checks of what the cluster and the outside world allow: a model URI that answers, GPUs that can be placed.

Each returns the operator condition it implies (type -> (value, reason, message)) or raises BadInput; none writes.
"""

from __future__ import annotations

import httpx

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import Routing
from sluice.operator.platform.status import MODEL_REACHABLE, BadInput
from sluice.operator.render import Ready

Condition = tuple[bool, str, str]  # (value, reason, message) of one operator condition


async def uri_problem(uri: str, timeout_s: float = 5.0) -> str | None:
    """None when `uri` answers a HEAD (or a one-byte ranged GET), else the HTTP status or error in words."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as http:
            response = await http.head(uri)
            if response.status_code in (403, 405, 501):  # some stores refuse HEAD but serve GET
                response = await http.get(uri, headers={"Range": "bytes=0-0"})
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}: {exc}"
    if response.status_code >= 400:
        return f"HTTP {response.status_code} {response.reason_phrase}"
    return None


async def model_reachable(model: VersionRef) -> Condition | None:
    """An http(s) model URI must answer before its version is deployed (BadInput naming spec.model.uri if not);
    None for URIs the operator cannot check (s3://, gs://, pvc://: the workload's init container fetches them)."""
    if not model.uri.startswith(("http://", "https://")):
        return None
    problem = await uri_problem(model.uri)
    if problem is not None:
        raise BadInput(
            MODEL_REACHABLE, "ModelUnreachable", f"spec.model.uri {model.uri} (version {model.version}): {problem}"
        )
    return True, "Reachable", f"spec.model.uri {model.uri} answers"


def gpu_capacity(
    spec: ModelDeploymentSpec, routing: Routing, stable: Ready, canary: Ready | None, *, reported: bool
) -> Condition | None:
    """InsufficientGPU from each role's readiness; None when there is nothing to say (no GPUs asked, none reported)."""
    short = [
        f"{role} {ref.version}: {ready.reason}"
        for role, ref, ready in (("stable", routing.stable, stable), ("canary", routing.canary, canary))
        if ref is not None and ready is not None and ready.insufficient_gpu
    ]
    if short:
        message = f"not enough GPUs (spec.resources.gpu={spec.resources.gpu}): " + "; ".join(short)
        if canary is not None and canary.insufficient_gpu:
            message += "; the canary keeps 0% of traffic and stable keeps its capacity"
        return True, "Unschedulable", message
    if reported or spec.resources.gpu:
        return False, "Scheduled", "every workload could be placed"
    return None
