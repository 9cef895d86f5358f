"""Readiness of the stable and canary workloads, read from the live children and the owner's pods; never writes.

Pods matter only for the GPU check of a version that is not ready (and the ready count): they are listed then, at
most every `pods_every_s` (every tick while a version is short of GPUs, so the condition names the pod's own
reason), and once more when all became ready.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.engine.routing import Routing
from sluice.operator.kube import KubeClient, Obj
from sluice.operator.render import Key, Owner, Ready, Renderer


@dataclass(frozen=True)
class Seen:
    """What one readiness query found."""

    stable: Ready
    canary: Ready | None
    ready_text: str  # "ready pods/pods", the status's `ready`


class ReadinessReader:
    def __init__(self, client: KubeClient, owner: Owner, selector: str, pods_every_s: float = 10.0) -> None:
        self.client, self.owner, self.selector = client, owner, selector
        self.pods: list[Obj] = []
        self.pods_every_s = pods_every_s
        self._pods_at = -pods_every_s
        self._pods_when_ready: bool | None = None  # whether all was ready at the last pods list

    async def read(
        self, renderer: Renderer, spec: ModelDeploymentSpec, routing: Routing, live: Mapping[Key, Obj]
    ) -> Seen:
        stable, canary = self._ready(renderer, spec, routing, live)
        all_ready = stable.ready and (canary is None or canary.ready)
        age = time.monotonic() - self._pods_at
        starved = any(v is not None and v.insufficient_gpu for v in (stable, canary))
        if all_ready != self._pods_when_ready or (not all_ready and (age >= self.pods_every_s or starved)):
            self.pods = await self.client.list("v1", "Pod", self.owner.namespace, self.selector)
            self._pods_at, self._pods_when_ready = time.monotonic(), all_ready
            stable, canary = self._ready(renderer, spec, routing, live)
        ready_pods = sum(1 for p in self.pods if _pod_ready(p))
        return Seen(stable, canary, f"{ready_pods}/{len(self.pods)}")

    def _ready(
        self, renderer: Renderer, spec: ModelDeploymentSpec, r: Routing, live: Mapping[Key, Obj]
    ) -> tuple[Ready, Ready | None]:
        assert r.stable is not None
        stable = renderer.ready(self.owner, spec, r.stable.version, live, self.pods)
        canary = renderer.ready(self.owner, spec, r.canary.version, live, self.pods) if r.canary else None
        return stable, canary


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
