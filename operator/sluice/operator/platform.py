"""KubePlatform: the ModelDeployment loop's Platform on Kubernetes (the twin of sluice/local/modeldeployment.py).

What runs is a pure function of the status: `Desired` (roles, weights and every version that keeps a workload) is
rebuilt from the stored status when the daemon starts or a tick fails, and updated by each action exactly as the
local platform updates its routing. The children are then applied idempotently, so a restart anywhere re-applies
the same objects and writes nothing new. The status subresource is written only when it changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from sluice.api.base import GROUP, VERSION, ConditionStatus
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, VersionRef
from sluice.engine.platform import Readiness
from sluice.engine.routing import ARMS_ANNOTATION, ExperimentArms, Routing
from sluice.operator import events
from sluice.operator.admin_secret import AdminSecret
from sluice.operator.config import OperatorConfig
from sluice.operator.driftprofiles import profiles_on
from sluice.operator.kube import ApiError, KubeClient, Obj, contains, merge_diff, our_fields
from sluice.operator.render import Desired, Key, Owner, Ready, renderer_for
from sluice.operator.render.meta import DEPLOYMENT_LABEL, label_value
from sluice.rollout.actions import Action, DeployVersion, EmitEvent, ScaleDown
from sluice.rollout.conditions import set_condition
from sluice.rollout.observations import Command
from sluice.serving.config import STABLE

log = logging.getLogger(__name__)

API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
COMMAND_ANNOTATION = f"{GROUP}/command"
# Kinds a renderer may create; children of these kinds that are no longer desired are deleted.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("ray.io/v1", "RayService"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)
# Children the model serves without (monitoring): skipped, with a warning, where the cluster lacks their API.
OPTIONAL_KINDS = frozenset({"ServiceMonitor"})
# Children kept current by Kopf watches (handlers/children.py): read from memory, never GET.
WATCHED_KINDS = frozenset({"RayService", "Deployment"})
# Operator-level condition types (the rollout core owns Ready, Progressing, Degraded, RolledBack, AnalysisNoData).
SPEC_VALID = "SpecValid"
BACKEND_AVAILABLE = "BackendAvailable"
MODEL_REACHABLE = "ModelReachable"
INSUFFICIENT_GPU = "InsufficientGPU"


class BadInput(Exception):
    """The spec cannot be carried out as written; `condition` False with a message naming the field."""

    def __init__(self, condition: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.condition, self.reason, self.message = condition, reason, message


def status_dict(status: ModelDeploymentStatus) -> Obj:
    out: Obj = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def desired_from(status: ModelDeploymentStatus) -> tuple[Routing, list[VersionRef]]:
    """Roles, split and running versions as the status records them (what runs after a restart)."""
    routing = Routing(status.stable, status.canary, status.canary_weight, status.mirror_percent)
    running: list[VersionRef] = []
    for ref in (status.stable, status.canary, status.scale_down_version):
        if ref is not None and all(r.version != ref.version for r in running):
            running.append(ref)
    return routing, running


@dataclass
class StatusWriter:
    """Merge-patches the status subresource, only when it differs from what was last written or observed."""

    client: KubeClient
    owner: Owner
    last: Obj = field(default_factory=dict)
    writes: int = 0

    async def write(self, status: ModelDeploymentStatus) -> bool:
        new = status_dict(status)
        if new == self.last:
            return False
        patch = merge_diff(self.last, new)
        await self.client.patch_status(API_VERSION, KIND, self.owner.namespace, self.owner.name, {"status": patch})
        self.last, self.writes = new, self.writes + 1
        return True


def put_condition(
    status: ModelDeploymentStatus, type_: str, value: bool, reason: str, message: str, *, generation: int | None
) -> None:
    """Set an operator-level condition on `status` in place (transition time kept while the value holds)."""
    status.conditions = set_condition(
        status.conditions,
        type_,
        value,
        reason=reason,
        message=message,
        now=datetime.now(UTC),
        generation=generation,
    )


def condition_is(status: ModelDeploymentStatus, type_: str, value: bool) -> bool:
    wanted = ConditionStatus.TRUE if value else ConditionStatus.FALSE
    return any(c.type == type_ and c.status == wanted for c in status.conditions)


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
        self.operator_conditions: dict[str, tuple[bool, str, str]] = {}
        self.canary_not_ready = ""  # why the canary is not ready (named in a progress-deadline rollback)
        self.ready_text = status.ready
        self.prune_needed = True  # delete children no longer desired (at start and after a change)
        self._bad_command: str | None = None
        self.admin_secret = AdminSecret(client, owner)  # create-only: never part of the applied children
        self.selector = f"{DEPLOYMENT_LABEL}={label_value(owner.name)}"
        # Live children of the watched kinds by (kind, namespace, name) ({}: deleted), kept by Kopf's watches.
        self.watched: Mapping[tuple[str, str, str], Obj] = watched if watched is not None else {}
        self._rendered: tuple[ModelDeploymentSpec, str, list[Obj]] | None = None
        self._applied: dict[Key, tuple[Obj, Obj]] = {}  # child -> (our fields last applied, the API's answer)
        # Optional kinds this cluster does not serve: not tried again until the operator restarts.
        self._unserved: set[str] = set()
        self.pods: list[Obj] = []
        self.pods_every_s = pods_every_s
        self._pods_at = -pods_every_s
        self._pods_when_ready: bool | None = None  # whether all was ready at the last pods list
        self.reset(status)

    # -- desired state -----------------------------------------------------------------------------------------
    def reset(self, status: ModelDeploymentStatus) -> None:
        """Forget what unsaved actions did: desired state as the stored status says."""
        self.routing, self.running = desired_from(status)
        # A status that names no version has nothing to orphan (a new resource): no lists of every child kind.
        self.prune_needed = bool(self.running)

    def set_spec(self, spec: ModelDeploymentSpec, generation: int | None) -> None:
        self.spec, self.renderer, self.generation = spec, renderer_for(spec.backend), generation
        self.prune_needed = True

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

    async def sync(self) -> dict[Key, Obj]:
        """Apply every desired child (writing only differences); returns the live children by (kind, name)."""
        if self.routing.stable is None:
            return {}
        await self.admin_secret.ensure()  # before the pods that mount it, so they start with the token
        wanted = self.children()
        live: dict[Key, Obj] = {}
        for child in wanted:
            key: Key = (child["kind"], child["metadata"]["name"])
            mine = our_fields(child)
            known = self._current(key, mine)
            if known is not None:
                live[key] = known
                continue
            if child["kind"] in self._unserved:
                continue
            try:
                got = await self._apply(key, child, mine)
            except ApiError as exc:
                if exc.type_missing and child["kind"] in OPTIONAL_KINDS:
                    # Monitoring is an add-on: without prometheus-operator's CRDs the model still serves.
                    log.warning("%s %s not written: %s is not served here", child["kind"], key[1], child["apiVersion"])
                    self._unserved.add(child["kind"])
                    continue
                if exc.type_missing:
                    raise BadInput(
                        BACKEND_AVAILABLE,
                        "BackendNotInstalled",
                        f"spec.backend={self.spec.backend.value} needs the {child['kind']} API "
                        f"({child['apiVersion']}), which this cluster does not serve: install its CRD "
                        f"({exc.message})",
                    ) from exc
                raise
            self._applied[key] = (mine, got)
            live[key] = got
        self.operator_conditions[BACKEND_AVAILABLE] = (
            True,
            "BackendInstalled",
            f"the {self.spec.backend.value} backend's APIs are served",
        )
        if self.prune_needed:
            await self._prune({(c["kind"], c["metadata"]["name"]) for c in wanted})
            self.prune_needed = False
        return live

    async def _apply(self, key: Key, child: Obj, mine: Obj) -> Obj:
        """Write `child` where needed, reading it first only when the watches do not hold it (a kind not watched)."""
        seen = self.watched.get((key[0], self.owner.namespace, key[1]))
        if seen:
            if contains(seen, mine):
                return seen
            return await self.client.patch(child["apiVersion"], child["kind"], self.owner.namespace, key[1], mine)
        if seen is None and key[0] not in WATCHED_KINDS:
            return (await self.client.ensure(child))[1]
        try:  # watched and absent (or deleted): create straight away; 409 means the watch has not caught up
            return await self.client.create(child)
        except ApiError as exc:
            if exc.code != 409:
                raise
        return (await self.client.ensure(child))[1]

    def _current(self, key: Key, mine: Obj) -> Obj | None:
        """The live child when nothing needs writing, from memory; None when it must be applied (read and written).

        Applied before with these very fields and, if its kind is watched, not changed or deleted by anyone since.
        """
        applied = self._applied.get(key)
        if applied is None or applied[0] != mine:
            return None
        seen = self.watched.get((key[0], self.owner.namespace, key[1]))
        if seen is None:
            return applied[1]  # a kind not watched, or our write not seen yet
        if not seen:
            return None  # deleted by someone: create it again
        same = _version(seen) == _version(applied[1])
        return seen if same or contains(seen, mine) else None

    async def _prune(self, keep: set[Key]) -> None:
        for api_version, kind in CHILD_KINDS:
            try:
                items = await self.client.list(api_version, kind, self.owner.namespace, self.selector)
            except ApiError as exc:
                if exc.type_missing:
                    continue
                raise
            for item in items:
                meta = item["metadata"]
                owned = any(ref.get("uid") == self.owner.uid for ref in meta.get("ownerReferences", []))
                if owned and (kind, meta["name"]) not in keep:
                    log.info("deleting %s/%s: no longer desired", kind, meta["name"])
                    await self.client.delete(api_version, kind, self.owner.namespace, meta["name"])

    # -- Platform ----------------------------------------------------------------------------------------------
    async def readiness(self) -> Readiness:
        live = await self.sync()
        r = self.routing
        if r.stable is None:
            return Readiness(stable=False, canary=False)
        stable, canary = self._ready(r, live)
        all_ready = stable.ready and (canary is None or canary.ready)
        # Pods matter only for the GPU check of a version that is not ready (and the ready count): list them then,
        # at most every pods_every_s (every tick while a version is short of GPUs, so the condition names the
        # pod's own reason), and once more when all became ready.
        age = time.monotonic() - self._pods_at
        starved = any(v is not None and v.insufficient_gpu for v in (stable, canary))
        if all_ready != self._pods_when_ready or (not all_ready and (age >= self.pods_every_s or starved)):
            self.pods = await self.client.list("v1", "Pod", self.owner.namespace, self.selector)
            self._pods_at, self._pods_when_ready = time.monotonic(), all_ready
            stable, canary = self._ready(r, live)
        self._gpu_condition(r, stable, canary)
        if r.canary is not None and canary is not None and not canary.ready:
            self.canary_not_ready = f"spec.model.uri {r.canary.uri}: {canary.reason or 'not ready'}"
        ready_pods = sum(1 for p in self.pods if _pod_ready(p))
        self.ready_text = f"{ready_pods}/{len(self.pods)}"
        return Readiness(stable=stable.ready, canary=canary is not None and canary.ready)

    def _ready(self, r: Routing, live: dict[Key, Obj]) -> tuple[Ready, Ready | None]:
        assert r.stable is not None
        stable = self.renderer.ready(self.owner, self.spec, r.stable.version, live, self.pods)
        canary = self.renderer.ready(self.owner, self.spec, r.canary.version, live, self.pods) if r.canary else None
        return stable, canary

    def _gpu_condition(self, r: Routing, stable: Ready, canary: Ready | None) -> None:
        short = [
            f"{role} {ref.version}: {ready.reason}"
            for role, ref, ready in (("stable", r.stable, stable), ("canary", r.canary, canary))
            if ref is not None and ready is not None and ready.insufficient_gpu
        ]
        if short:
            message = f"not enough GPUs (spec.resources.gpu={self.spec.resources.gpu}): " + "; ".join(short)
            if canary is not None and canary.insufficient_gpu:
                message += "; the canary keeps 0% of traffic and stable keeps its capacity"
            self.operator_conditions[INSUFFICIENT_GPU] = (True, "Unschedulable", message)
        elif INSUFFICIENT_GPU in self.operator_conditions or self.spec.resources.gpu:
            self.operator_conditions[INSUFFICIENT_GPU] = (False, "Scheduled", "every workload could be placed")

    async def carry_out(self, action: Action) -> None:
        r = self.routing
        if isinstance(action, EmitEvent):
            message = action.message
            if action.reason == "ProgressDeadlineExceeded" and self.canary_not_ready:
                message += f" ({self.canary_not_ready})"
            await events.emit(self.client, self.owner, action.type, action.reason, message)
            return
        if isinstance(action, DeployVersion):
            await self._check_uri(action.model)
            if action.role != STABLE:
                self.canary_not_ready = ""
            if all(v.version != action.model.version for v in self.running):
                self.running.append(action.model)
            else:
                self.running = [action.model if v.version == action.model.version else v for v in self.running]
        r.apply(action)
        if isinstance(action, ScaleDown):
            keep = r.stable.version if r.stable is not None else None
            self.running = [v for v in self.running if v.version != action.version or v.version == keep]
            self.prune_needed = True
        await self.sync()

    async def _check_uri(self, model: VersionRef) -> None:
        """An http(s) model URI must answer before its version is deployed; the condition names spec.model.uri."""
        if not self.check_uris or not model.uri.startswith(("http://", "https://")):
            return
        problem = await uri_problem(model.uri)
        if problem is not None:
            raise BadInput(
                MODEL_REACHABLE, "ModelUnreachable", f"spec.model.uri {model.uri} (version {model.version}): {problem}"
            )
        self.operator_conditions[MODEL_REACHABLE] = (True, "Reachable", f"spec.model.uri {model.uri} answers")

    async def save(self, status: ModelDeploymentStatus) -> None:
        """Add the operator's conditions and ready count to `status` (in place: the loop keeps them) and write it."""
        status.ready = self.ready_text
        for type_, (value, reason, message) in self.operator_conditions.items():
            put_condition(status, type_, value, reason, message, generation=self.generation)
        await self.writer.write(status)

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
                    self.client, self.owner, "Warning", "CommandIgnored", f"annotation {COMMAND_ANNOTATION}: {exc}"
                )
            return None


def _version(obj: Obj) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return None if rv is None else str(rv)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


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
