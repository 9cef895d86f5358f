"""What the operator writes to Kubernetes for one ModelDeployment: a pure function of its spec and rollout state.

`Desired` comes from the rollout status (roles, weights, which versions keep a workload), so the children are
recomputed identically after a restart and applying them twice changes nothing. One file per backend:
`ray.py` (a KubeRay RayService) and `triton.py` (tritonserver Deployments and Services, a router in front);
`meta.py` holds names, labels and ownerReferences; `gpu.py` the GPU placement shared by both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sluice.api.base import API_VERSION
from sluice.api.model_deployment import Backend, ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.engine.routing import ExperimentArms, Routing
from sluice.operator.config import OperatorConfig
from sluice.serving.config import DriftProfileConfig

Object = dict[str, Any]  # a Kubernetes object as JSON
Key = tuple[str, str]  # (kind, name) of a child in the owner's namespace


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment the children belong to (ownerReferences, labels, names)."""

    name: str
    namespace: str
    uid: str
    api_version: str = API_VERSION
    kind: str = "ModelDeployment"


@dataclass(frozen=True)
class Desired:
    """Roles and traffic to serve, and every version that keeps a workload (stable, canary, blue-green's old one)."""

    routing: Routing
    running: tuple[VersionRef, ...]
    arms: ExperimentArms | None = None  # an Experiment's arms, served instead of the routing while it runs
    drift: tuple[DriftProfileConfig, ...] = ()  # bins of the DriftPolicies watching this ModelDeployment


@dataclass(frozen=True)
class Ready:
    """Whether one version's workload serves now; when not, why, and whether it waits for GPUs it cannot get."""

    ready: bool
    reason: str = ""
    insufficient_gpu: bool = False
    failed: bool = False  # the backend says this version cannot serve (not merely not yet): an arm stops at once


class Renderer(Protocol):
    """One backend's children and how to read their readiness back."""

    def children(
        self, owner: Owner, spec: ModelDeploymentSpec, desired: Desired, config: OperatorConfig
    ) -> list[Object]:
        """Every child object, in the order to apply them; deterministic for equal inputs."""
        ...

    def ready(
        self,
        owner: Owner,
        spec: ModelDeploymentSpec,
        version: str,
        live: Mapping[Key, Object],
        pods: Sequence[Object],
    ) -> Ready:
        """Readiness of `version` from the live children (as read from the API) and the owner's pods."""
        ...


def renderer_for(backend: Backend) -> Renderer:
    if backend == Backend.RAY:
        from sluice.operator.render.ray import RayRenderer

        return RayRenderer()
    if backend == Backend.TRITON:
        from sluice.operator.render.triton import TritonRenderer

        return TritonRenderer()
    raise ValueError(f"unknown backend {backend!r}")
