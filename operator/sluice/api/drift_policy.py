"""DriftPolicy: watch a ModelDeployment's inputs and predictions against a reference profile, and act."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from sluice.api.base import ApiModel, Condition, Duration, LocalObjectReference, ObjectMeta, Rule

_NAME = r"^[A-Za-z0-9_.-]+$"


class DriftMethod(StrEnum):
    PSI = "psi"  # population stability index on binned values
    KS = "ks"  # two-sample Kolmogorov-Smirnov statistic (numeric)
    JS = "js"  # Jensen-Shannon distance on binned values
    CHI2 = "chi2"  # chi-squared test of homogeneity on bin counts; score Cramér's V, with a p-value
    WASSERSTEIN = "wasserstein"  # earth mover's distance on the binned values over the reference std (numeric)


P_VALUE_METHODS = frozenset({DriftMethod.KS, DriftMethod.CHI2})
NUMERIC_ONLY_METHODS = frozenset({DriftMethod.KS, DriftMethod.WASSERSTEIN})


class ReferenceProfile(ApiModel):
    """Where the reference distribution comes from."""

    uri: str | None = Field(
        default=None,
        description="A profile JSON (per-feature bin edges and counts) at file://, http(s)://, s3:// or gs://.",
        pattern=r"^(file|https?|s3|gs)://.+",
        max_length=2048,
    )
    from_stable_version: bool = Field(
        default=False,
        description="Use what the stable version saw during its first window after promotion instead of a file: "
        "the router samples it, and the profile is kept in the ConfigMap `<policy>-reference`, owned by the policy.",
    )

    rules = (
        Rule(
            cel="has(self.uri) != self.fromStableVersion",
            message="reference needs exactly one of uri or fromStableVersion: true",
            field="",
            violation=lambda r: "" if (r.uri is not None) == r.from_stable_version else None,
        ),
    )


class Feature(ApiModel):
    """One input feature (or the prediction) to watch."""

    name: str = Field(
        description="Input tensor name, or 'prediction' for the model output.", pattern=_NAME, max_length=253
    )
    index: int | None = Field(default=None, ge=0, description="Column of a 2-D input tensor.")
    type: Literal["numeric", "categorical"] = Field(default="numeric", description="numeric or categorical.")
    method: DriftMethod | None = Field(default=None, description="Overrides the policy's method for this feature.")

    rules = (
        Rule(
            cel="self.type != 'categorical' || !has(self.method) || (self.method != 'ks' && "
            "self.method != 'wasserstein')",
            message="ks and wasserstein compare numeric values; a categorical feature needs psi, js or chi2",
            field=".method",
            violation=lambda f: (
                ".method" if f.type == "categorical" and f.method in (DriftMethod.KS, DriftMethod.WASSERSTEIN) else None
            ),
        ),
    )


class Thresholds(ApiModel):
    """Scores at which drift is reported."""

    warning: float = Field(default=0.1, ge=0, description="Score at or above which status is Warning.")
    critical: float = Field(
        default=0.25, ge=0, description="Score at or above which status is Drifted and the action runs."
    )

    rules = (
        Rule(
            cel="self.warning <= self.critical",
            message="warning must not exceed critical",
            field=".warning",
            violation=lambda t: ".warning" if t.warning > t.critical else None,
        ),
    )


class ActionType(StrEnum):
    ALERT = "alert"  # condition + Event + metric only
    ROLLBACK = "rollback"  # undo the target to its previous promoted revision
    RETRAIN = "retrain"  # create a Job from the template


class Action(ApiModel):
    """What happens when drift is critical."""

    type: ActionType = Field(default=ActionType.ALERT, description="alert, rollback or retrain.")
    job_template: dict[str, Any] | None = Field(
        default=None,
        description="batch/v1 JobTemplateSpec run for retrain; SLUICE_* env vars describe the drift.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    cooldown: Duration = Field(default="1h", description="Least time between two actions.")

    rules = (
        Rule(
            cel="self.type != 'retrain' || has(self.jobTemplate)",
            message="action retrain needs jobTemplate",
            field=".jobTemplate",
            violation=lambda a: ".jobTemplate" if a.type == ActionType.RETRAIN and a.job_template is None else None,
        ),
        Rule(
            cel="self.type == 'retrain' || !has(self.jobTemplate)",
            message="jobTemplate is only used by action retrain",
            field=".jobTemplate",
            violation=lambda a: ".jobTemplate" if a.type != ActionType.RETRAIN and a.job_template is not None else None,
        ),
    )


class DriftPolicySpec(ApiModel):
    """Desired state of a DriftPolicy."""

    target: LocalObjectReference = Field(description="The ModelDeployment watched.")
    reference: ReferenceProfile = Field(description="The reference distribution.")
    features: list[Feature] = Field(min_length=1, max_length=256, description="Features (and prediction) watched.")
    method: DriftMethod = Field(default=DriftMethod.PSI, description="Default statistic.")
    thresholds: Thresholds = Field(default_factory=Thresholds, description="Warning and critical scores.")
    window: Duration = Field(default="1h", description="How much recent traffic each evaluation looks at.")
    min_samples: int = Field(default=500, ge=1, description="Fewer samples in the window report NoData.")
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Significance for p-value methods (ks, chi2), Holm-corrected over the features: a feature "
        "is Warning or Drifted only when its score passes the threshold and its adjusted p-value is below alpha.",
    )
    drift_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="The policy is Drifted when at least this share of the evaluated features drifted "
        "(and at least one did); 0 means any one drifted feature.",
    )
    interval: Duration = Field(default="5m", description="Time between evaluations.")
    action: Action = Field(default_factory=Action, description="What to do on critical drift.")


class DriftState(StrEnum):
    OK = "Ok"
    WARNING = "Warning"
    DRIFTED = "Drifted"
    NO_DATA = "NoData"


class FeatureScore(ApiModel):
    """Drift of one feature at the last evaluation."""

    name: str = Field(description="Feature name.")
    method: DriftMethod = Field(description="Statistic used.")
    score: float | None = Field(default=None, description="The statistic's value.")
    p_value: float | None = Field(default=None, description="p-value of ks and chi2, before correction.")
    adjusted_p_value: float | None = Field(default=None, description="Holm-adjusted p-value over the features.")
    samples: int = Field(default=0, ge=0, description="Rows of this feature in the window.")
    state: DriftState = Field(description="Ok, Warning, Drifted or NoData.")


class ReferenceState(StrEnum):
    CAPTURING = "Capturing"  # the router samples the stable version's traffic; no evaluation yet
    CAPTURED = "Captured"  # the profile is built and kept in the ConfigMap; evaluations run against it


class ReferenceStatus(ApiModel):
    """Where a captured reference (`fromStableVersion`) stands."""

    source: Literal["stableVersion"] = Field(default="stableVersion", description="Where the reference comes from.")
    state: ReferenceState = Field(description="Capturing or Captured.")
    version: str | None = Field(default=None, description="The stable version captured (or being captured).")
    rows: int = Field(default=0, ge=0, description="Rows sampled so far, or the rows the profile was built from.")
    capture_started_at: datetime | None = Field(default=None, description="When the capture of this version began.")
    captured_at: datetime | None = Field(default=None, description="When the profile was built.")
    config_map: str | None = Field(default=None, description="The ConfigMap that keeps the profile.")


class DriftPolicyStatus(ApiModel):
    """Observed state of a DriftPolicy."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation acted on.")
    state: DriftState = Field(default=DriftState.NO_DATA, description="Worst state over all features.")
    score: float | None = Field(default=None, description="Highest feature score at the last evaluation.")
    last_evaluated: datetime | None = Field(default=None, description="When drift was last computed.")
    last_action: datetime | None = Field(default=None, description="When the action last ran.")
    last_action_type: str | None = Field(default=None, description="The action last carried out.")
    last_job: str | None = Field(default=None, description="Name of the last retrain Job created.")
    message: str = Field(default="", description="The last evaluation in one sentence.")
    samples: int = Field(default=0, ge=0, description="Rows in the last evaluated window.")
    window_start: datetime | None = Field(default=None, description="Start of the last evaluated window.")
    drifted_features: int = Field(default=0, ge=0, description="Features Drifted at the last evaluation.")
    drifted_share: float | None = Field(
        default=None, description="Drifted features over evaluated (not NoData) features at the last evaluation."
    )
    features: list[FeatureScore] = Field(default_factory=list, description="Per-feature scores.")
    reference: ReferenceStatus | None = Field(
        default=None, description="The captured reference (fromStableVersion only): version, rows, when."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-convention conditions.")


class DriftPolicy(ApiModel):
    """Drift detection on a ModelDeployment's inputs and predictions, with an action."""

    api_version: Literal["sluice.dev/v1alpha1"] = Field(default="sluice.dev/v1alpha1", description="API version.")
    kind: Literal["DriftPolicy"] = Field(default="DriftPolicy", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: DriftPolicySpec = Field(description="Desired state.")
    status: DriftPolicyStatus | None = Field(default=None, description="Observed state, written by Sluice.")
