"""Where a ModelDeployment's traffic goes, and the ONE translation of spec + routing into the data plane's config.

Every platform (the operator's renderers, `sluice run`, `sluice serve`) serves exactly `serving_config(spec,
routing)`, so a cluster and a laptop split traffic the same way for the same status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sluice.api.base import parse_duration
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import VersionRef
from sluice.rollout.actions import Action, DeployVersion, PromoteCanary, ScaleDown, SetTraffic
from sluice.serving.config import (
    CANARY,
    STABLE,
    BatchingConfig,
    DriftProfileConfig,
    MirrorConfig,
    ServingConfig,
    VariantConfig,
)


@dataclass
class Routing:
    """The roles and split the data plane should serve."""

    stable: VersionRef | None = None
    canary: VersionRef | None = None
    canary_weight: int = 0
    mirror_percent: int = 0

    def apply(self, action: Action) -> bool:
        """Change the roles and split as `action` says; False when it changes nothing here (a ScaleDown of a
        version no role points at, an action that is not about routing). Shared by every platform."""
        if isinstance(action, DeployVersion):
            if action.role == STABLE:
                self.stable = action.model
            else:
                self.canary, self.canary_weight, self.mirror_percent = action.model, 0, 0
        elif isinstance(action, SetTraffic):
            self.canary_weight, self.mirror_percent = action.canary_weight, action.mirror_percent
        elif isinstance(action, PromoteCanary):
            self.stable, self.canary, self.canary_weight, self.mirror_percent = action.model, None, 0, 0
        elif isinstance(action, ScaleDown) and self.canary is not None and self.canary.version == action.version:
            self.canary, self.canary_weight, self.mirror_percent = None, 0, 0
        else:
            return False
        return True


def serving_config(
    spec: ModelDeploymentSpec, routing: Routing, drift: tuple[DriftProfileConfig, ...] = ()
) -> ServingConfig:
    """The data plane's config for `routing` (and the bins of the DriftPolicies watching it); raises ValueError when
    nothing is deployed yet."""
    if routing.stable is None:
        raise ValueError("no stable version to serve yet")
    variants = [_variant(STABLE, routing.stable, 100 - (routing.canary_weight if routing.canary else 0))]
    mirror = None
    if routing.canary is not None:
        variants.append(_variant(CANARY, routing.canary, routing.canary_weight))
        if routing.mirror_percent:
            mirror = MirrorConfig(variant=CANARY, percent=routing.mirror_percent)
    t, b = spec.traffic, spec.batching
    return ServingConfig(
        model_name=spec.model.name,
        variants=tuple(variants),
        mirror=mirror,
        sticky_header=t.sticky_header,
        override_header=t.override_header,
        fallback_to_stable=t.fallback_to_stable,
        request_timeout_s=parse_duration(t.request_timeout),
        max_request_bytes=t.max_request_bytes,
        batching=BatchingConfig(
            enabled=b.enabled,
            max_batch_size=b.max_batch_size,
            max_wait_ms=b.max_wait_ms,
            preferred_batch_sizes=tuple(b.preferred_batch_sizes),
        ),
        gpus_per_replica=float(spec.resources.gpu),
        drift=drift,
    )


def _variant(name: str, ref: VersionRef, weight: int) -> VariantConfig:
    return VariantConfig(name=name, version=ref.version, uri=ref.uri, sha256=ref.sha256, weight=weight)


ARMS_ANNOTATION = "sluice.dev/experiment-arms"  # on the target ModelDeployment, written by the Experiment controller


@dataclass(frozen=True)
class ExperimentArms:
    """An experiment's arms as handed to the target's data plane: (name, model, weight) per arm, the first being the
    control; units enrolled by `header` hashed with `salt`; outcomes of `metric` (`kind`) taken by the router."""

    experiment: str
    arms: tuple[tuple[str, VersionRef, int], ...]
    header: str
    salt: str
    metric: str
    kind: str

    def to_json(self) -> str:
        body = {
            "experiment": self.experiment,
            "arms": [
                {"name": n, **ref.model_dump(mode="json", exclude_none=True), "weight": w} for n, ref, w in self.arms
            ],
            "header": self.header,
            "salt": self.salt,
            "metric": self.metric,
            "kind": self.kind,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ExperimentArms:
        """Parse the annotation; ValueError names what is wrong (a hand-edited annotation must not crash anyone)."""
        try:
            body = json.loads(text)
            arms = tuple(
                (
                    a["name"],
                    VersionRef(version=a["version"], uri=a.get("uri"), sha256=a.get("sha256")),
                    int(a["weight"]),
                )
                for a in body["arms"]
            )
            return cls(body["experiment"], arms, body["header"], body["salt"], body["metric"], body["kind"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"annotation {ARMS_ANNOTATION} is not valid: {exc}") from None

    def with_weights(self, weights: dict[str, int]) -> ExperimentArms:
        arms = tuple((n, ref, weights.get(n, w)) for n, ref, w in self.arms)
        return ExperimentArms(self.experiment, arms, self.header, self.salt, self.metric, self.kind)


def experiment_config(spec: ModelDeploymentSpec, arms: ExperimentArms) -> ServingConfig:
    """The target's data plane serving an experiment's arms: one weighted variant per arm, units enrolled by the
    header hashed with the salt, requests without it sent to the first arm (the control) and not enrolled, outcomes
    of the metric taken and joined to the arm. Everything else (batching, timeouts) stays the target's. Raises
    ValueError (the config's own validation) on an inconsistent set of arms."""
    base = serving_config(spec, Routing(stable=arms.arms[0][1])).model_dump()
    base.update(
        variants=[_variant(name, ref, weight).model_dump() for name, ref, weight in arms.arms],
        mirror=None,
        sticky_header=arms.header,
        sticky_salt=arms.salt,
        enrolment="unit",
        control_variant=arms.arms[0][0],
        outcomes={"metrics": {arms.metric: arms.kind}},
    )
    return ServingConfig.model_validate(base)


def desired_config(
    spec: ModelDeploymentSpec,
    routing: Routing,
    arms: ExperimentArms | None,
    drift: tuple[DriftProfileConfig, ...] = (),
) -> ServingConfig:
    """What the target's data plane serves: the experiment's arms while one runs, else the rollout's routing; the
    bins of the DriftPolicies watching it either way."""
    if arms is None:
        return serving_config(spec, routing, drift)
    config = experiment_config(spec, arms)
    return ServingConfig.model_validate({**config.model_dump(), "drift": [d.model_dump() for d in drift]})
