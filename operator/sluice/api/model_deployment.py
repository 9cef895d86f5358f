"""ModelDeployment: one model behind one endpoint, and how a new version of it walks into production."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from sluice.api.base import ApiModel, Duration, ObjectMeta, Rule, first_duplicate
from sluice.api.status import ModelDeploymentStatus

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


class Backend(StrEnum):
    """Which serving runtime runs the model versions."""

    RAY = "ray"  # KubeRay RayService running the Sluice Serve application
    TRITON = "triton"  # tritonserver Deployments per version with the Sluice router in front


class ModelFormat(StrEnum):
    ONNX = "onnx"


class ModelSpec(ApiModel):
    """The model version this resource should serve. Changing it starts a rollout."""

    name: str = Field(description="Model name, as clients address it (/v2/models/NAME).", pattern=_NAME, max_length=63)
    format: ModelFormat = Field(default=ModelFormat.ONNX, description="Model file format. Only onnx for now.")
    uri: str = Field(
        description="Where the model file lives: file:///abs/path, file:relative/path (resolved against the "
        "YAML file's directory by `sluice run`), http(s)://, s3:// or gs://.",
        pattern=r"^(file:|https?://|s3://|gs://).+",
        max_length=2048,
    )
    version: str = Field(
        description="Version label of this model file, shown in status and returned with every response.",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
    )
    sha256: str | None = Field(
        default=None,
        description="Expected SHA-256 of the model file (hex). Loading fails when it does not match.",
        pattern=r"^[a-f0-9]{64}$",
        max_length=64,
    )


class Toleration(ApiModel):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.", max_length=316)
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, ge=0, description="How long a NoExecute taint is tolerated.")

    rules = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists must not set value",
            field=".value",
            violation=lambda t: ".value" if t.operator == "Exists" and t.value is not None else None,
        ),
    )


class Resources(ApiModel):
    """Compute for each replica of each model version."""

    cpu: str = Field(
        default="1", description="CPU request per replica (Kubernetes quantity).", pattern=_QUANTITY, max_length=32
    )
    memory: str = Field(
        default="2Gi", description="Memory request and limit per replica.", pattern=_QUANTITY, max_length=32
    )
    gpu: int = Field(
        default=0,
        ge=0,
        le=16,
        description="NVIDIA GPUs per replica (nvidia.com/gpu). 0 runs on CPU.",
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Node labels the replicas must be scheduled on."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the replicas tolerate (e.g. GPU nodes)."
    )


class Autoscaling(ApiModel):
    """Replica bounds; the backend scales between them on ongoing requests per replica."""

    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas per version.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas per version.")
    target_ongoing_requests: float = Field(
        default=4.0, gt=0, le=1000, description="In-flight requests per replica the autoscaler aims for."
    )

    rules = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            field=".minReplicas",
            violation=lambda a: ".minReplicas" if a.min_replicas > a.max_replicas else None,
        ),
    )


class Scaling(ApiModel):
    """How many replicas serve each version."""

    replicas: int = Field(default=1, ge=0, le=1000, description="Replicas per version when autoscaling is off.")
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale between bounds instead of a fixed replica count."
    )


class Batching(ApiModel):
    """Server-side dynamic batching: requests arriving close together run as one model call."""

    enabled: bool = Field(default=True, description="Batch concurrent requests into one model call.")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Largest batch one model call takes.")
    max_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="Longest a request waits for others to fill a batch, in milliseconds.",
    )
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=list,
        max_length=16,
        description="Batch sizes the scheduler prefers to form (Triton dynamic_batching), each <= maxBatchSize.",
    )

    rules = (
        Rule(
            cel="!has(self.preferredBatchSizes) || self.preferredBatchSizes.all(b, b <= self.maxBatchSize)",
            message="every preferred batch size must be at most maxBatchSize",
            field=".preferredBatchSizes",
            violation=lambda b: next(
                (f".preferredBatchSizes[{i}]" for i, n in enumerate(b.preferred_batch_sizes) if n > b.max_batch_size),
                None,
            ),
        ),
    )


class Traffic(ApiModel):
    """How the router assigns requests to versions."""

    sticky_header: str | None = Field(
        default=None,
        description="Request header whose value pins a caller to one version (hashed, stable across restarts).",
        pattern=r"^[A-Za-z0-9-]+$",
        max_length=128,
    )
    override_header: str = Field(
        default="x-sluice-variant",
        description="Request header naming the variant to use (stable or canary), for testing.",
        pattern=r"^[A-Za-z0-9-]+$",
        max_length=128,
    )
    fallback_to_stable: bool = Field(default=False, description="Retry a request on stable when the canary fails it.")
    request_timeout: Duration = Field(
        default="10s", description="Longest the router waits for a backend before answering 504."
    )
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body accepted; larger ones get 413.",
    )


class Pause(ApiModel):
    """A pause after a canary step. Without a duration it waits for `kubectl sluice promote`."""

    duration: Duration | None = Field(
        default=None, description="How long to hold this step. Empty means wait for a manual promote."
    )


class CanaryStep(ApiModel):
    """One step of a canary: send this share of traffic to the new version, then hold."""

    weight: int = Field(ge=1, le=100, description="Percent of requests sent to the new version.")
    pause: Pause | None = Field(
        default=None,
        description="Hold after reaching the weight. Omitted: move on after one passing analysis.",
    )


class CanaryStrategy(ApiModel):
    """Shift traffic to the new version in weighted steps, analysing at every interval."""

    steps: list[CanaryStep] = Field(
        min_length=1,
        max_length=20,
        description="Weights in strictly increasing order, each within 1..100.",
    )

    rules = (
        Rule(
            cel="self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))"
            " && self.steps.map(s, s.weight).isSorted()",
            message="canary step weights must be strictly increasing",
            field=".steps",
            violation=lambda c: next(
                (f".steps[{i}].weight" for i in range(1, len(c.steps)) if c.steps[i].weight <= c.steps[i - 1].weight),
                None,
            ),
        ),
    )


class ShadowStrategy(ApiModel):
    """Mirror live traffic to the new version, compare its answers, never return them."""

    mirror_percent: int = Field(default=100, ge=0, le=100, description="Percent of requests copied to the new version.")
    required_passing_analyses: int = Field(
        default=3, ge=1, le=1000, description="Passing analyses in a row needed to promote."
    )


class BlueGreenStrategy(ApiModel):
    """Run the new version beside the old one with no traffic, analyse, then switch all at once."""

    preview_mirror_percent: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Percent of live requests mirrored to the preview (green) version while it is analysed.",
    )
    required_passing_analyses: int = Field(
        default=1, ge=1, le=1000, description="Passing analyses of the preview needed before the switch."
    )
    auto_promote: bool = Field(
        default=True, description="Switch on passing analysis; false waits for `kubectl sluice promote`."
    )
    scale_down_delay: Duration = Field(
        default="30s", description="How long the old version keeps running after the switch, for a fast undo."
    )


class StrategyType(StrEnum):
    CANARY = "canary"
    SHADOW = "shadow"
    BLUE_GREEN = "blueGreen"


DEFAULT_CANARY_STEPS = (10, 25, 50, 75)


def _other_strategy(attr: str, strategy: StrategyType) -> Rule:
    alias = ".blueGreen" if attr == "blue_green" else f".{attr}"
    return Rule(
        cel=f"self.strategy == '{strategy.value}' || !has(self{alias})",
        message=f"{alias[1:]} settings are only used with strategy {strategy.value}; set strategy or remove them",
        field=alias,
        violation=lambda r: alias if r.strategy != strategy and getattr(r, attr) is not None else None,
    )


class Rollout(ApiModel):
    """How a new model version reaches production."""

    strategy: StrategyType = Field(default=StrategyType.CANARY, description="canary, shadow or blueGreen.")
    canary: CanaryStrategy | None = Field(
        default=None,
        description="Settings of the canary strategy. Omitted with strategy canary: steps of "
        f"{', '.join(map(str, DEFAULT_CANARY_STEPS))} percent.",
    )
    shadow: ShadowStrategy | None = Field(
        default=None, description="Settings of the shadow strategy. Omitted with strategy shadow: the defaults."
    )
    blue_green: BlueGreenStrategy | None = Field(
        default=None, description="Settings of the blueGreen strategy. Omitted with strategy blueGreen: the defaults."
    )

    rules = (
        _other_strategy("canary", StrategyType.CANARY),
        _other_strategy("shadow", StrategyType.SHADOW),
        _other_strategy("blue_green", StrategyType.BLUE_GREEN),
    )

    @model_validator(mode="after")
    def _default_chosen_strategy(self) -> Self:
        """Fill the chosen strategy's settings when omitted, so the engine never meets a missing sub-object."""
        if self.strategy == StrategyType.CANARY and self.canary is None:
            self.canary = CanaryStrategy(steps=[CanaryStep(weight=w) for w in DEFAULT_CANARY_STEPS])
        elif self.strategy == StrategyType.SHADOW and self.shadow is None:
            self.shadow = ShadowStrategy()
        elif self.strategy == StrategyType.BLUE_GREEN and self.blue_green is None:
            self.blue_green = BlueGreenStrategy()
        return self


class CheckType(StrEnum):
    """What a check measures. All but promql are built in and need no query."""

    ERROR_RATE = "error-rate"  # share of canary requests answered 5xx
    LATENCY_P99 = "latency-p99"  # 99th percentile canary latency, seconds
    PREDICTION_DRIFT = "prediction-drift"  # PSI of canary vs stable prediction scores
    SHADOW_DISAGREEMENT = "shadow-disagreement"  # share of mirrored requests whose label differs
    PROMQL = "promql"  # a custom PromQL query returning one number


_RATIO_TYPES = frozenset({CheckType.ERROR_RATE, CheckType.LATENCY_P99})
_FRACTION_TYPES = frozenset({CheckType.ERROR_RATE, CheckType.SHADOW_DISAGREEMENT})
_NONNEG_TYPES = frozenset({CheckType.LATENCY_P99, CheckType.PREDICTION_DRIFT})


class Check(ApiModel):
    """One metric the new version must satisfy at every analysis."""

    name: str = Field(description="Name shown in status and Events.", pattern=_NAME, max_length=63)
    type: CheckType = Field(description="What is measured.")
    max: float | None = Field(default=None, description="Fail when the value is above this.")
    min: float | None = Field(default=None, description="Fail when the value is below this.")
    max_ratio_to_stable: float | None = Field(
        default=None,
        gt=0,
        description="Fail when canary/stable exceeds this ratio (error-rate, latency-p99), tested sequentially "
        "on the counts so that small samples do not decide.",
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="PromQL for type promql. {{namespace}}, {{name}}, {{version}}, {{variant}} and "
        "{{interval}} are substituted.",
    )

    rules = (
        Rule(
            cel="self.type != 'promql' || has(self.query)",
            message="a check of type promql needs query",
            field=".query",
            violation=lambda c: ".query" if c.type == CheckType.PROMQL and not c.query else None,
        ),
        Rule(
            cel="self.type == 'promql' || !has(self.query)",
            message="query is only used by checks of type promql",
            field=".query",
            violation=lambda c: ".query" if c.type != CheckType.PROMQL and c.query is not None else None,
        ),
        Rule(
            cel="has(self.max) || has(self.min) || has(self.maxRatioToStable)",
            message="a check needs at least one bound: max, min or maxRatioToStable",
            field="",
            violation=lambda c: "" if c.max is None and c.min is None and c.max_ratio_to_stable is None else None,
        ),
        Rule(
            cel="!has(self.maxRatioToStable) || self.type in ['error-rate', 'latency-p99']",
            message="maxRatioToStable applies only to checks of type error-rate or latency-p99",
            field=".maxRatioToStable",
            violation=lambda c: (
                ".maxRatioToStable" if c.max_ratio_to_stable is not None and c.type not in _RATIO_TYPES else None
            ),
        ),
        Rule(
            cel="!has(self.min) || self.type == 'promql'",
            message="built-in checks are lower-is-better: use max (min applies only to type promql)",
            field=".min",
            violation=lambda c: ".min" if c.min is not None and c.type != CheckType.PROMQL else None,
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="min must not exceed max",
            field=".min",
            violation=lambda c: ".min" if c.min is not None and c.max is not None and c.min > c.max else None,
        ),
        Rule(
            cel="!has(self.max) || !(self.type in ['error-rate', 'shadow-disagreement'])"
            " || (self.max >= 0.0 && self.max <= 1.0)",
            message="max of an error-rate or shadow-disagreement check is a fraction within 0..1",
            field=".max",
            violation=lambda c: (
                ".max" if c.max is not None and c.type in _FRACTION_TYPES and not 0.0 <= c.max <= 1.0 else None
            ),
        ),
        Rule(
            cel="!has(self.max) || !(self.type in ['latency-p99', 'prediction-drift']) || self.max >= 0.0",
            message="max of a latency-p99 or prediction-drift check must not be negative",
            field=".max",
            violation=lambda c: ".max" if c.max is not None and c.type in _NONNEG_TYPES and c.max < 0.0 else None,
        ),
    )


class ProviderType(StrEnum):
    BUILTIN = "builtin"  # reads the router's own /metrics
    PROMETHEUS = "prometheus"  # PromQL over a Prometheus HTTP API


class ProviderSpec(ApiModel):
    """Where analysis reads metrics from."""

    type: ProviderType = Field(default=ProviderType.BUILTIN, description="builtin or prometheus.")
    address: str | None = Field(
        default=None,
        description="Prometheus base URL, e.g. http://prometheus.monitoring:9090 (type prometheus).",
        pattern=r"^https?://.+",
        max_length=2048,
    )

    rules = (
        Rule(
            cel="self.type != 'prometheus' || has(self.address)",
            message="provider prometheus needs address",
            field=".address",
            violation=lambda p: ".address" if p.type == ProviderType.PROMETHEUS and not p.address else None,
        ),
    )


class Analysis(ApiModel):
    """Metric analysis gating every step; failures past the threshold roll back."""

    interval: Duration = Field(default="30s", description="Time between analyses.")
    failure_threshold: int = Field(
        default=2, ge=1, le=100, description="Failed analyses (not necessarily in a row) that trigger rollback."
    )
    progress_deadline: Duration = Field(
        default="15m",
        description="Longest a step may go without progress (e.g. no data, canary not ready) before rollback.",
    )
    min_requests: int = Field(
        default=50,
        ge=0,
        description="Fewer new-version requests than this in an interval count as no data: progress holds.",
    )
    provider: ProviderSpec = Field(default_factory=ProviderSpec, description="Where the metrics come from.")
    checks: list[Check] = Field(
        default_factory=list,
        max_length=32,
        description="Checks run at every analysis. Empty means the built-in error-rate and latency-p99 defaults.",
    )

    rules = (
        Rule(
            cel="!has(self.checks) || self.checks.all(c, self.checks.exists_one(d, d.name == c.name))",
            message="check names must be unique",
            field=".checks",
            violation=lambda a: first_duplicate(".checks", [c.name for c in a.checks]),
        ),
        Rule(
            cel="!has(self.checks) || self.checks.all(c, c.type != 'promql')"
            " || (has(self.provider) && self.provider.type == 'prometheus')",
            message="checks of type promql need provider type prometheus",
            field=".checks",
            violation=lambda a: next(
                (
                    f".checks[{i}].type"
                    for i, c in enumerate(a.checks)
                    if c.type == CheckType.PROMQL and a.provider.type != ProviderType.PROMETHEUS
                ),
                None,
            ),
        ),
    )


class RollbackPolicy(ApiModel):
    """What happens when analysis fails."""

    automatic: bool = Field(default=True, description="Roll back on failed analysis without a human.")
    on_progress_deadline: bool = Field(
        default=True, description="Roll back when the progress deadline passes, not only mark it failed."
    )
    scale_down_canary: bool = Field(
        default=True, description="Scale the failed version to zero after routing all traffic to stable."
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    backend: Backend = Field(default=Backend.RAY, description="ray (KubeRay RayService) or triton.")
    model: ModelSpec = Field(description="The model version to serve. A change starts a rollout.")
    resources: Resources = Field(default_factory=Resources, description="Compute per replica.")
    scaling: Scaling = Field(default_factory=Scaling, description="Replicas per version.")
    batching: Batching = Field(default_factory=Batching, description="Server-side dynamic batching.")
    traffic: Traffic = Field(default_factory=Traffic, description="How requests are assigned to versions.")
    rollout: Rollout = Field(default_factory=Rollout, description="How a new version reaches production.")
    analysis: Analysis = Field(default_factory=Analysis, description="Metric analysis gating the rollout.")
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy, description="Rollback policy.")
    revision_history_limit: int = Field(
        default=10, ge=1, le=100, description="Past revisions kept in status for `kubectl sluice undo`."
    )
    triton_image: str | None = Field(
        default=None,
        description="tritonserver image for backend triton; the chart's default when empty.",
        max_length=512,
    )

    rules = (
        Rule(
            cel="self.rollout.strategy != 'canary' || !has(self.analysis.checks)"
            " || self.analysis.checks.all(c, c.type != 'shadow-disagreement')",
            message="shadow-disagreement needs mirrored traffic: use strategy shadow or blueGreen",
            field=".analysis.checks",
            violation=lambda s: next(
                (
                    f".analysis.checks[{i}].type"
                    for i, c in enumerate(s.analysis.checks)
                    if c.type == CheckType.SHADOW_DISAGREEMENT and s.rollout.strategy == StrategyType.CANARY
                ),
                None,
            ),
        ),
    )


class ModelDeployment(ApiModel):
    """One model behind one endpoint, served by Ray Serve or Triton, rolled out safely."""

    api_version: Literal["sluice.dev/v1alpha1"] = Field(default="sluice.dev/v1alpha1", description="API version.")
    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state, written by Sluice.")
