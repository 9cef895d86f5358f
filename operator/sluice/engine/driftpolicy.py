"""The DriftPolicy controller loop: read the router's feature counters, `step`, carry out, save; any platform.

Each tick takes one reading of the cumulative per-bin counters and keeps a short history; the window's counts are
the newest reading minus the newest one at least `spec.window` old (the oldest while the history is shorter). The
first reading is only a baseline. A loop that starts from a saved evaluation (the operator restarted) holds it,
without a step, until its own readings make a full window or one with `minSamples` rows: otherwise the short history
would read as NoData, posting a state change nobody made and dropping the Drifted state. `router_profile` is the one
translation of a policy and its profile into the bins the router counts on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from sluice.api.base import parse_duration
from sluice.api.drift_policy import DriftPolicySpec, DriftPolicyStatus
from sluice.drift import Observations, Problem, Profile, Reading, baseline, step, window_counts
from sluice.drift.actions import Action
from sluice.drift.core import check_reference, feature_keys
from sluice.drift.observations import window_missing
from sluice.drift.profile import PREDICTION, NumericFeature, feature_key
from sluice.engine.ticks import run_ticks
from sluice.providers.base import MISSING_BIN, FeatureBinCounts, FeatureCounts
from sluice.rollout.measurements import MetricError, NoData
from sluice.serving.config import (
    MAX_CAPTURE_SIZE,
    MAX_CAPTURE_VALUES,
    Bins,
    CaptureConfig,
    DriftProfileConfig,
    FeatureBins,
)

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DriftPlatform(Protocol):
    """Where a DriftPolicy's actions happen and its status is kept (the operator, or `sluice run`)."""

    async def carry_out(self, action: Action) -> None: ...

    async def save(self, status: DriftPolicyStatus) -> None: ...


def router_profile(policy: str, spec: DriftPolicySpec, profile: Profile) -> DriftProfileConfig:
    """The bins the router counts for this policy: each watched feature on the profile's edges or categories.

    Raises ProfileError when a feature is not in the profile (check_reference names it first).
    """
    features: list[FeatureBins] = []
    prediction: Bins | None = None
    for feature in spec.features:
        ref = profile.feature(feature_key(feature.name, feature.index))
        bins = {"edges": tuple(ref.edges)} if isinstance(ref, NumericFeature) else {"categories": tuple(ref.categories)}
        if feature.name == PREDICTION and feature.index is None:
            prediction = Bins.model_validate(bins)
        else:
            features.append(FeatureBins.model_validate({"input": feature.name, "column": feature.index, **bins}))
    return DriftProfileConfig(policy=policy, features=tuple(features), prediction=prediction)


def capture_config(policy: str, spec: DriftPolicySpec, version: str, token: str | None = None) -> DriftProfileConfig:
    """What the router samples for a policy capturing its reference (`fromStableVersion`): the watched features of
    the rows `version` serves, up to 10,000 rows (fewer where many features would pass the router's bound on
    values); the sample is served to `token` (a new random one when None)."""
    features = [
        {"input": f.name, "column": f.index, "type": f.type}
        for f in spec.features
        if not (f.name == PREDICTION and f.index is None)
    ]
    prediction = next((f.type for f in spec.features if f.name == PREDICTION and f.index is None), None)
    size = max(1, min(MAX_CAPTURE_SIZE, MAX_CAPTURE_VALUES // len(spec.features)))
    capture = CaptureConfig.model_validate(
        {
            "version": version,
            "size": size,
            "token": token or secrets.token_urlsafe(24),
            "features": features,
            "prediction": prediction,
        }
    )
    return DriftProfileConfig(policy=policy, capture=capture)


async def read_sample(
    http: httpx.AsyncClient, base_url: str, config: DriftProfileConfig, *, values: bool
) -> dict[str, Any] | None:
    """The router's capture sample of `config`'s policy (`GET /v2/drift/{policy}/sample`; `values=False`: only
    how far it is: rows seen, rows kept, age in seconds); None while the router has not begun it (404). Raises
    httpx.HTTPError or ValueError when it cannot be read."""
    assert config.capture is not None
    response = await http.get(
        f"{base_url}/v2/drift/{config.policy}/sample",
        params={"values": "true" if values else "false"},
        headers={"authorization": f"Bearer {config.capture.token}"},
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    body = response.json()
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("rows"), int)
        or not isinstance(body.get("age_s"), float | int)
    ):
        raise ValueError(f"not a capture sample: {str(body)[:200]}")
    return body


def dense(counts: FeatureBinCounts, profile: Profile, keys: list[str]) -> dict[str, list[float]]:
    """Per-feature lists in the profile's bin order; a bin the router has not exported yet counts 0. A bin index
    past the profile's bins is kept, so the core reports the mismatch (the router has another profile)."""
    out: dict[str, list[float]] = {}
    for key in keys:
        by_bin = {i: v for i, v in counts.get(key, {}).items() if i != MISSING_BIN}
        size = max([profile.feature(key).bins, *(i + 1 for i in by_bin)])
        out[key] = [by_bin.get(i, 0.0) for i in range(size)]
    return out


class DriftLoop:
    def __init__(
        self,
        spec: DriftPolicySpec,
        platform: DriftPlatform,
        source: FeatureCounts,
        profile: Profile | None,
        *,
        name: str,
        model: str,
        reference_uri: str = "",
        problem: Problem | None = None,
        status: DriftPolicyStatus | None = None,
        generation: int = 1,
        poll_s: float = 5.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.spec, self.platform, self.source, self.profile = spec, platform, source, profile
        self.name, self.model, self.reference_uri, self.problem = name, model, reference_uri, problem
        self.status = status or DriftPolicyStatus()
        self.generation, self.poll_s, self.clock = generation, poll_s, clock
        self.readings: list[Reading] = []
        self.resumed = self.status.last_evaluated is not None  # hold the saved evaluation until a window is seen
        self.capturing: str | None = None  # a fromStableVersion reference being captured: how far, in words

    def use_profile(self, profile: Profile | None) -> None:
        """Evaluate against `profile` from now on; a new one (a recaptured reference) starts a fresh history, since
        the router restarts the counts of bins that changed."""
        if profile is not self.profile and profile != self.profile:
            self.readings = []
        self.profile = profile

    def _observations(self, **fields: Any) -> Observations:
        return Observations(
            policy=self.name,
            generation=self.generation,
            reference=self.profile,
            reference_uri=self.reference_uri,
            **fields,
        )

    async def _observe(self, now: datetime) -> Observations | None:
        """What `step` sees; None while a resumed loop holds its saved evaluation (see the module docstring)."""
        if self.problem is None and self.capturing is not None:
            return self._observations(capturing=self.capturing)
        if self.problem is not None or self.profile is None:
            return self._observations(problem=self.problem)
        mismatch = check_reference(self.spec, self.profile, None)
        if mismatch is not None:
            return self._observations(problem=mismatch)
        measured = await self.source.feature_bins(self.model, self.name)
        if isinstance(measured, MetricError):
            return self._observations(problem=Problem("NoCounts", "spec.target", measured.message))
        if isinstance(measured, NoData):
            return self._observations(problem=Problem("NoCounts", "spec.target", measured.reason))
        keys = feature_keys(self.spec)
        missing = {k: measured.value.get(k, {}).get(MISSING_BIN, 0.0) for k in keys}
        reading = Reading(now, dense(measured.value, self.profile, keys), missing)
        window = timedelta(seconds=parse_duration(self.spec.window))
        earlier = baseline(self.readings, now, window)
        self.readings.append(reading)
        keep_from = baseline(self.readings, now, window)  # drop what no later window can start from
        self.readings = [r for r in self.readings if keep_from is None or r.time >= keep_from.time]
        if self.resumed:
            rows = max((sum(v) for v in window_counts(earlier, reading).values()), default=0.0) if earlier else 0.0
            if (earlier is None or earlier.time > now - window) and rows < self.spec.min_samples:
                return None
        if earlier is None:  # the first reading is the baseline: nothing counted yet
            return self._observations(window={k: [0.0] * len(v) for k, v in reading.bins.items()}, window_start=now)
        return self._observations(
            window=window_counts(earlier, reading),
            window_start=earlier.time,
            window_missing=window_missing(earlier, reading),
        )

    async def tick(self) -> list[Action]:
        """One observe-decide-act round; returns the actions carried out."""
        now = self.clock()
        observations = await self._observe(now)
        if observations is None:
            return []
        self.resumed = False
        status, actions = step(self.spec, self.status, observations, now)
        for action in actions:
            await self.platform.carry_out(action)
        self.status = status
        await self.platform.save(status)
        return actions

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set. A failing tick is logged and retried from the last saved status."""
        await run_ticks(stop, self.tick, self.poll_s, "drift")
