"""One DriftPolicy's life in the operator: load its reference, hand its bins to the target, run the DriftLoop.

Kopf runs one of these per DriftPolicy (handlers/driftpolicy.py). Each round it reads the target ModelDeployment,
loads the reference profile (file:///, http(s)://, s3:// or gs://: engine/reference.py, in a thread, with each store
client's default credentials), checks the watched features against the profile and against the model's inputs (the
router's `GET /v2/models/NAME`), and only then writes the policy's bins on the target as the annotation
`drift.sluice.dev/<policy>` (driftprofiles.py), which the target's own controller renders into its router config.
The DriftLoop then reads the router's counters through the target's provider and decides.

Bad input (a spec that does not parse, a missing target, a reference that cannot be read or does not fit, a
feature the model does not have) reaches the loop as a `Problem`: the core sets `Evaluated` False naming the field
and posts one Event, takes no action, and nothing is written to the target. The round repeats every poll, so a
target that appears later or a fixed reference is picked up without a restart.

Actions: Events on the policy; `rollback` writes the target's own undo command (`sluice.dev/command:
undo:<time>-<nonce>`, as `kubectl sluice undo` does) and posts an Event on the target; `retrain` creates a batch/v1
Job from `jobTemplate`, owned by the policy, with the SLUICE_* env vars. When that Job succeeds, its pod's
termination message (`{"uri": ..., "version": ..., "sha256": ...}`, written by the trainer to
/dev/termination-log) names the new model; the controller sets the target's spec.model to it, so the target rolls
the new version out as a canary under its own analysis. The `Retrained` condition records the Job's outcome.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from pydantic import ValidationError

from sluice.api.base import API_VERSION, get_condition, set_condition
from sluice.api.drift_policy import DriftPolicySpec, DriftPolicyStatus
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.drift.actions import Action, CreateRetrainJob, EmitEvent, RollbackTarget
from sluice.drift.core import check_reference, step
from sluice.drift.observations import Observations, Problem
from sluice.drift.profile import PREDICTION, Profile
from sluice.engine.driftpolicy import DriftLoop, router_profile
from sluice.engine.reference import read_reference
from sluice.operator.context import OperatorContext
from sluice.operator.controllers.driftcapture import ReferenceCapture
from sluice.operator.controllers.modeldeployment import Stopped, plain, spec_problem
from sluice.operator.driftprofiles import annotation_key, encode
from sluice.operator.kube import ApiError, Obj
from sluice.operator.platform import events
from sluice.operator.render import Owner
from sluice.operator.render.meta import label_value, owner_reference
from sluice.providers.base import FeatureCounts
from sluice.providers.factory import create_provider

log = logging.getLogger(__name__)

KIND = "DriftPolicy"
TARGET_KIND = "ModelDeployment"
COMMAND_ANNOTATION = "sluice.dev/command"  # the target's manual-command annotation (kubectl sluice undo)
POLICY_LABEL = "sluice.dev/drift-policy"  # on retrain Jobs
JOB_NAME_LABEL = "job-name"  # set by the Job controller on the Job's pods
RETRAINED = "Retrained"  # condition: the last retrain Job's outcome; its message starts with "Job <name>:"
_FINAL = frozenset({"NewVersion", "JobFailed", "NoModelReported", "JobMissing", "InvalidModel"})
RETRY_S = 10.0  # a reference that could not be read is read again after this long (or at once on a new generation)


def undo_command(policy: str, decision: str) -> str:
    """The target's undo command for one rollback decision: `undo:drift-<digest>`, the same when the decision is
    taken again after a restart (the target carries a command value out once, so it rolls back once)."""
    digest = hashlib.sha256(f"{policy}\0{decision}".encode()).hexdigest()[:16]
    return f"undo:drift-{digest}"


def inputs_problem(spec: DriftPolicySpec, metadata: Obj) -> Problem | None:
    """The first watched feature the model's inputs (its KServe v2 metadata) do not have, naming the field."""
    inputs = {str(t.get("name")): list(t.get("shape") or []) for t in metadata.get("inputs") or []}
    for i, feature in enumerate(spec.features):
        if feature.name == PREDICTION and feature.index is None:
            continue
        shape = inputs.get(feature.name)
        if shape is None:
            return Problem(
                "FeatureNotInModel",
                f"spec.features[{i}].name",
                f"{feature.name!r} is not an input of model {metadata.get('name')} (inputs: {', '.join(inputs)})",
            )
        columns = shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] >= 0 else None
        if feature.index is not None and columns is not None and feature.index >= columns:
            return Problem(
                "FeatureNotInModel",
                f"spec.features[{i}].index",
                f"input {feature.name!r} has {columns} columns (shape {shape}); index {feature.index} is past them",
            )
    return None


def retrain_job(owner: Owner, template: Mapping[str, Any], action: CreateRetrainJob) -> Obj:
    """The batch/v1 Job of `action`: the template's metadata and spec, owned by the policy, SLUICE_* env added."""
    meta = template.get("metadata") or {}
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    pod_spec = (spec.setdefault("template", {})).setdefault("spec", {})
    ours = [{"name": k, "value": v} for k, v in action.env]
    names = {e["name"] for e in ours}
    for container in pod_spec.get("containers") or []:
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + ours
    labels = {**(meta.get("labels") or {}), POLICY_LABEL: label_value(owner.name)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": action.name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def job_outcome(job: Obj) -> Literal["running", "succeeded", "failed"]:
    status = job.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "failed"
    return "succeeded" if (status.get("succeeded") or 0) >= 1 else "running"


def reported_model(pods: list[Obj]) -> tuple[dict[str, str] | None, str]:
    """The model a succeeded Job's pod reported in its termination message, or why none could be read."""
    why = "no pod of the Job left a termination message"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            text = (((cs.get("state") or {}).get("terminated") or {}).get("message") or "").strip()
            if not text:
                continue
            try:
                body = json.loads(text)
            except ValueError:
                why = f"termination message of pod {pod['metadata']['name']} is not JSON: {text[:200]!r}"
                continue
            if isinstance(body, dict) and isinstance(body.get("uri"), str) and isinstance(body.get("version"), str):
                return {k: str(v) for k, v in body.items() if k in ("uri", "version", "sha256") and v}, ""
            why = f"termination message of pod {pod['metadata']['name']} needs string fields uri and version"
    return None, why


@dataclass
class _Target:
    body: Obj
    spec: ModelDeploymentSpec


class KubeDriftPlatform:
    """Carries a DriftPolicy's actions out on Kubernetes; writes its status when it changed; sets its gauges."""

    def __init__(self, ctx: OperatorContext, owner: Owner, spec: DriftPolicySpec) -> None:
        self.ctx, self.owner, self.spec = ctx, owner, spec
        self.target: Obj = {}  # the live target, refreshed by the daemon before each tick
        self.last: Obj = {}
        self.extra_conditions: dict[str, tuple[bool, str, str]] = {}  # operator-level conditions kept on save
        self.event_keys = events.DecisionKeys()

    def restore(self, status: DriftPolicyStatus) -> None:
        """The status as stored (after a restart): nothing to write again; decisions named after it."""
        self.last = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.event_keys.saved_as(status.digest())

    async def carry_out(self, action: Action) -> None:
        """Post, patch or create; each named after the decision, so one taken again after a restart repeats none."""
        if isinstance(action, EmitEvent):
            key = "drift/" + self.event_keys.next(action.reason)
            await events.emit(self.ctx.client, self.owner, action.type, action.reason, action.message, key=key)
        elif isinstance(action, RollbackTarget):
            value = undo_command(self.owner.name, self.event_keys.next("rollback"))
            patch = {"metadata": {"annotations": {COMMAND_ANNOTATION: value}}}
            await self.ctx.client.patch(API_VERSION, TARGET_KIND, self.owner.namespace, action.target, patch)
            await self.target_event(
                "DriftRollback", f"DriftPolicy {self.owner.name} asked for {value}: {action.reason}", key=value
            )
        elif isinstance(action, CreateRetrainJob):
            job = retrain_job(self.owner, self.spec.action.job_template or {}, action)
            try:
                await self.ctx.client.create(job)
            except ApiError as exc:
                if exc.code != 409:  # 409: made before a restart; the same name is the same Job
                    raise
            message = f"DriftPolicy {self.owner.name} started retrain Job {action.name}"
            await self.target_event("DriftRetrain", message, key=f"job/{action.name}")

    async def target_event(self, reason: str, message: str, *, key: str) -> None:
        """A Warning Event on the target, once per `key` (which names the decision or the Job)."""
        meta = self.target.get("metadata") or {}
        if meta.get("uid"):
            target = Owner(name=meta["name"], namespace=self.owner.namespace, uid=meta["uid"])
            await events.emit(self.ctx.client, target, "Warning", reason, message, key=f"{self.owner.name}/{key}")

    async def save(self, status: DriftPolicyStatus) -> None:
        now = datetime.now(UTC)
        for type_, (value, reason, message) in self.extra_conditions.items():
            status.conditions = set_condition(
                status.conditions,
                type_,
                value,
                reason=reason,
                message=message,
                now=now,
                generation=status.observed_generation,
            )
        new = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new != self.last:
            await self.ctx.client.patch_status(
                API_VERSION, KIND, self.owner.namespace, self.owner.name, {"status": new}
            )
            self.last = new
        self.event_keys.saved_as(status.digest())
        self.ctx.metrics.drift(self.owner.namespace, self.owner.name, {f.name: f.score for f in status.features})


class DriftPolicyDaemon:
    def __init__(self, ctx: OperatorContext, name: str, namespace: str, uid: str) -> None:
        self.ctx = ctx
        self.owner = Owner(name=name, namespace=namespace, uid=uid, kind=KIND)
        self.loop: DriftLoop | None = None
        self.platform: KubeDriftPlatform | None = None
        self.status = DriftPolicyStatus()
        self._built_for: tuple[Any, ...] | None = None
        # (uri, generation) -> the profile or the problem; re-read while it fails and on every new generation.
        self._reference: tuple[tuple[str, int], Profile | None, Problem | None] | None = None
        self._metadata: tuple[tuple[str, str], Obj] | None = None  # (url, model version) -> the model's metadata
        self._reference_read_at = -math.inf  # time.monotonic() of the last read (a failing one is retried slowly)
        self.capture: ReferenceCapture | None = None  # fromStableVersion: the captured reference (driftcapture.py)
        self._capturing: str | None = None  # while capturing: the progress, for the core

    async def run(self, stopped: Stopped, live: Mapping[str, Any]) -> None:
        """Tick every poll until Kopf stops the daemon; a failing tick is logged and retried with backoff."""
        backoff = self.ctx.poll_s
        try:
            while not stopped:
                delay = self.ctx.poll_s
                try:
                    await self.tick(plain(live))
                    backoff = self.ctx.poll_s
                except Exception:
                    log.exception("driftpolicy %s/%s: tick failed", self.owner.namespace, self.owner.name)
                    delay, backoff = backoff, min(backoff * 2, self.ctx.max_backoff_s)
                await stopped.wait(delay)
        finally:
            self.ctx.metrics.drift(self.owner.namespace, self.owner.name, None)
            if self.loop is not None:
                await _close(self.loop.source)

    async def tick(self, body: Obj) -> None:
        if body["metadata"].get("deletionTimestamp"):
            return
        generation = body["metadata"].get("generation") or 1
        if not self.status.conditions and body.get("status"):
            try:
                self.status = DriftPolicyStatus.model_validate(body["status"])
            except ValidationError:
                log.warning("driftpolicy %s: stored status unreadable, starting afresh", self.owner.name)
        try:
            spec = DriftPolicySpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            await self._stopped(None, generation, Problem("InvalidSpec", "spec", spec_problem(exc)))
            return
        target = await self._target(spec)
        if isinstance(target, Problem):
            await self._stopped(spec, generation, target)
            return
        profile, problem = await self._load(spec, target, generation)
        loop = await self._loop(spec, target, generation, profile)
        loop.problem = problem
        self._captured_status(spec, loop)
        self._platform(spec).event_keys.begin()
        await loop.tick()
        self.status = loop.status
        await self._follow_job(spec, target)

    # -- inputs ------------------------------------------------------------------------------------------------
    async def _target(self, spec: DriftPolicySpec) -> _Target | Problem:
        name = spec.target.name
        body = await self.ctx.client.get(API_VERSION, TARGET_KIND, self.owner.namespace, name)
        if body is None:
            message = (
                f"ModelDeployment {name} does not exist in namespace {self.owner.namespace} (retried until it does)"
            )
            return Problem("TargetNotFound", "spec.target.name", message)
        try:
            return _Target(body, ModelDeploymentSpec.model_validate(body.get("spec") or {}))
        except ValidationError:
            return Problem("TargetInvalid", "spec.target.name", f"ModelDeployment {name} has a spec it refuses itself")

    async def _load(
        self, spec: DriftPolicySpec, target: _Target, generation: int
    ) -> tuple[Profile | None, Problem | None]:
        """The reference (re-read while it failed), checked against the features and the model's inputs; on
        success, the policy's bins on the target."""
        reference = spec.reference
        if reference.from_stable_version or reference.uri is None:
            return await self._captured(spec, target)
        cached = self._reference
        retry = cached is not None and cached[2] is not None and time.monotonic() - self._reference_read_at >= RETRY_S
        if cached is None or cached[0] != (reference.uri, generation) or retry:
            self._reference_read_at = time.monotonic()
            profile, problem = await asyncio.to_thread(read_reference, reference.uri)
            self._reference = cached = ((reference.uri, generation), profile, problem)
        profile, problem = cached[1], cached[2]
        if profile is None:
            return None, problem
        problem = await self._inputs(spec, target)  # the model's own inputs first: the more basic mistake
        if problem is None:
            problem = check_reference(spec, profile, None)
        if problem is not None:
            return profile, problem
        await self._hand_bins(spec, profile, target)
        return profile, None

    async def _captured(self, spec: DriftPolicySpec, target: _Target) -> tuple[Profile | None, Problem | None]:
        """fromStableVersion: the captured profile (capturing it first), checked and handed to the target as bins."""
        if self.capture is None:

            async def emit(type_: Literal["Normal", "Warning"], reason: str, message: str, key: str) -> None:
                await events.emit(self.ctx.client, self.owner, type_, reason, message, key=key)

            self.capture = ReferenceCapture(
                self.ctx.client, self.owner, self.ctx.provider_http, emit, recheck_s=max(5.0, 30 * self.ctx.poll_s)
            )
            self.capture.restore(self.status.reference)
        base = self._metrics_url(target).removesuffix("/metrics")
        outcome = await self.capture.resolve(spec, target.body, base, lambda: self._inputs(spec, target))
        self._capturing = outcome.capturing
        profile = outcome.profile
        if profile is None:
            return None, outcome.problem
        problem = await self._inputs(spec, target) or check_reference(spec, profile, None)
        if problem is not None:
            return profile, problem
        await self._hand_bins(spec, profile, target)
        return profile, None

    def _captured_status(self, spec: DriftPolicySpec, loop: DriftLoop) -> None:
        """What the loop reports about a captured reference: the progress while capturing, status.reference."""
        if spec.reference.from_stable_version and self.capture is not None:
            loop.capturing = self._capturing
            loop.status.reference = self.capture.status
            loop.reference_uri = self.capture.uri
        else:
            loop.capturing = None
            loop.status.reference = None

    async def _inputs(self, spec: DriftPolicySpec, target: _Target) -> Problem | None:
        """The features against the model's inputs, read from the router once per URL and model version."""
        base = self._metrics_url(target).removesuffix("/metrics")
        url = f"{base}/v2/models/{target.spec.model.name}"
        key = (url, target.spec.model.version)
        if self._metadata is None or self._metadata[0] != key:
            try:
                response = await self.ctx.provider_http().get(url)
                response.raise_for_status()
                metadata = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                message = f"the model's inputs could not be read from the router ({url}): {exc or type(exc).__name__}"
                return Problem("RouterUnreachable", "spec.target.name", message)
            self._metadata = (key, metadata if isinstance(metadata, dict) else {})
        return inputs_problem(spec, self._metadata[1])

    async def _hand_bins(self, spec: DriftPolicySpec, profile: Profile, target: _Target) -> None:
        key, value = annotation_key(self.owner.name), encode(router_profile(self.owner.name, spec, profile))
        if ((target.body["metadata"].get("annotations") or {}).get(key)) != value:
            patch = {"metadata": {"annotations": {key: value}}}
            target.body = await self.ctx.client.patch(
                API_VERSION, TARGET_KIND, self.owner.namespace, spec.target.name, patch
            )

    def _metrics_url(self, target: _Target) -> str:
        return self.ctx.router_metrics_url(target.spec.backend, target.body["metadata"]["name"], self.owner.namespace)

    async def _loop(
        self, spec: DriftPolicySpec, target: _Target, generation: int, profile: Profile | None
    ) -> DriftLoop:
        """The DriftLoop for this spec, target and provider (rebuilt when one changes; the status carries over)."""
        provider_spec = target.spec.analysis.provider
        key = (generation, provider_spec.model_dump_json(), self._metrics_url(target), target.spec.model.name)
        platform = self._platform(spec)
        if self.loop is None or self._built_for != key:
            if self.loop is not None:
                self.status = self.loop.status
                await _close(self.loop.source)
            provider = create_provider(
                provider_spec, metrics_url=self._metrics_url(target), client=self.ctx.provider_http()
            )
            assert isinstance(provider, FeatureCounts)  # builtin and prometheus both read the drift counters
            self.loop = DriftLoop(
                spec,
                platform,
                provider,
                profile,
                name=self.owner.name,
                model=target.spec.model.name,
                reference_uri=spec.reference.uri or "",
                status=self.status,
                generation=generation,
                poll_s=self.ctx.poll_s,
            )
            self._built_for = key
        self.loop.use_profile(profile)
        platform.target = target.body
        return self.loop

    def _platform(self, spec: DriftPolicySpec) -> KubeDriftPlatform:
        """One platform for the daemon's life (it remembers the status last written and the extra conditions)."""
        if self.platform is None:
            self.platform = KubeDriftPlatform(self.ctx, self.owner, spec)
            self.platform.restore(self.status)
        self.platform.spec = spec
        return self.platform

    async def _stopped(self, spec: DriftPolicySpec | None, generation: int, problem: Problem) -> None:
        """Report a problem found before a loop can be built (spec or target): through the core, as the loop does."""
        if spec is None:  # the spec does not parse: any valid one serves step (which only reports the problem)
            spec = DriftPolicySpec.model_validate(
                {"target": {"name": "x"}, "reference": {"uri": "file:///x"}, "features": [{"name": "x"}]}
            )
        status = self.loop.status if self.loop is not None else self.status
        new, actions = step(spec, status, Observations(self.owner.name, generation, problem=problem), _now())
        platform = self._platform(spec)
        platform.event_keys.begin()
        for action in actions:
            await platform.carry_out(action)
        await platform.save(new)
        self.status = new
        if self.loop is not None:
            self.loop.status = new

    # -- retrain: the Job's outcome ---------------------------------------------------------------------------
    async def _follow_job(self, spec: DriftPolicySpec, target: _Target) -> None:
        """Once the last retrain Job finished: its reported model becomes the target's spec.model (a canary)."""
        assert self.loop is not None
        assert self.platform is not None
        job_name = self.loop.status.last_job
        if not job_name:
            return
        seen = get_condition(self.loop.status.conditions, RETRAINED)
        if seen is not None and seen.message.startswith(f"Job {job_name}:") and seen.reason in _FINAL:
            return
        ns = self.owner.namespace
        job = await self.ctx.client.get("batch/v1", "Job", ns, job_name)
        outcome = "missing" if job is None else job_outcome(job)
        if outcome == "running":
            await self._retrained(False, "JobRunning", f"Job {job_name}: running")
            return
        if outcome in ("missing", "failed"):
            reason = "JobMissing" if outcome == "missing" else "JobFailed"
            await self._retrained(
                False,
                reason,
                f"Job {job_name}: {'deleted' if job is None else 'failed'}; the target keeps its version",
                event="Warning",
            )
            return
        pods = await self.ctx.client.list("v1", "Pod", ns, f"{JOB_NAME_LABEL}={job_name}")
        model, why = reported_model(pods)
        if model is None:
            await self._retrained(False, "NoModelReported", f"Job {job_name}: succeeded but {why}", event="Warning")
            return
        new_model = {**target.spec.model.model_dump(mode="json", by_alias=True, exclude_none=True), **model}
        if "sha256" not in model:
            new_model.pop("sha256", None)
        try:
            ModelDeploymentSpec.model_validate({**target.body["spec"], "model": new_model})
        except ValidationError as exc:
            await self._retrained(
                False, "InvalidModel", f"Job {job_name}: reported {model}: {spec_problem(exc)}", event="Warning"
            )
            return
        patch = {"spec": {"model": {**new_model, "sha256": new_model.get("sha256")}}}
        await self.ctx.client.patch(API_VERSION, TARGET_KIND, ns, spec.target.name, patch)
        message = (
            f"Job {job_name}: reported version {model['version']} ({model['uri']}); spec.model of "
            f"{spec.target.name} set to it, which rolls it out as a canary under its own analysis"
        )
        await self.platform.target_event(
            "DriftRetrained", f"DriftPolicy {self.owner.name}: {message}", key=f"retrained/{job_name}"
        )
        await self._retrained(True, "NewVersion", message, event="Normal")

    async def _retrained(
        self, value: bool, reason: str, message: str, event: Literal["Normal", "Warning"] | None = None
    ) -> None:
        assert self.loop is not None
        assert self.platform is not None
        if self.platform.extra_conditions.get(RETRAINED) == (value, reason, message):
            return
        self.platform.extra_conditions[RETRAINED] = (value, reason, message)
        if event is not None:
            key = f"retrained/{reason}/{message}"  # once per Job and outcome, across restarts
            await events.emit(self.ctx.client, self.owner, event, f"Retrain{reason}", message, key=key)
        await self.platform.save(self.loop.status)


def _now() -> datetime:
    return datetime.now(UTC)


async def _close(source: object) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        await close()


async def release_target(ctx: OperatorContext, name: str, namespace: str, body: Mapping[str, Any]) -> None:
    """On deletion: take the policy's bins off its target (the router stops counting them)."""
    target = ((body.get("spec") or {}).get("target") or {}).get("name")
    if not target:
        return
    md = await ctx.client.get(API_VERSION, TARGET_KIND, namespace, target)
    key = annotation_key(name)
    if md is not None and key in ((md.get("metadata") or {}).get("annotations") or {}):
        await ctx.client.patch(API_VERSION, TARGET_KIND, namespace, target, {"metadata": {"annotations": {key: None}}})
