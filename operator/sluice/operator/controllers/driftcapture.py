"""`reference.fromStableVersion` in the operator: capture the stable version's first window, keep it in a ConfigMap.

The router cannot count bins it has no edges for, so a capturing policy first hands its target a capture profile
(`DriftProfileConfig.capture`: the features, the stable version, a random token; the same annotation
`drift.sluice.dev/<policy>` as the bins). The router samples the rows that version serves (a bounded reservoir,
serving/capture.py). Once `spec.window` has passed since the router began (its own clock: `age_s`) and at least
`minSamples` rows were seen, the controller reads the sample with the token, builds the profile with the code
`sluice profile` uses (drift/capture.py), writes it to the ConfigMap `<policy>-reference` (owned by the policy,
annotated with the version it came from) and hands the target the profile's bins. Until then the policy is NoData
with the reason `CapturingReference`: a reference still being captured never reads as drift.

On a restart the ConfigMap is read first: a capture is not redone while it holds the target's stable version. A
new stable version is captured afresh (its own first window after promotion: a retrained model is compared with
what it serves, not with what its predecessor saw), and so is a ConfigMap that was deleted, cannot be read, or
lacks a watched feature; each with an Event.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx
from pydantic import ValidationError

from sluice.api.base import parse_duration
from sluice.api.drift_policy import DriftPolicySpec, ReferenceState, ReferenceStatus
from sluice.drift.capture import profile_from_sample
from sluice.drift.core import check_reference
from sluice.drift.observations import Problem
from sluice.drift.profile import Profile, ProfileError, parse_profile
from sluice.engine.driftpolicy import capture_config, read_sample
from sluice.operator.driftprofiles import annotation_key, encode
from sluice.operator.kube import ApiError, KubeClient, Obj
from sluice.operator.render import Owner
from sluice.operator.render.meta import dns_label, label_value, owner_reference
from sluice.serving.config import MAX_CAPTURE_VALUES, DriftProfileConfig

log = logging.getLogger(__name__)

DATA_KEY = "profile.json"
VERSION_ANNOTATION = "drift.sluice.dev/version"  # on the ConfigMap: the stable version the profile came from
CAPTURED_AT_ANNOTATION = "drift.sluice.dev/captured-at"
POLICY_LABEL = "sluice.dev/drift-policy"
RETRY_S = 10.0  # a failed read of the sample or the ConfigMap is tried again after this long
RECHECK_S = 30.0  # while captured, the ConfigMap is looked at this often (deleted or edited: capture again)
FIELD = "spec.reference.fromStableVersion"

Emit = Callable[[Literal["Normal", "Warning"], str, str, str], Awaitable[None]]  # type, reason, message, Event key


def reference_name(policy: str) -> str:
    """The ConfigMap of `policy`'s captured reference: `<policy>-reference` (a DNS label, hashed when too long)."""
    return dns_label(f"{policy}-reference")


def reference_configmap(owner: Owner, profile: Profile, version: str, captured_at: datetime) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": reference_name(owner.name),
            "namespace": owner.namespace,
            "labels": {POLICY_LABEL: label_value(owner.name)},
            "annotations": {
                VERSION_ANNOTATION: version,
                CAPTURED_AT_ANNOTATION: captured_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {DATA_KEY: profile.to_json()},
    }


def read_configmap(cm: Obj) -> tuple[Profile, str, datetime | None]:
    """(profile, version, captured at) of a reference ConfigMap; ProfileError says what is wrong with it."""
    meta = cm.get("metadata") or {}
    name = meta.get("name", "?")
    version = (meta.get("annotations") or {}).get(VERSION_ANNOTATION)
    if not version:
        raise ProfileError(f"ConfigMap {name}: no annotation {VERSION_ANNOTATION}")
    text = (cm.get("data") or {}).get(DATA_KEY)
    if not text:
        raise ProfileError(f"ConfigMap {name}: no data key {DATA_KEY}")
    profile = parse_profile(text, source=f"ConfigMap {name}")
    stamp = (meta.get("annotations") or {}).get(CAPTURED_AT_ANNOTATION)
    try:
        captured_at = datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except ValueError:
        captured_at = None
    return profile, version, captured_at


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Outcome:
    """What the capture gives the daemon this round: a profile to evaluate against, or why not yet."""

    profile: Profile | None = None
    capturing: str | None = None  # still capturing: the progress, in words
    problem: Problem | None = None
    status: ReferenceStatus | None = None


class ReferenceCapture:
    """One policy's captured reference: the ConfigMap, the capture on the router, the profile in memory."""

    def __init__(
        self,
        client: KubeClient,
        owner: Owner,
        http: Callable[[], httpx.AsyncClient],
        emit: Emit,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.client, self.owner, self.http, self.emit, self.recheck_s = client, owner, http, emit, recheck_s
        self._checked_at = 0.0  # time.monotonic() of the last look at the ConfigMap while captured
        self.profile: Profile | None = None
        self.status: ReferenceStatus | None = None
        self._read_for: str | None = None  # the stable version the ConfigMap was last read for
        self._retry_at = 0.0  # time.monotonic() before which a failed sample read is not retried
        self._noted: set[tuple[str, str]] = set()  # (reason, cause) Events already posted

    @property
    def name(self) -> str:
        return reference_name(self.owner.name)

    @property
    def uri(self) -> str:
        """Where the reference is, for people and the retrain Job's SLUICE_REFERENCE_URI."""
        return f"configmap://{self.owner.namespace}/{self.name}/{DATA_KEY}"

    async def _note(self, type_: Literal["Normal", "Warning"], reason: str, what: str, message: str) -> None:
        """One Event per (reason, what), named after them: a restart meeting the same cause posts nothing twice."""
        if (reason, what) not in self._noted:
            self._noted.add((reason, what))
            await self.emit(type_, reason, message, f"reference/{reason}/{what}")

    def restore(self, status: ReferenceStatus | None) -> None:
        """The reference status stored before a restart (its capture start survives)."""
        if self.status is None:
            self.status = status

    async def resolve(
        self, spec: DriftPolicySpec, target: Obj, base_url: str, ready: Callable[[], Awaitable[Problem | None]]
    ) -> Outcome:
        """Where the reference stands for the target's stable version; `ready` checks the features against the
        model's inputs before anything is handed to the target."""
        stable = ((target.get("status") or {}).get("stable") or {}).get("version")
        if not stable:
            name = target["metadata"]["name"]
            return Outcome(capturing=f"waiting for ModelDeployment {name} to have a stable version to capture")
        if self.profile is not None and self.status is not None and self.status.version == stable:
            if check_reference(spec, self.profile, None) is not None:
                message = "the watched features changed: capturing the reference again"
                features = hashlib.sha256(spec.model_dump_json(include={"features"}).encode()).hexdigest()[:12]
                await self._note("Normal", "ReferenceRecapture", f"{stable}/features/{features}", message)
                self.profile, self._read_for = None, stable
            elif time.monotonic() - self._checked_at < self.recheck_s:
                return Outcome(profile=self.profile, status=self.status)
            else:
                self._checked_at = time.monotonic()
                self.profile, self._read_for = None, None  # read the ConfigMap again: still there, unchanged?
        elif self.profile is not None and self.status is not None:
            message = f"stable version is now {stable} (the reference is of {self.status.version}): capturing it"
            await self._note("Normal", "ReferenceRecapture", f"{self.status.captured_at}->{stable}", message)
            self.profile = None
        if self._read_for != stable:
            self._read_for = stable
            kept = await self._from_configmap(spec, stable)
            if kept is not None:
                return kept
        problem = await ready()
        if problem is not None:
            return Outcome(problem=problem)
        return await self._capture(spec, target, stable, base_url)

    async def _from_configmap(self, spec: DriftPolicySpec, stable: str) -> Outcome | None:
        cm = await self.client.get("v1", "ConfigMap", self.owner.namespace, self.name)
        if cm is None:
            if self.status is not None and self.status.state == ReferenceState.CAPTURED:
                message = f"ConfigMap {self.name} is gone: capturing the reference from {stable} again"
                await self._note("Warning", "ReferenceRecapture", f"{stable}/{self.status.captured_at}", message)
            return None
        try:
            profile, version, captured_at = read_configmap(cm)
        except ProfileError as exc:
            message = f"ConfigMap {self.name} cannot be used ({str(exc)[:300]}): capturing the reference again"
            seen = f"{stable}/{cm['metadata'].get('resourceVersion')}"
            await self._note("Warning", "ReferenceRecapture", seen, message)
            return None
        if version != stable:
            message = f"ConfigMap {self.name} holds version {version}; the stable version is {stable}: capturing it"
            await self._note("Normal", "ReferenceRecapture", f"{captured_at}->{stable}", message)
            return None
        if check_reference(spec, profile, None) is not None:
            message = f"ConfigMap {self.name} lacks a watched feature: capturing the reference again"
            await self._note("Normal", "ReferenceRecapture", stable, message)
            return None
        self.profile = profile
        kept = self.status
        if not (
            kept
            and kept.state == ReferenceState.CAPTURED
            and (kept.version, kept.captured_at) == (version, captured_at)
        ):
            self.status = ReferenceStatus(
                state=ReferenceState.CAPTURED,
                version=version,
                rows=profile.rows,
                captured_at=captured_at,
                config_map=self.name,
            )  # else the status from before a restart, which also knows when the capture began
        return Outcome(profile=profile, status=self.status)

    async def _capture(self, spec: DriftPolicySpec, target: Obj, stable: str, base_url: str) -> Outcome:
        now = datetime.now(UTC).replace(microsecond=0)  # as the ConfigMap's annotation keeps it
        status = self.status
        if status is None or status.state != ReferenceState.CAPTURING or status.version != stable:
            status = self.status = ReferenceStatus(
                state=ReferenceState.CAPTURING, version=stable, capture_started_at=now, config_map=self.name
            )
        config = await self._hand_capture(spec, target, stable)
        assert config.capture is not None
        window = timedelta(seconds=parse_duration(spec.window))
        waiting = f"capturing the reference from stable version {stable}"
        if time.monotonic() < self._retry_at:
            return Outcome(capturing=f"{waiting}: {status.rows} rows so far", status=status)
        try:
            summary = await read_sample(self.http(), base_url, config, values=False)
        except (httpx.HTTPError, ValueError) as exc:
            self._retry_at = time.monotonic() + RETRY_S
            message = f"{waiting}: the router's sample could not be read ({base_url}): {exc or type(exc).__name__}"
            return Outcome(capturing=message, status=status)
        if summary is None:
            message = (
                f"{waiting}: waiting for the router to start sampling (it samples at most {MAX_CAPTURE_VALUES} "
                "values at once, so another policy's capture may go first)"
            )
            return Outcome(capturing=message, status=status)
        rows, age = int(summary["rows"]), float(summary["age_s"])
        started = now - timedelta(seconds=age)
        if status.capture_started_at is None or started > status.capture_started_at + timedelta(seconds=5):
            status.capture_started_at = started  # the router's sample is younger: it restarted, so its age counts
        status.rows = rows
        until = (status.capture_started_at or now) + window
        if age < window.total_seconds() or rows < spec.min_samples:
            message = (
                f"{waiting}: {rows} of at least {spec.min_samples} rows (minSamples), window {spec.window} "
                f"until {_stamp(until)}"
            )
            if age >= window.total_seconds():
                message += " (the window has passed; capturing until minSamples rows were seen)"
            return Outcome(capturing=message, status=status)
        return await self._build(base_url, config, stable, now, status)

    async def _build(
        self, base_url: str, config: DriftProfileConfig, stable: str, now: datetime, status: ReferenceStatus
    ) -> Outcome:
        try:
            sample = await read_sample(self.http(), base_url, config, values=True)
            if sample is None:
                raise ValueError("the router no longer has the sample")
            profile = profile_from_sample(sample, source=f"stable version {stable}, captured {_stamp(now)}")
        except (httpx.HTTPError, ValueError) as exc:  # ProfileError is a ValueError
            self._retry_at = time.monotonic() + RETRY_S
            problem = Problem("CaptureFailed", FIELD, f"the captured sample of {stable} gives no profile: {exc}")
            return Outcome(problem=problem, status=status)
        cm = reference_configmap(self.owner, profile, stable, now)
        try:
            await self.client.create(cm)
        except ApiError as exc:
            if exc.code != 409:
                raise
            patch = {"metadata": {"annotations": cm["metadata"]["annotations"]}, "data": cm["data"]}
            await self.client.patch("v1", "ConfigMap", self.owner.namespace, self.name, patch)
        self.profile = profile
        self.status = ReferenceStatus(
            state=ReferenceState.CAPTURED,
            version=stable,
            rows=profile.rows,
            capture_started_at=status.capture_started_at,
            captured_at=now,
            config_map=self.name,
        )
        message = (
            f"captured the reference from stable version {stable}: {profile.rows} sampled rows of {status.rows}, "
            f"kept in ConfigMap {self.name}"
        )
        await self._note("Normal", "ReferenceCaptured", f"{stable}/{_stamp(now)}", message)
        return Outcome(profile=profile, status=self.status)

    async def _hand_capture(self, spec: DriftPolicySpec, target: Obj, stable: str) -> DriftProfileConfig:
        """The capture config on the target's annotation: the one there (its token) when it captures the same
        features of the same version, else a new one with a new token (the router starts a fresh sample)."""
        key = annotation_key(self.owner.name)
        current = ((target.get("metadata") or {}).get("annotations") or {}).get(key)
        token = None
        if current:
            try:
                there = DriftProfileConfig.model_validate_json(current)
                if there.capture is not None:
                    token = there.capture.token
            except ValidationError:
                pass
        config = capture_config(self.owner.name, spec, stable, token)
        value = encode(config)
        if current != value:
            await self.client.patch(
                "sluice.dev/v1alpha1",
                "ModelDeployment",
                self.owner.namespace,
                target["metadata"]["name"],
                {"metadata": {"annotations": {key: value}}},
            )
        return config
