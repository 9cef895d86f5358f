"""`sluice run` for a DriftPolicy: the target served on the local data plane with the policy's bins, synthetic load
whose inputs shift after a while, and the real drift core deciding.

The reference is read as the operator reads it (engine/reference.py): `file://` (a relative path resolves
against the YAML's directory), http(s)://, s3:// (boto3, extra `s3`) or gs:// (google-cloud-storage, extra `gcs`),
with each client's default credentials from this machine's environment; or, with `fromStableVersion`, captured from
the served version's first window (`LocalCapture`). Actions:
Events are printed; `rollback` serves the target's previous document (its previous promoted revision, as each
document is one `kubectl apply`) when the files hold one; `retrain` runs `--retrain-command` as a local stand-in
for the Job, with the same SLUICE_* variables in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import httpx

from sluice.api.base import parse_duration
from sluice.api.drift_policy import DriftPolicy, DriftPolicyStatus, DriftState, ReferenceState, ReferenceStatus
from sluice.api.model_deployment import ModelDeployment
from sluice.drift.actions import Action, CreateRetrainJob, EmitEvent, RollbackTarget
from sluice.drift.capture import profile_from_sample
from sluice.drift.observations import Problem
from sluice.drift.profile import Profile, ProfileError
from sluice.engine.driftpolicy import DriftLoop, capture_config, read_sample, router_profile
from sluice.engine.reference import read_reference
from sluice.engine.routing import Routing, serving_config
from sluice.local.modeldeployment import DataPlaneHandle, RunningPlane
from sluice.local.run import Session, Views
from sluice.local.traffic import Traffic
from sluice.providers.builtin import BuiltinProvider
from sluice.rollout.core import version_ref
from sluice.serving.config import DriftProfileConfig, ServingConfig

log = logging.getLogger(__name__)


def load_reference(policy: DriftPolicy, base_dir: Path) -> tuple[Profile | None, Problem | None]:
    """The policy's reference profile, or the problem (naming the field) that keeps it from being used; (None, None)
    for `fromStableVersion`, whose profile `LocalCapture` captures while the run serves."""
    reference = policy.spec.reference
    if reference.from_stable_version or reference.uri is None:
        return None, None
    return read_reference(reference_uri(reference.uri, base_dir))


def reference_uri(uri: str, base_dir: Path) -> str:
    """`file:PATH` and `file://PATH` with a relative PATH resolve against the YAML's directory (an absolute URI
    for the object reader); file:///abs, http(s)://, s3:// and gs:// pass unchanged."""
    if not uri.startswith("file:") or uri.startswith("file:///"):
        return uri
    path = Path(unquote(uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")))
    return (path if path.is_absolute() else base_dir / path).resolve().as_uri()


class LocalCapture:
    """`fromStableVersion` on this machine: the served version's first `window` of traffic is sampled by the router
    (its capture config), then profiled with `sluice profile`'s code; the profile stays in memory (no ConfigMap
    here), its bins go to the router, and `status.reference` says where it came from."""

    def __init__(self, policy: DriftPolicy, target: ModelDeployment) -> None:
        self.name, self.spec, self.version = policy.metadata.name, policy.spec, target.spec.model.version
        self.config = capture_config(policy.metadata.name, policy.spec, self.version)
        self.status = ReferenceStatus(
            state=ReferenceState.CAPTURING, version=self.version, capture_started_at=datetime.now(UTC)
        )

    async def poll(self, http: httpx.AsyncClient, base_url: str) -> Profile | str:
        """The profile once the window has passed and minSamples rows were seen; else how far the capture is.
        Raises ProfileError when the sample gives no profile (a feature without any value)."""
        waiting = f"capturing the reference from version {self.version}"
        try:
            summary = await read_sample(http, base_url, self.config, values=False)
        except (httpx.HTTPError, ValueError) as exc:
            return f"{waiting}: the router's sample could not be read: {exc or type(exc).__name__}"
        if summary is None:
            return f"{waiting}: waiting for the router to start sampling"
        self.status.rows = rows = int(summary["rows"])
        window = parse_duration(self.spec.window)
        age = float(summary["age_s"])
        if age < window or rows < self.spec.min_samples:
            until = datetime.now(UTC) + timedelta(seconds=max(window - age, 0.0))  # the router's clock: its age
            return (
                f"{waiting}: {rows} of at least {self.spec.min_samples} rows (minSamples), window "
                f"{self.spec.window} until {until.strftime('%H:%M:%S')}"
            )
        sample = await read_sample(http, base_url, self.config, values=True)
        if sample is None:
            return f"{waiting}: the router lost the sample"
        now = datetime.now(UTC).replace(microsecond=0)
        profile = profile_from_sample(sample, source=f"version {self.version}, captured {now.isoformat()}")
        self.status = self.status.model_copy(
            update={"state": ReferenceState.CAPTURED, "rows": profile.rows, "captured_at": now}
        )
        return profile

    async def advance(
        self, loop: DriftLoop, platform: LocalDriftPlatform, http: httpx.AsyncClient, plane: RunningPlane
    ) -> None:
        """One look at the capture: its progress for the core, or the captured profile's bins to the router."""
        try:
            outcome = await self.poll(http, plane.url)
        except ProfileError as exc:
            message = f"the captured sample of {self.version} gives no profile: {exc}"
            loop.problem = Problem("CaptureFailed", "spec.reference.fromStableVersion", message)
            loop.status.reference = self.status
            return
        if isinstance(outcome, str):
            loop.capturing = outcome
        else:
            target = platform.revisions[-1]
            bins = (router_profile(self.name, self.spec, outcome),)
            platform.drift = serving_config(target.spec, Routing(stable=version_ref(target.spec.model)), bins)
            await asyncio.to_thread(plane.update, platform.drift)
            loop.use_profile(outcome)
            loop.capturing = None
            platform._say(f"captured the reference from {self.version}: {outcome.rows} sampled rows")
        loop.status.reference = self.status


def drift_config(
    target: ModelDeployment, policy: DriftPolicy, profile: Profile | None, capture: LocalCapture | None = None
) -> ServingConfig:
    """The target's serving config with the policy's bins (none when the profile cannot be used), or its capture
    while the reference is being captured."""
    drift: tuple[DriftProfileConfig, ...] = ()
    if capture is not None and profile is None:
        drift = (capture.config,)
    elif profile is not None:
        with contextlib.suppress(ProfileError, ValueError):  # the loop reports the mismatch as a condition
            drift = (router_profile(policy.metadata.name, policy.spec, profile),)
    return serving_config(target.spec, Routing(stable=version_ref(target.spec.model)), drift)


@dataclass
class LocalDriftPlatform:
    """Carries a DriftPolicy's actions out on this machine; keeps the status and what happened in memory."""

    handle: DataPlaneHandle
    revisions: list[ModelDeployment]  # the target's documents in apply order; the last one serves
    drift: ServingConfig
    retrain_command: str | None = None
    quiet: bool = False
    status: DriftPolicyStatus = field(default_factory=DriftPolicyStatus)
    events: list[EmitEvent] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)  # the versions rolled back to
    jobs: list[tuple[str, int | None]] = field(default_factory=list)  # (name, exit code of the local command)

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    async def carry_out(self, action: Action) -> None:
        if isinstance(action, EmitEvent):
            self.events.append(action)
            self._say(f"event {action.type} {action.reason}: {action.message}")
        elif isinstance(action, RollbackTarget):
            if len(self.revisions) < 2:
                self._say(f"rollback of {action.target}: no previous revision in the files; nothing to undo")
                return
            self.revisions.pop()
            previous = self.revisions[-1]
            config = serving_config(previous.spec, Routing(stable=version_ref(previous.spec.model)), self.drift.drift)
            await asyncio.to_thread(self.handle.update, config)
            self.rollbacks.append(previous.spec.model.version)
            self._say(f"rolled {action.target} back to {previous.spec.model.version}")
        elif isinstance(action, CreateRetrainJob):
            code = await self._retrain(action)
            self.jobs.append((action.name, code))

    async def _retrain(self, action: CreateRetrainJob) -> int | None:
        if not self.retrain_command:
            self._say(f"retrain Job {action.name}: no --retrain-command given, so nothing runs locally")
            return None
        self._say(f"retrain Job {action.name}: running {self.retrain_command!r}")
        proc = await asyncio.create_subprocess_shell(self.retrain_command, env={**os.environ, **dict(action.env)})
        return await proc.wait()

    async def save(self, status: DriftPolicyStatus) -> None:
        self.status = status


def _view(status: DriftPolicyStatus) -> str:
    features = " ".join(
        f"{f.name}={'-' if f.score is None else f'{f.score:.3g}'}{'' if f.state == DriftState.OK else f'({f.state})'}"
        for f in status.features
    )
    return f"{status.state.value:<8} n={status.samples} {features}"


async def run_drift(
    revisions: list[ModelDeployment],
    policy: DriftPolicy,
    profile: Profile | None,
    problem: Problem | None,
    plane: RunningPlane,
    *,
    load_rps: float,
    shift_after_s: float | None,
    shift: float,
    timeout_s: float,
    retrain_command: str | None = None,
    quiet: bool = False,
    capture: LocalCapture | None = None,
) -> tuple[DriftPolicyStatus, LocalDriftPlatform, Traffic | None]:
    """Run the policy until it is Drifted and its action ran, `timeout_s`, or SIGINT/SIGTERM; with `capture`, the
    reference is captured from the served version's first window before anything is evaluated."""
    target = revisions[-1]
    config = drift_config(target, policy, profile, capture)
    platform = LocalDriftPlatform(plane, list(revisions), config, retrain_command, quiet)
    provider = BuiltinProvider(plane.metrics_url)
    uri = policy.spec.reference.uri or f"captured:{target.spec.model.version}"
    loop = DriftLoop(
        policy.spec,
        platform,
        provider,
        profile,
        name=policy.metadata.name,
        model=target.spec.model.name,
        reference_uri=uri,
        problem=problem,
        poll_s=0.5,
    )
    traffic = Traffic(plane.url, target.spec.model.name, load_rps, shift_after_s=shift_after_s, shift=shift)
    views = Views(quiet)

    def done() -> bool:
        views.show(_view(loop.status), " [inputs shifted]" if traffic.shifted else "")
        if loop.status.state == DriftState.DRIFTED and loop.status.last_action_type is not None:
            return True
        if loop.status.state == DriftState.DRIFTED and policy.spec.action.type.value == "alert":
            return True
        return loop.problem is not None

    async def tick() -> None:
        if capture is not None and loop.profile is None and loop.problem is None:
            await capture.advance(loop, platform, http, plane)
        await loop.tick()

    async with Session(provider) as session, httpx.AsyncClient(timeout=10) as http:
        if load_rps > 0:
            session.start(traffic.run(session.stop))
        await session.drive(tick, done, timeout_s, loop.poll_s)
    return loop.status, platform, traffic
