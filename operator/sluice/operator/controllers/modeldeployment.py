"""One ModelDeployment's life in the operator: read its live body, tick its rollout loop, report bad input, back off.

Kopf runs one of these per ModelDeployment (handlers/modeldeployment.py). Everything it decides is saved in the
status before the next tick, so a restart continues where it stopped. Input that cannot be carried out (a spec
pydantic refuses, a backend CRD that is missing, a model URI that does not answer) becomes a False condition and
one Warning Event naming the field; the daemon then retries with backoff (1 s doubling to 30 s) and at once when
the spec changes. It never exits on bad input, so Kopf never crash-loops it, and the stable version keeps serving:
nothing is written to the children until the input is good again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from sluice.api.base import COMMAND_ANNOTATION
from sluice.api.loading import field_errors
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus
from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.routing import ARMS_ANNOTATION, ExperimentArms
from sluice.operator.context import OperatorContext
from sluice.operator.kube import Obj
from sluice.operator.platform import (
    SPEC_VALID,
    BadInput,
    KubePlatform,
    StatusWriter,
    events,
    put_condition,
)
from sluice.operator.render import Owner
from sluice.providers.base import MetricProvider
from sluice.providers.factory import create_provider

log = logging.getLogger(__name__)

# False while an Experiment's arms hold a spec change back: a rollout would change what the control measures.
ROLLOUT_ALLOWED = "RolloutAllowed"


class Stopped(Protocol):
    """Kopf's daemon stop flag as far as the daemon uses it (truthy once stopping; awaitable wait)."""

    def __bool__(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> Any: ...


def spec_problem(error: ValidationError) -> str:
    """pydantic's errors as `spec.<path>: message`, cross-field rules included, the path written as in the YAML."""
    parts = []
    for e in field_errors(error):
        where = "spec" + (e.path if e.path.startswith((".", "[")) or not e.path else f".{e.path}")
        parts.append(f"{where}: {e.message}")
    return "; ".join(parts)


class ModelDeploymentDaemon:
    def __init__(self, ctx: OperatorContext, name: str, namespace: str, uid: str) -> None:
        self.ctx, self.owner = ctx, Owner(name=name, namespace=namespace, uid=uid)
        self.writer = StatusWriter(ctx.client, self.owner)
        self.loop: RolloutLoop | None = None
        self.platform: KubePlatform | None = None
        self.generation: int | None = None
        self.status = ModelDeploymentStatus()  # until a loop exists (the spec never parsed yet)
        self._reported: dict[str, str] = {}  # condition type -> message of the Event already posted
        self._errors_seen = 0
        self.body_generation: int | None = None  # metadata.generation of the last body read
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def key(self) -> str:
        return f"{self.owner.namespace}/{self.owner.name}"

    async def run(self, stopped: Stopped, live: Mapping[str, Any]) -> None:
        """Tick until Kopf stops the daemon (deletion or shutdown).

        `live` is Kopf's view of the ModelDeployment, kept current by its watch stream; the daemon never GETs it.
        """
        poll, backoff = self.ctx.poll_s, self.ctx.poll_s
        wake = self.ctx.wakers.setdefault(self.owner.uid, asyncio.Event())
        try:
            while not stopped:
                wake.clear()
                body = plain(live)
                if body["metadata"].get("deletionTimestamp"):
                    return  # the children go with it (ownerReferences)
                delay = poll
                try:
                    await self.tick(body)
                    backoff = poll
                    self.ctx.metrics.reconciles.labels(outcome="ok").inc()
                except BadInput as bad:
                    await self._report_safely(bad)
                    delay, backoff = backoff, min(backoff * 2, self.ctx.max_backoff_s)
                    self.ctx.metrics.reconciles.labels(outcome="bad-input").inc()
                except Exception:
                    log.exception("%s: reconcile failed; retrying in %.0fs", self.key, backoff)
                    delay, backoff = backoff, min(backoff * 2, self.ctx.max_backoff_s)
                    self.ctx.metrics.reconciles.labels(outcome="error").inc()
                self._count_api_errors()
                await self._wait(stopped, delay, body, live, wake)
        finally:
            self.ctx.wakers.pop(self.owner.uid, None)
            self.ctx.metrics.phase(self.key, None)
            if self.loop is not None:
                await self.loop.provider.close()

    async def _wait(
        self, stopped: Stopped, delay: float, body: Obj, live: Mapping[str, Any], wake: asyncio.Event
    ) -> None:
        """Sleep `delay`; a change of a child wakes a healthy daemon at once, a spec or command change any daemon."""
        deadline = time.monotonic() + delay
        seen = _watched(body)
        backing_off = delay > self.ctx.poll_s
        while not stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(left, self.ctx.poll_s))
            except TimeoutError:
                continue
            wake.clear()
            if not backing_off or _watched(live) != seen:
                return

    def _count_api_errors(self) -> None:
        errors = self.ctx.client.errors
        if errors > self._errors_seen:
            self.ctx.metrics.api_errors.inc(errors - self._errors_seen)
            self._errors_seen = errors

    # -- one round ---------------------------------------------------------------------------------------------
    async def tick(self, body: Obj) -> None:
        generation = self.body_generation = body["metadata"].get("generation")
        if not self.writer.last and body.get("status"):
            self.writer.last = body["status"]
        held_by = _experiment(body)
        if self.loop is not None and generation != self.generation and held_by is not None:
            raise BadInput(
                ROLLOUT_ALLOWED,
                "ExperimentRunning",
                f"spec change held: Experiment {held_by} runs on this ModelDeployment; the new spec is carried out "
                "when it ends",
            )
        if self.loop is None or generation != self.generation:
            self._new_spec(body, generation)
            if self.platform is not None and ROLLOUT_ALLOWED in self.platform.operator_conditions:
                self.platform.operator_conditions[ROLLOUT_ALLOWED] = (True, "NoExperiment", "no experiment holds it")
        assert self.loop is not None
        assert self.platform is not None
        self.platform.body = body
        try:
            await self.loop.tick()
        except Exception:
            self.platform.reset(self.loop.status)  # actions of the failed tick are redone from the saved status
            raise
        self.ctx.metrics.phase(self.key, self.loop.status.phase.value)

    def _new_spec(self, body: Obj, generation: int | None) -> None:
        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            self.generation = None  # parse again next round (the same generation until the user edits it)
            raise BadInput(SPEC_VALID, "InvalidSpec", spec_problem(exc)) from None
        url = self.ctx.router_metrics_url(spec.backend, self.owner.name, self.owner.namespace)
        try:
            provider = create_provider(spec.analysis.provider, metrics_url=url, client=self.ctx.provider_http())
        except ValueError as exc:
            raise BadInput(SPEC_VALID, "InvalidProvider", f"spec.analysis.provider: {exc}") from None
        if self.loop is None or self.platform is None:
            self.loop, self.platform = self._build(spec, provider, body, generation)
        else:
            old: MetricProvider = self.loop.provider
            self.loop.provider = provider
            task = asyncio.get_running_loop().create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            self.loop.set_spec(spec, generation or 1)
            self.platform.set_spec(spec, generation)
        self.generation = generation
        self.platform.operator_conditions[SPEC_VALID] = (True, "Valid", "the spec was accepted")

    def _build(
        self, spec: ModelDeploymentSpec, provider: MetricProvider, body: Obj, generation: int | None
    ) -> tuple[RolloutLoop, KubePlatform]:
        try:
            status = ModelDeploymentStatus.model_validate(body.get("status") or {})
        except ValidationError as exc:
            log.warning("%s: stored status unreadable, starting afresh: %s", self.key, exc)
            status = self.status
        platform = KubePlatform(
            self.ctx.client,
            self.owner,
            spec,
            self.ctx.config,
            status=status,
            writer=self.writer,
            generation=generation,
            watched=self.ctx.children,
            pods_every_s=self.ctx.pods_every_s,
        )
        loop = RolloutLoop(
            spec,
            platform,
            provider,
            name=self.owner.name,
            namespace=self.owner.namespace,
            status=status,
            generation=generation or 1,
            poll_s=self.ctx.poll_s,
        )
        return loop, platform

    async def _report_safely(self, bad: BadInput) -> None:
        try:
            await self.report(bad)
        except Exception:  # the API refusing the report must not end the daemon (Kopf would retry it later)
            log.exception("%s: could not report %s", self.key, bad.condition)

    async def report(self, bad: BadInput) -> None:
        """The condition on the status (written if it changed) and one Warning Event per distinct message."""
        log.warning("%s: %s", self.key, bad.message)
        generation = self.body_generation
        if self.platform is not None:
            self.platform.operator_conditions[bad.condition] = (False, bad.reason, bad.message)
        status = self.loop.status if self.loop is not None else self.status
        put_condition(status, bad.condition, False, bad.reason, bad.message, generation=generation)
        if self._reported.get(bad.condition) != bad.message:
            self._reported[bad.condition] = bad.message
            key = f"bad-input/{generation}/{bad.condition}/{bad.message}"  # once per message, across restarts
            await events.emit(self.ctx.client, self.owner, "Warning", bad.reason, bad.message, key=key)
        await self.writer.write(status)


def plain(value: Any) -> Any:
    """A plain-dict deep copy of Kopf's live body (a tick must not see it change half-way)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _watched(body: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    meta = body.get("metadata", {})
    annotations = meta.get("annotations") or {}
    return meta.get("generation"), annotations.get(COMMAND_ANNOTATION), annotations.get(ARMS_ANNOTATION)


def _experiment(body: Mapping[str, Any]) -> str | None:
    """The Experiment whose arms this ModelDeployment serves, if any (from its arms annotation)."""
    text = ((body.get("metadata") or {}).get("annotations") or {}).get(ARMS_ANNOTATION)
    if not text:
        return None
    try:
        return ExperimentArms.from_json(text).experiment
    except ValueError:
        return "(unreadable annotation)"
