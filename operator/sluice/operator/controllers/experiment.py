"""One Experiment's life in the operator: read its live body, tick its ExperimentLoop, report bad input, back off.

The controller never writes the target's children. It hands the arms to the target ModelDeployment through the
annotation `sluice.dev/experiment-arms` (arms, weights, salt, header, metric); the ModelDeployment's controller
renders them into its own RayService / Triton router config, and holds any spec change of the target while the
annotation is there. Ending removes the annotation (the target's stable version serves everything again);
`promoteWinner` first sets the target's spec.model to the winner, which the ModelDeployment then rolls out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sluice.api.base import API_VERSION, parse_duration
from sluice.api.experiment import ExperimentPhase, ExperimentSpec, ExperimentStatus
from sluice.api.model_deployment import ModelDeploymentSpec, ProviderSpec
from sluice.api.status import Phase, VersionRef
from sluice.engine.experiment import ArmHealth, ExperimentLoop, TargetView
from sluice.engine.routing import ARMS_ANNOTATION, ExperimentArms
from sluice.experiment.actions import Action, DeployArms, EmitEvent, EndArms, PromoteVariant, SetWeights
from sluice.experiment.core import TERMINAL
from sluice.experiment.observations import ExperimentCommand
from sluice.operator.context import OperatorContext
from sluice.operator.controllers.modeldeployment import Stopped, plain, spec_problem
from sluice.operator.kube import Obj
from sluice.operator.platform import events
from sluice.operator.render import Owner, renderer_for
from sluice.providers.base import MetricProvider
from sluice.providers.factory import create_provider

log = logging.getLogger(__name__)

KIND = "Experiment"
TARGET_KIND = "ModelDeployment"
COMMAND_ANNOTATION = "sluice.dev/command"  # `stop:NONCE` / `conclude:NONCE` (ExperimentCommand)
ROLLING = frozenset({Phase.INITIALIZING, Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})


class KubeExperimentPlatform:
    """Carries an experiment's actions out on its target ModelDeployment; writes the Experiment's status."""

    def __init__(self, ctx: OperatorContext, owner: Owner, spec: ExperimentSpec) -> None:
        self.ctx, self.owner, self.spec = ctx, owner, spec
        self.body: Obj = {}  # the live Experiment, refreshed by the daemon before each tick
        self.arms: ExperimentArms | None = None
        self.running = False  # the arms are deployed: their readiness is judged (set by the daemon each tick)
        self.health = ArmHealth(0.0)
        self._last_status: Obj = {}
        self.event_keys = events.DecisionKeys()

    def restore(self, status: ExperimentStatus) -> None:
        """The status as stored (after a restart): nothing to write again, Events named after it."""
        self._last_status = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.event_keys.saved_as(status.digest())

    async def _target(self) -> Obj | None:
        return await self.ctx.client.get(API_VERSION, TARGET_KIND, self.owner.namespace, self.spec.target.name)

    async def target(self) -> TargetView:
        md = await self._target()
        annotations = (self.body.get("metadata") or {}).get("annotations") or {}
        command = ExperimentCommand.parse(annotations.get(COMMAND_ANNOTATION, ""))
        if md is None:
            return TargetView(exists=False, command=command)
        status = md.get("status") or {}
        rollout = None
        phase = status.get("phase")
        if phase in {p.value for p in ROLLING}:
            canary = (status.get("canary") or {}).get("version", "?")
            rollout = f"ModelDeployment {self.spec.target.name} is rolling out {canary} (phase {phase})"
        failed = self._failed_arms(md) if self.running else {}
        return TargetView(exists=True, rollout=rollout, command=command, failed_arms=failed)

    def _failed_arms(self, md: Obj) -> dict[str, str]:
        """Arms whose version the target's workloads cannot serve, read like the target's own readiness: from its
        live children as the watches keep them (no request), by its renderer's `ready()`."""
        try:
            spec = ModelDeploymentSpec.model_validate(md.get("spec") or {})
        except ValidationError:
            return {}  # the target's own controller reports its bad spec
        meta, ns = md.get("metadata") or {}, self.owner.namespace
        owner = Owner(name=str(meta.get("name")), namespace=ns, uid=str(meta.get("uid", "")), kind=TARGET_KIND)
        live = {(kind, name): obj for (kind, n, name), obj in self.ctx.children.items() if n == ns and obj}
        renderer = renderer_for(spec.backend)
        self.health.deadline_s = parse_duration(spec.analysis.progress_deadline)
        now, out = time.monotonic(), {}
        for v in self.spec.variants:
            ready = renderer.ready(owner, spec, v.model.version, live, ())
            why = self.health.judge(v.name, ready.ready, ready.reason, ready.failed, now)
            if why is not None:
                out[v.name] = f"model {v.model.uri} (version {v.model.version}): {why}"
        return out

    async def _annotate(self, value: str | None) -> None:
        patch = {"metadata": {"annotations": {ARMS_ANNOTATION: value}}}
        await self.ctx.client.patch(API_VERSION, TARGET_KIND, self.owner.namespace, self.spec.target.name, patch)

    async def carry_out(self, action: Action) -> None:
        metric = self.spec.primary_metric
        if isinstance(action, EmitEvent):
            key = "experiment/" + self.event_keys.next(action.reason)
            await events.emit(self.ctx.client, self.owner, action.type, action.reason, action.message, key=key)
        elif isinstance(action, DeployArms):
            arms = tuple((a.name, a.model, a.weight) for a in action.arms)
            self.arms = ExperimentArms(
                self.owner.name, arms, action.header, action.salt, metric.name, metric.kind.value
            )
            await self._annotate(self.arms.to_json())
        elif isinstance(action, SetWeights):
            current = self.arms or self._stored_arms()
            if current is not None:
                self.arms = current.with_weights(dict(action.weights))
                await self._annotate(self.arms.to_json())
        elif isinstance(action, PromoteVariant):
            model = next(v.model for v in self.spec.variants if v.name == action.name)
            patch = {"spec": {"model": model.model_dump(mode="json", by_alias=True, exclude_none=True)}}
            await self.ctx.client.patch(API_VERSION, TARGET_KIND, self.owner.namespace, self.spec.target.name, patch)
        elif isinstance(action, EndArms):
            self.arms = None
            if await self._target() is not None:
                await self._annotate(None)

    def _stored_arms(self) -> ExperimentArms | None:
        """After a restart: the arms from the experiment's own status (weights) and spec."""
        status = self.body.get("status") or {}
        salt = status.get("salt")
        if not salt:
            return None
        weights = {v["name"]: v.get("weight", 0) for v in status.get("variants", [])}
        arms = tuple(
            (
                v.name,
                VersionRef(version=v.model.version, uri=v.model.uri, sha256=v.model.sha256),
                weights.get(v.name, v.weight),
            )
            for v in self.spec.variants
        )
        metric = self.spec.primary_metric
        return ExperimentArms(self.owner.name, arms, self.spec.assignment.header, salt, metric.name, metric.kind.value)

    async def save(self, status: ExperimentStatus) -> None:
        new = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new != self._last_status:
            patch = {"status": new}
            await self.ctx.client.patch_status(API_VERSION, KIND, self.owner.namespace, self.owner.name, patch)
            self._last_status = new
        self.event_keys.saved_as(status.digest())


class ExperimentDaemon:
    def __init__(self, ctx: OperatorContext, name: str, namespace: str, uid: str) -> None:
        self.ctx = ctx
        self.owner = Owner(name=name, namespace=namespace, uid=uid, kind=KIND)
        self.loop: ExperimentLoop | None = None
        self.platform: KubeExperimentPlatform | None = None
        self.generation: int | None = None
        self._reported = ""

    async def run(self, stopped: Stopped, live: Mapping[str, Any]) -> None:
        """Tick until the Experiment is deleted or the operator stops; bad input is reported and retried."""
        backoff = self.ctx.poll_s
        try:
            while not stopped:
                body = plain(live)
                delay = self.ctx.poll_s
                try:
                    await self.tick(body)
                    backoff = self.ctx.poll_s
                except _BadSpec as bad:
                    await self._report(str(bad), body["metadata"].get("generation"))
                    delay, backoff = backoff, min(backoff * 2, self.ctx.max_backoff_s)
                except Exception:
                    log.exception("experiment %s/%s: tick failed", self.owner.namespace, self.owner.name)
                    delay, backoff = backoff, min(backoff * 2, self.ctx.max_backoff_s)
                await stopped.wait(delay)
        finally:
            if self.loop is not None:
                await self.loop.provider.close()

    async def tick(self, body: Obj) -> None:
        generation = body["metadata"].get("generation")
        if self.loop is None or generation != self.generation:
            await self._build(body, generation)
        assert self.loop is not None
        assert self.platform is not None
        self.platform.body = body
        self.platform.running = self.loop.status.phase is ExperimentPhase.RUNNING
        if self.loop.status.phase in TERMINAL:
            return
        if self.loop.status.phase is ExperimentPhase.PENDING:  # the target may have appeared or changed
            old = self.loop.provider
            self.loop.provider = await self._provider(self.loop.spec)
            await old.close()
        self.platform.event_keys.begin()
        await self.loop.tick()

    async def _build(self, body: Obj, generation: int | None) -> None:
        try:
            spec = ExperimentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            raise _BadSpec(spec_problem(exc)) from None
        if self.loop is not None:  # a new generation: the loop's own status is newer than the body's
            status = self.loop.status
            await self.loop.provider.close()
        else:
            try:
                status = ExperimentStatus.model_validate(body.get("status") or {})
            except ValidationError:
                status = ExperimentStatus()
        provider = await self._provider(spec)
        self.platform = KubeExperimentPlatform(self.ctx, self.owner, spec)
        self.platform.restore(status)
        self.loop = ExperimentLoop(
            spec,
            self.platform,
            provider,
            name=self.owner.name,
            uid=self.owner.uid,
            namespace=self.owner.namespace,
            status=status,
            generation=generation or 1,
            poll_s=self.ctx.poll_s,
        )
        self.generation = generation

    async def _provider(self, spec: ExperimentSpec) -> MetricProvider:
        """The target's own metric provider (its analysis.provider, on its router); the builtin provider on a URL
        that answers nothing while the target does not exist (the experiment waits in Pending then)."""
        md = await self.ctx.client.get(API_VERSION, TARGET_KIND, self.owner.namespace, spec.target.name)
        target = None
        if md is not None:
            try:
                target = ModelDeploymentSpec.model_validate(md.get("spec") or {})
            except ValidationError:
                target = None  # the target's own controller reports its bad spec
        if target is None:
            return create_provider(
                ProviderSpec(), metrics_url="http://127.0.0.1:9/none", client=self.ctx.provider_http()
            )
        url = self.ctx.router_metrics_url(target.backend, spec.target.name, self.owner.namespace)
        return create_provider(target.analysis.provider, metrics_url=url, client=self.ctx.provider_http())

    async def _report(self, message: str, generation: int | None) -> None:
        log.warning("experiment %s/%s: %s", self.owner.namespace, self.owner.name, message)
        if message != self._reported:
            self._reported = message
            key = f"invalid-spec/{generation}/{message}"  # once per message, across restarts
            await events.emit(self.ctx.client, self.owner, "Warning", "InvalidSpec", message, key=key)


class _BadSpec(Exception):
    """The Experiment's spec cannot be parsed; the message names the field."""


async def release_target(ctx: OperatorContext, name: str, namespace: str, body: Mapping[str, Any]) -> None:
    """On deletion: if the target serves this experiment's arms, take them away (its stable version serves all)."""
    target = ((body.get("spec") or {}).get("target") or {}).get("name")
    if not target:
        return
    md = await ctx.client.get(API_VERSION, TARGET_KIND, namespace, target)
    text = (((md or {}).get("metadata") or {}).get("annotations") or {}).get(ARMS_ANNOTATION)
    if not text:
        return
    try:
        owner = ExperimentArms.from_json(text).experiment
    except ValueError:
        owner = name
    if owner == name:
        patch = {"metadata": {"annotations": {ARMS_ANNOTATION: None}}}
        await ctx.client.patch(API_VERSION, TARGET_KIND, namespace, target, patch)
