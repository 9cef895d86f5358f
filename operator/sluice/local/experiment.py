"""`sluice run` for an Experiment: its arms on the local data plane of the target ModelDeployment, synthetic
enrolled traffic, simulated outcomes posted back to the router, and the real core deciding.

The target's stable version serves first; `DeployArms` swaps the data plane's config for one weighted variant per
arm (the same translation the operator renders), `EndArms` puts the target's config back. `PromoteVariant` makes
the winner the version this local plane serves; in a cluster the ModelDeployment's own rollout carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from sluice.api.base import parse_duration
from sluice.api.experiment import Experiment, ExperimentPhase, ExperimentStatus, MetricKind
from sluice.api.model_deployment import ModelDeployment
from sluice.api.status import VersionRef
from sluice.engine.experiment import ArmHealth, ExperimentLoop, TargetView
from sluice.engine.routing import ExperimentArms, Routing, experiment_config, serving_config
from sluice.experiment.actions import Action, DeployArms, EmitEvent, EndArms, PromoteVariant, SetWeights
from sluice.experiment.core import TERMINAL
from sluice.experiment.observations import ExperimentCommand
from sluice.local.modeldeployment import DataPlaneHandle, RunningPlane
from sluice.local.traffic import Tally, first_input, infer_body
from sluice.providers.factory import create_provider
from sluice.rollout.core import version_ref
from sluice.serving.config import ServingConfig

log = logging.getLogger(__name__)

# The router's response headers (sluice.serving.endpoints; the operator side may not import it).
VARIANT_HEADER = "x-sluice-variant"
REQUEST_ID_HEADER = "x-sluice-request-id"


def parse_outcomes(text: str) -> dict[str, tuple[float, float]]:
    """`control=0.10,treatment=0.12` (conversion rates) or `control=5.0:1.5,...` (mean:sd); ValueError names
    the bad part."""
    out: dict[str, tuple[float, float]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"--outcomes: {part!r} is not ARM=RATE or ARM=MEAN:SD")
        mean, _, sd = value.partition(":")
        try:
            out[name.strip()] = (float(mean), float(sd) if sd else 0.0)
        except ValueError:
            raise ValueError(f"--outcomes: {part!r}: {value!r} is not a number (or MEAN:SD)") from None
    if not out:
        raise ValueError("--outcomes: give at least one ARM=RATE")
    return out


@dataclass
class LocalExperimentPlatform:
    """Carries an experiment's actions out on one local data plane; keeps status and events in memory."""

    target_doc: ModelDeployment
    experiment: Experiment
    handle: DataPlaneHandle
    stable: VersionRef | None = None
    status: ExperimentStatus = field(default_factory=ExperimentStatus)
    events: list[EmitEvent] = field(default_factory=list)
    command: ExperimentCommand | None = None
    promoted: VersionRef | None = None
    url: str = ""  # the plane's base URL: each arm's readiness is asked there once the arms are deployed
    _arms: dict[str, tuple[VersionRef, int]] = field(default_factory=dict)
    _header: str = ""
    _salt: str = ""

    def __post_init__(self) -> None:
        self.stable = self.stable or version_ref(self.target_doc.spec.model)
        self.health = ArmHealth(parse_duration(self.target_doc.spec.analysis.progress_deadline))

    async def target(self) -> TargetView:
        return TargetView(exists=True, rollout=None, command=self.command, failed_arms=await self._failed_arms())

    async def _failed_arms(self) -> dict[str, str]:
        """Arms whose version the plane does not answer ready for (its model did not load), by the shared rule."""
        if not self.url or not self._arms:
            return {}
        model, out = self.target_doc.spec.model.name, {}
        async with httpx.AsyncClient(timeout=5.0) as http:
            for name, (ref, _) in self._arms.items():
                try:
                    r = await http.get(f"{self.url}/v2/models/{model}/versions/{ref.version}/ready")
                    ready, reason = r.status_code == 200, f"the local data plane answers HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ready, reason = False, f"the local data plane does not answer: {type(exc).__name__}"
                why = self.health.judge(name, ready, reason, False, time.monotonic())
                if why is not None:
                    out[name] = f"model {ref.uri} (version {ref.version}): {why}"
        return out

    def _arms_config(self) -> ServingConfig:
        metric = self.experiment.spec.primary_metric
        arms = ExperimentArms(
            self.experiment.metadata.name,
            tuple((name, ref, weight) for name, (ref, weight) in self._arms.items()),
            self._header,
            self._salt,
            metric.name,
            metric.kind.value,
        )
        return experiment_config(self.target_doc.spec, arms)

    async def carry_out(self, action: Action) -> None:
        config: ServingConfig | None = None
        if isinstance(action, EmitEvent):
            self.events.append(action)
            log.log(
                logging.WARNING if action.type == "Warning" else logging.INFO, "%s: %s", action.reason, action.message
            )
        elif isinstance(action, DeployArms):
            self._arms = {a.name: (a.model, a.weight) for a in action.arms}
            self._header, self._salt = action.header, action.salt
            config = self._arms_config()
        elif isinstance(action, SetWeights):
            self._arms = {name: (self._arms[name][0], weight) for name, weight in action.weights}
            config = self._arms_config()
        elif isinstance(action, PromoteVariant):
            self.promoted = self.stable = action.model
        elif isinstance(action, EndArms):
            self._arms = {}
            config = serving_config(self.target_doc.spec, Routing(stable=self.stable))
        if config is not None:
            await asyncio.to_thread(self.handle.update, config)

    async def save(self, status: ExperimentStatus) -> None:
        self.status = status


class ExperimentTraffic:
    """Enrolled synthetic requests (a fresh unit id each) at `rps`, and for each answer a simulated outcome of the
    arm that served it (from the `x-sluice-variant` header), posted in batches to the router's outcomes route."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        header: str,
        rps: float,
        metric: str,
        kind: MetricKind,
        outcomes: dict[str, tuple[float, float]],
        seed: int = 0,
    ) -> None:
        self.url, self.model, self.header, self.rps = url, model, header, rps
        self.metric, self.kind, self.outcomes, self.seed = metric, kind, outcomes, seed
        self.tally = Tally()
        self.reported = self.rejected = 0

    def _value(self, rng: np.random.Generator, arm: str) -> float | None:
        if arm not in self.outcomes:
            return None
        mean, sd = self.outcomes[arm]
        if self.kind is MetricKind.CONVERSION:
            return float(rng.random() < mean)
        return float(rng.normal(mean, sd))

    async def run(self, stop: asyncio.Event) -> None:
        rng = np.random.default_rng(self.seed)
        pending: list[dict[str, object]] = []
        async with httpx.AsyncClient(timeout=30) as client:
            name, width = await first_input(client, self.url, self.model)
            period, next_at, flush_at = 1.0 / self.rps, time.monotonic(), time.monotonic() + 0.5
            while not stop.is_set():
                row = rng.standard_normal(size=[1, *width]).astype(np.float32)
                try:
                    resp = await client.post(
                        f"{self.url}/v2/models/{self.model}/infer",
                        json=infer_body(name, row),
                        headers={self.header: f"unit-{self.tally.sent:x}-{self.seed}"},
                    )
                    self.tally.answered(resp.status_code)
                    rid, arm = resp.headers.get(REQUEST_ID_HEADER), resp.headers.get(VARIANT_HEADER, "")
                    value = self._value(rng, arm)
                    if resp.status_code == 200 and rid and value is not None:
                        pending.append({"id": rid, "metric": self.metric, "value": value})
                except httpx.HTTPError as exc:
                    self.tally.broke(exc)
                if pending and time.monotonic() >= flush_at:
                    await self._flush(client, pending)
                    pending, flush_at = [], time.monotonic() + 0.5
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def _flush(self, client: httpx.AsyncClient, items: list[dict[str, object]]) -> None:
        try:
            resp = await client.post(f"{self.url}/v2/models/{self.model}/outcomes", json={"outcomes": items})
        except httpx.HTTPError:
            self.rejected += len(items)
            return
        if resp.status_code == 202:
            self.reported += len(items)
        else:  # e.g. 404 after the arms ended: the route is gone with the experiment's config
            self.rejected += len(items)


def _view(status: ExperimentStatus) -> str:
    arms = " ".join(
        f"{v.name}[{v.weight}%] n={v.samples} value={'-' if v.value is None else f'{v.value:.4g}'}"
        + (f" p={v.p_value:.3g}" if v.p_value is not None else "")
        + (" STOPPED" if v.stopped else "")
        for v in status.variants
    )
    return f"{status.phase.value:<9} {arms} | leader={status.leader or '-'} lift={status.lift or '-'}"


async def run_experiment(
    target: ModelDeployment,
    experiment: Experiment,
    plane: RunningPlane,
    *,
    load_rps: float,
    outcomes: dict[str, tuple[float, float]],
    timeout_s: float,
    quiet: bool,
) -> tuple[ExperimentStatus, LocalExperimentPlatform, ExperimentTraffic | None]:
    """Run the experiment until a terminal phase, `timeout_s`, or SIGINT/SIGTERM; returns the final status."""
    platform = LocalExperimentPlatform(target, experiment, plane, url=plane.url)
    provider = create_provider(target.spec.analysis.provider, metrics_url=plane.metrics_url)
    meta = experiment.metadata
    loop = ExperimentLoop(experiment.spec, platform, provider, name=meta.name, uid=meta.uid or meta.name, poll_s=0.5)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    metric = experiment.spec.primary_metric
    traffic = None
    task = None
    deadline, last = time.monotonic() + timeout_s, ""
    try:
        while time.monotonic() < deadline and not stop.is_set():
            await loop.tick()
            if traffic is None and loop.status.phase is ExperimentPhase.RUNNING and load_rps > 0:
                traffic = ExperimentTraffic(
                    plane.url,
                    target.spec.model.name,
                    header=experiment.spec.assignment.header,
                    rps=load_rps,
                    metric=metric.name,
                    kind=metric.kind,
                    outcomes=outcomes,
                )
                task = asyncio.create_task(traffic.run(stop))
            view = _view(loop.status)
            if view != last and not quiet:
                print(f"{time.strftime('%H:%M:%S')} {view}", flush=True)
                last = view
            if loop.status.phase in TERMINAL:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), loop.poll_s)
    finally:
        stop.set()
        if task is not None:
            await task
        await provider.close()
    return loop.status, platform, traffic
