"""How a DriftPolicy hands its bins to the target ModelDeployment: one annotation per policy on the target.

The DriftPolicy controller writes `drift.sluice.dev/<policy>` = the policy's `DriftProfileConfig` as JSON; the
ModelDeployment's controller reads every such annotation and passes the profiles to `serving_config`, so the
target's RayService user_config (or its Triton router's ConfigMap) carries them and the router counts them. An
annotation that does not parse, or profiles beyond the router's limits, are left out (logged): the target's serving
never depends on a policy being well-formed. Captures (`reference.fromStableVersion`) beyond the router's bound on
sampled values wait, in annotation order, until those before them have turned into bins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from sluice.operator.render.meta import dns_label
from sluice.serving.config import MAX_BINS_TOTAL, MAX_CAPTURE_VALUES, MAX_PROFILES, DriftProfileConfig

log = logging.getLogger(__name__)

PREFIX = "drift.sluice.dev/"


def annotation_key(policy: str) -> str:
    """The annotation of `policy` on its target (the name part a DNS-1123 label, hashed when it does not fit)."""
    return PREFIX + dns_label(policy)


def encode(config: DriftProfileConfig) -> str:
    return config.model_dump_json(exclude_none=True)


def profiles_on(body: Mapping[str, Any]) -> tuple[DriftProfileConfig, ...]:
    """The drift profiles handed to this ModelDeployment, in annotation order, within the router's limits."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    out: list[DriftProfileConfig] = []
    bins = 0
    values = 0  # sampled values of capturing policies (reference.fromStableVersion)
    for key in sorted(k for k in annotations if k.startswith(PREFIX)):
        try:
            config = DriftProfileConfig.model_validate_json(annotations[key])
        except ValidationError as exc:
            log.warning("annotation %s ignored: %s", key, exc.errors()[0].get("msg", exc))
            continue
        if len(out) >= MAX_PROFILES or bins + config.bins_total > MAX_BINS_TOTAL:
            log.warning(
                "annotation %s ignored: the router counts at most %d profiles and %d bins",
                key,
                MAX_PROFILES,
                MAX_BINS_TOTAL,
            )
            continue
        if values + config.capture_values > MAX_CAPTURE_VALUES:
            # A capture waits until the ones before it have become bins (its policy says it waits for the router).
            log.info("annotation %s waits: the router samples at most %d values at once", key, MAX_CAPTURE_VALUES)
            continue
        if any(c.policy == config.policy for c in out):
            continue
        bins += config.bins_total
        values += config.capture_values
        out.append(config)
    return tuple(out)
