"""ModelDeployment: one model behind one endpoint, and how a new version of it walks into production."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from sluice.api.base import ApiModel, Duration, ObjectMeta
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

    name: str = Field(description="Model name, as clients address it (/v2/models/NAME).", pattern=_NAME)
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
    )


class Toleration(ApiModel):
    """A Pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, ge=0, description="How long a NoExecute taint is tolerated.")


class Resources(ApiModel):
    """Compute for each replica of each model version."""

    cpu: str = Field(default="1", description="CPU request per replica (Kubernetes quantity).", pattern=_QUANTITY)
    memory: str = Field(default="2Gi", description="Memory request and limit per replica.", pattern=_QUANTITY)
    gpu: int = Field(
        default=0,
        ge=0,
        le=16,
        description="NVIDIA GPUs per replica (nvidia.com/gpu). 0 runs on CPU.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the replicas must be scheduled on."
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
    preferred_batch_sizes: list[int] = Field(
        default_factory=list,
        max_length=16,
        description="Batch sizes the scheduler prefers to form (Triton dynamic_batching).",
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
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(s, self.exists_one(t, t.weight == s.weight)) && self.map(s, s.weight).isSorted()",
                    "message": "canary step weights must be strictly increasing",
                    "fieldPath": ".weight",
                }
            ]
        },
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


class Rollout(ApiModel):
    """How a new model version reaches production."""

    strategy: StrategyType = Field(default=StrategyType.CANARY, description="canary, shadow or blueGreen.")
    canary: CanaryStrategy | None = Field(default=None, description="Settings of the canary strategy.")
    shadow: ShadowStrategy | None = Field(default=None, description="Settings of the shadow strategy.")
    blue_green: BlueGreenStrategy | None = Field(default=None, description="Settings of the blueGreen strategy.")


class CheckType(StrEnum):
    """What a check measures. All but promql are built in and need no query."""

    ERROR_RATE = "error-rate"  # share of canary requests answered 5xx
    LATENCY_P99 = "latency-p99"  # 99th percentile canary latency, seconds
    PREDICTION_DRIFT = "prediction-drift"  # PSI of canary vs stable prediction scores
    SHADOW_DISAGREEMENT = "shadow-disagreement"  # share of mirrored requests whose label differs
    PROMQL = "promql"  # a custom PromQL query returning one number


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


class ProviderType(StrEnum):
    BUILTIN = "builtin"  # reads the router's own /metrics
    PROMETHEUS = "prometheus"  # PromQL over a Prometheus HTTP API


class MetricProvider(ApiModel):
    """Where analysis reads metrics from."""

    type: ProviderType = Field(default=ProviderType.BUILTIN, description="builtin or prometheus.")
    address: str | None = Field(
        default=None,
        description="Prometheus base URL, e.g. http://prometheus.monitoring:9090 (type prometheus).",
        pattern=r"^https?://.+",
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
    provider: MetricProvider = Field(default_factory=MetricProvider, description="Where the metrics come from.")
    checks: list[Check] = Field(
        default_factory=list,
        max_length=32,
        description="Checks run at every analysis. Empty means the built-in error-rate and latency-p99 defaults.",
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


class ModelDeployment(ApiModel):
    """One model behind one endpoint, served by Ray Serve or Triton, rolled out safely."""

    api_version: Literal["sluice.dev/v1alpha1"] = Field(default="sluice.dev/v1alpha1", description="API version.")
    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state, written by Sluice.")
