"""Experiment: an A/B(/n) test between model versions with sticky assignment and a statistical verdict."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from sluice.api.base import ApiModel, Condition, Duration, LocalObjectReference, ObjectMeta, Rule, first_duplicate
from sluice.api.model_deployment import ModelSpec

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Variant(ApiModel):
    """One arm of the experiment."""

    name: str = Field(description="Variant name, e.g. control or treatment.", pattern=_NAME, max_length=63)
    model: ModelSpec = Field(description="The model version this arm serves.")
    weight: int = Field(ge=0, le=100, description="Percent of assigned units sent to this arm.")


class Assignment(ApiModel):
    """How a request is assigned to an arm: by hashing a unit id, so a unit always sees the same arm."""

    header: str = Field(
        default="x-user-id",
        description="Request header carrying the unit id (user, session). Requests without it are not enrolled.",
        pattern=r"^[A-Za-z0-9-]+$",
        max_length=128,
    )
    salt: str | None = Field(
        default=None,
        description="Hash salt; defaults to the experiment's uid so experiments are independent.",
        max_length=256,
    )


class MetricKind(StrEnum):
    CONVERSION = "conversion"  # a rate: successes / trials
    MEAN = "mean"  # a continuous outcome per unit


class OutcomeMetric(ApiModel):
    """The number the experiment is about."""

    name: str = Field(
        description="Metric name reported with outcomes (POST /v2/outcomes).", pattern=_NAME, max_length=63
    )
    kind: MetricKind = Field(default=MetricKind.CONVERSION, description="conversion or mean.")
    direction: Literal["increase", "decrease"] = Field(
        default="increase", description="Whether larger values are better."
    )
    query: str | None = Field(
        default=None,
        description=(
            "PromQL for outcomes recorded elsewhere, read instead of the router's outcome counters (provider "
            "prometheus): evaluated per variant and statistic with $variant replaced by the variant's name and "
            "$stat by count, sum and squares (sum of squared values; mean metrics only); each must return one "
            "number, cumulative since the experiment started."
        ),
        max_length=4096,
    )

    rules = (
        Rule(
            cel="!has(self.query) || (self.query.contains('$variant') && self.query.contains('$stat'))",
            message="query needs $variant and $stat (count, sum, squares) so each arm's outcomes can be read",
            field=".query",
            violation=lambda m: (
                ".query" if m.query is not None and ("$variant" not in m.query or "$stat" not in m.query) else None
            ),
        ),
    )


class Guardrail(ApiModel):
    """A metric that must not get worse, whatever the primary metric does."""

    name: str = Field(description="Guardrail name.", pattern=_NAME, max_length=63)
    type: Literal["error-rate", "latency-p99", "promql"] = Field(description="What is measured.")
    max: float | None = Field(default=None, description="Stop the arm when the value is above this.")
    query: str | None = Field(default=None, description="PromQL for type promql.", max_length=4096)

    rules = (
        Rule(
            cel="self.type != 'promql' || has(self.query)",
            message="a guardrail of type promql needs query",
            field=".query",
            violation=lambda g: ".query" if g.type == "promql" and not g.query else None,
        ),
        Rule(
            cel="self.type == 'promql' || !has(self.query)",
            message="query is only used by guardrails of type promql",
            field=".query",
            violation=lambda g: ".query" if g.type != "promql" and g.query is not None else None,
        ),
    )


class Method(StrEnum):
    FREQUENTIST = "frequentist"  # two-sided z-test (conversion) / Welch t-test (mean), fixed horizon
    SEQUENTIAL = "sequential"  # mixture SPRT: valid at every look, so it may stop early
    BAYESIAN = "bayesian"  # Beta-Binomial / normal posterior probability of being best


class Allocation(StrEnum):
    FIXED = "fixed"  # the variants' weights, for the whole experiment
    THOMPSON = "thompson"  # Thompson sampling: each look re-weights arms by their posterior chance of being best


class EndPolicy(StrEnum):
    PROMOTE_WINNER = "promoteWinner"  # make the winning model the target's stable version
    KEEP_CONTROL = "keepControl"  # end and route everything back to the first variant
    MANUAL = "manual"  # report the verdict and wait


class ExperimentSpec(ApiModel):
    """Desired state of an Experiment."""

    target: LocalObjectReference = Field(description="The ModelDeployment whose traffic is split.")
    variants: list[Variant] = Field(
        min_length=2,
        max_length=10,
        description="Arms; the first is the control. Weights must sum to 100.",
    )
    assignment: Assignment = Field(default_factory=Assignment, description="Sticky assignment of units to arms.")
    primary_metric: OutcomeMetric = Field(description="The metric the verdict is about.")
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=16, description="Metrics that must hold.")
    method: Method = Field(default=Method.SEQUENTIAL, description="Statistical method of the verdict.")
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="False-positive rate the verdict tolerates.")
    minimum_detectable_effect: float = Field(
        default=0.05, gt=0, description="Smallest relative lift worth detecting; sizes the test."
    )
    minimum_samples: int = Field(default=1000, ge=1, description="Units per arm before any verdict.")
    maximum_duration: Duration = Field(default="168h", description="Stop with no verdict after this long.")
    end_policy: EndPolicy = Field(default=EndPolicy.MANUAL, description="What happens at a verdict.")
    interval: Duration = Field(default="30s", description="How often the arms are looked at (statistics, bandit).")
    allocation: Allocation = Field(
        default=Allocation.FIXED, description="fixed: the variants' weights; thompson: re-weighted every interval."
    )
    allocation_floor: int = Field(
        default=5, ge=0, le=50, description="Thompson: the least percent of traffic any running arm keeps."
    )

    rules = (
        Rule(
            cel="self.variants.map(v, v.weight).sum() == 100",
            message="variant weights must sum to 100",
            field=".variants",
            violation=lambda s: ".variants" if sum(v.weight for v in s.variants) != 100 else None,
        ),
        Rule(
            cel="self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
            message="variant names must be unique",
            field=".variants",
            violation=lambda s: first_duplicate(".variants", [v.name for v in s.variants]),
        ),
        Rule(
            cel="!has(self.guardrails) || self.guardrails.all(g, self.guardrails.exists_one(h, h.name == g.name))",
            message="guardrail names must be unique",
            field=".guardrails",
            violation=lambda s: first_duplicate(".guardrails", [g.name for g in s.guardrails]),
        ),
        Rule(
            cel="self.allocation != 'thompson' || self.allocationFloor * size(self.variants) <= 100",
            message="allocationFloor times the number of variants must not exceed 100",
            field=".allocationFloor",
            violation=lambda s: (
                ".allocationFloor"
                if s.allocation is Allocation.THOMPSON and s.allocation_floor * len(s.variants) > 100
                else None
            ),
        ),
    )


class ExperimentPhase(StrEnum):
    PENDING = "Pending"  # accepted; waiting for the target (missing, or mid-rollout: see conditions)
    RUNNING = "Running"  # arms serving, collecting samples; a look every interval
    CONCLUDED = "Concluded"  # terminal: a verdict was reached (a winner, or no difference at the fixed horizon)
    STOPPED = "Stopped"  # terminal: every treatment stopped by guardrails, maximum duration passed, or stopped by hand
    FAILED = "Failed"  # terminal: the spec cannot be carried out (the control cannot serve; see conditions)


class VariantStats(ApiModel):
    """What was observed for one arm."""

    name: str = Field(description="Variant name.")
    version: str | None = Field(
        default=None, description="Model version this arm serves (spec.variants[i].model.version when it started)."
    )
    weight: int = Field(default=0, ge=0, le=100, description="Percent of enrolled units this arm gets now.")
    samples: int = Field(default=0, ge=0, description="Outcomes observed (units with a reported primary metric).")
    value: float | None = Field(default=None, description="Conversion rate or mean of the primary metric.")
    lift: float | None = Field(default=None, description="Relative difference to control: (arm - control) / control.")
    lift_low: float | None = Field(default=None, description="Lower end of the lift's interval (see the method).")
    lift_high: float | None = Field(default=None, description="Upper end of the lift's interval.")
    p_value: float | None = Field(
        default=None,
        description="Against control, Holm-adjusted across treatments; sequential: always-valid (1 / e-value).",
    )
    always_valid_p: float | None = Field(
        default=None,
        description="Sequential: running minimum of the unadjusted always-valid p-value (kept across looks).",
    )
    probability_best: float | None = Field(default=None, description="Posterior chance this arm is best.")
    expected_loss: float | None = Field(
        default=None, description="Posterior expected loss of choosing this arm (in units of the metric)."
    )
    stopped: bool = Field(default=False, description="Stopped (guardrail or load failure): gets no traffic again.")
    stopped_reason: str | None = Field(default=None, description="Why the arm was stopped.")


class ExperimentStatus(ApiModel):
    """Observed state of an Experiment."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation acted on.")
    phase: ExperimentPhase = Field(default=ExperimentPhase.PENDING, description="Lifecycle phase.")
    started_at: datetime | None = Field(default=None, description="When assignment began.")
    leader: str | None = Field(default=None, description="The arm currently ahead on the primary metric.")
    lift: str | None = Field(default=None, description="Leader's lift over control, e.g. '+3.2%'.")
    confidence: str | None = Field(default=None, description="Confidence in the leader, e.g. '97.1%'.")
    verdict: str | None = Field(default=None, description="The conclusion in words, once reached.")
    winner: str | None = Field(default=None, description="The winning arm, once a verdict names one.")
    message: str | None = Field(default=None, description="What is happening now, in words.")
    salt: str | None = Field(default=None, description="The assignment salt in use (kept so restarts keep it).")
    required_samples: int | None = Field(
        default=None,
        description="Fixed horizon and Bayesian: outcomes per arm before the verdict (80% power at the MDE), "
        "planned once the control has minimumSamples outcomes.",
    )
    looks: int = Field(default=0, ge=0, description="Looks taken at the arms so far.")
    last_look_at: datetime | None = Field(default=None, description="When the arms were last looked at.")
    finished_at: datetime | None = Field(default=None, description="When a terminal phase was reached.")
    variants: list[VariantStats] = Field(default_factory=list, description="Per-arm statistics.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-convention conditions.")


class Experiment(ApiModel):
    """An A/B(/n) test between model versions with sticky assignment and a statistical verdict."""

    api_version: Literal["sluice.dev/v1alpha1"] = Field(default="sluice.dev/v1alpha1", description="API version.")
    kind: Literal["Experiment"] = Field(default="Experiment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ExperimentSpec = Field(description="Desired state.")
    status: ExperimentStatus | None = Field(default=None, description="Observed state, written by Sluice.")
