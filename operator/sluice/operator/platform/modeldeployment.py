"""KubePlatform: the rollout loop's Platform on Kubernetes (the twin of the local platform behind `sluice run`).

What runs is a pure function of the status: roles, weights and every version that keeps a workload are rebuilt from
the stored status when the daemon starts or a tick fails, and updated by each action exactly as the local platform
updates its routing. The order of writes makes a kill anywhere safe (docs/operating/crash-consistency.md):

1. `readiness()` only reads (the watched children, the owner's pods);
2. `carry_out()` changes the routing in memory and posts Events under names derived from the transition, so a
   decision taken again after a restart posts nothing twice;
3. `save()` writes the status first (write-ahead) and only then makes the children match it.

So the children never run ahead of the status: a restarted operator rebuilds from the status a routing that is the
children's own or a later one, and only ever moves them forward.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sluice.api.base import COMMAND_ANNOTATION
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, VersionRef
from sluice.engine.platform import Readiness
from sluice.engine.routing import ARMS_ANNOTATION, ExperimentArms, Routing
from sluice.operator.admin_secret import AdminSecret
from sluice.operator.config import OperatorConfig
from sluice.operator.driftprofiles import profiles_on
from sluice.operator.kube import KubeClient, Obj
from sluice.operator.platform import checks, events
from sluice.operator.platform.children import Children
from sluice.operator.platform.readiness import ReadinessReader
from sluice.operator.platform.status import (
    BACKEND_AVAILABLE,
    INSUFFICIENT_GPU,
    MODEL_REACHABLE,
    StatusWriter,
    put_condition,
    rollout_key,
)
from sluice.operator.render import Desired, Owner, renderer_for
from sluice.rollout.actions import Action, DeployVersion, EmitEvent, ScaleDown
from sluice.rollout.observations import Command
from sluice.serving.config import STABLE

log = logging.getLogger(__name__)


def desired_from(status: ModelDeploymentStatus) -> tuple[Routing, list[VersionRef]]:
    """Roles, split and running versions as the status records them (what runs after a restart)."""
    routing = Routing(status.stable, status.canary, status.canary_weight, status.mirror_percent)
    running: list[VersionRef] = []
    for ref in (status.stable, status.canary, status.scale_down_version):
        if ref is not None and all(r.version != ref.version for r in running):
            running.append(ref)
    return routing, running


class KubePlatform:
    """Carries one ModelDeployment's rollout actions out as Kubernetes objects; keeps its status in the API."""

    def __init__(
        self,
        client: KubeClient,
        owner: Owner,
        spec: ModelDeploymentSpec,
        config: OperatorConfig,
        *,
        status: ModelDeploymentStatus,
        writer: StatusWriter,
        generation: int | None = None,
        check_uris: bool = True,
        watched: Mapping[tuple[str, str, str], Obj] | None = None,
        pods_every_s: float = 10.0,
    ) -> None:
        self.client, self.owner, self.config, self.writer = client, owner, config, writer
        self.spec, self.renderer = spec, renderer_for(spec.backend)
        self.generation = generation
        self.check_uris = check_uris
        self.body: Obj = {}  # the live ModelDeployment, refreshed by the daemon before each tick
        self.operator_conditions: dict[str, checks.Condition] = {}
        self.canary_not_ready = ""  # why the canary is not ready (named in a progress-deadline rollback)
        self.ready_text = status.ready
        self._bad_command: str | None = None
        self.admin_secret = AdminSecret(client, owner)  # create-only: never part of the applied children
        self.kids = Children(client, owner, watched if watched is not None else {})
        self.probe = ReadinessReader(client, owner, self.kids.selector, pods_every_s)
        self._rendered: tuple[ModelDeploymentSpec, str, list[Obj]] | None = None
        self.event_keys = events.DecisionKeys()
        self.reset(status)

    # -- desired state -----------------------------------------------------------------------------------------
    def reset(self, status: ModelDeploymentStatus) -> None:
        """Forget what unsaved actions did: desired state as the stored status says."""
        self.routing, self.running = desired_from(status)
        # A status that names no version has nothing to orphan (a new resource): no lists of every child kind.
        self.kids.prune_needed = bool(self.running)
        self.event_keys.saved_as(rollout_key(status))

    def set_spec(self, spec: ModelDeploymentSpec, generation: int | None) -> None:
        self.spec, self.renderer, self.generation = spec, renderer_for(spec.backend), generation
        self.kids.prune_needed = True

    def experiment_arms(self) -> ExperimentArms | None:
        """The arms an Experiment handed to this ModelDeployment (its annotation), while no rollout is in progress.

        An unreadable annotation is ignored (logged): the rollout's routing keeps serving.
        """
        text = ((self.body.get("metadata") or {}).get("annotations") or {}).get(ARMS_ANNOTATION)
        if not text or self.routing.stable is None or self.routing.canary is not None:
            return None
        try:
            return ExperimentArms.from_json(text)
        except ValueError as exc:
            log.warning("%s/%s: %s", self.owner.namespace, self.owner.name, exc)
            return None

    def desired(self) -> Desired:
        arms = self.experiment_arms()
        drift = profiles_on(self.body)  # the bins of the DriftPolicies watching this target (driftprofiles.py)
        running = list(self.running)
        for _, ref, _ in arms.arms if arms is not None else ():
            if all(r.version != ref.version for r in running):
                running.append(ref)  # every arm's version keeps a workload while the experiment runs
        return Desired(routing=Routing(**vars(self.routing)), running=tuple(running), arms=arms, drift=drift)

    def children(self) -> list[Obj]:
        """The rendered children, re-rendered only when the spec or the desired state changed (YAML is costly)."""
        desired = self.desired()
        key = repr(desired)
        if self._rendered is None or self._rendered[0] is not self.spec or self._rendered[1] != key:
            self._rendered = (self.spec, key, self.renderer.children(self.owner, self.spec, desired, self.config))
        return self._rendered[2]

    async def sync(self) -> None:
        """Make the children match the desired state (writing only differences; pruning when needed)."""
        if self.routing.stable is None:
            return
        await self.admin_secret.ensure()  # before the pods that mount it, so they start with the token
        await self.kids.apply(self.children(), self.spec.backend.value)
        self.operator_conditions[BACKEND_AVAILABLE] = (
            True,
            "BackendInstalled",
            f"the {self.spec.backend.value} backend's APIs are served",
        )

    # -- Platform ----------------------------------------------------------------------------------------------
    async def readiness(self) -> Readiness:
        """Read-only: the live children and pods as they are; the children are written by `save`."""
        r = self.routing
        if r.stable is None:
            return Readiness(stable=False, canary=False)
        seen = await self.probe.read(self.renderer, self.spec, r, await self.kids.live(self.children()))
        gpu = checks.gpu_capacity(
            self.spec, r, seen.stable, seen.canary, reported=INSUFFICIENT_GPU in self.operator_conditions
        )
        if gpu is not None:
            self.operator_conditions[INSUFFICIENT_GPU] = gpu
        if r.canary is not None and seen.canary is not None and not seen.canary.ready:
            self.canary_not_ready = f"spec.model.uri {r.canary.uri}: {seen.canary.reason or 'not ready'}"
        self.ready_text = seen.ready_text
        return Readiness(stable=seen.stable.ready, canary=seen.canary is not None and seen.canary.ready)

    async def carry_out(self, action: Action) -> None:
        """Change the routing in memory (the children follow in `save`) or post an Event."""
        if isinstance(action, EmitEvent):
            message = action.message
            if action.reason == "ProgressDeadlineExceeded" and self.canary_not_ready:
                message += f" ({self.canary_not_ready})"
            # Named after the saved status it was decided from and its place among this tick's Events.
            key = "rollout/" + self.event_keys.next(action.reason)
            await events.emit(self.client, self.owner, action.type, action.reason, message, key=key)
            return
        if isinstance(action, DeployVersion):
            if self.check_uris:
                reachable = await checks.model_reachable(action.model)
                if reachable is not None:
                    self.operator_conditions[MODEL_REACHABLE] = reachable
            if action.role != STABLE:
                self.canary_not_ready = ""
            if all(v.version != action.model.version for v in self.running):
                self.running.append(action.model)
            else:
                self.running = [action.model if v.version == action.model.version else v for v in self.running]
        r = self.routing
        r.apply(action)
        if isinstance(action, ScaleDown):
            keep = r.stable.version if r.stable is not None else None
            self.running = [v for v in self.running if v.version != action.version or v.version == keep]
            self.kids.prune_needed = True

    async def save(self, status: ModelDeploymentStatus) -> None:
        """Write the status (with the operator's conditions and ready count, added in place: the loop keeps them),
        then make the children match it: write-ahead, so the children never get ahead of the status."""
        status.ready = self.ready_text
        for type_, (value, reason, message) in self.operator_conditions.items():
            put_condition(status, type_, value, reason, message, generation=self.generation)
        await self.writer.write(status)
        self.event_keys.saved_as(rollout_key(status))
        await self.sync()

    async def pending_command(self) -> Command | None:
        text = (self.body.get("metadata", {}).get("annotations") or {}).get(COMMAND_ANNOTATION)
        if not text:
            return None
        try:
            return Command.parse(text)
        except ValueError as exc:
            if self._bad_command != text:
                self._bad_command = text
                await events.emit(
                    self.client,
                    self.owner,
                    "Warning",
                    "CommandIgnored",
                    f"annotation {COMMAND_ANNOTATION}: {exc}",
                    key=f"command/{text}",
                )
            return None
