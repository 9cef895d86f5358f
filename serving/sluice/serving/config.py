"""What the data plane is told to do: the versions it serves and how traffic is split between them.

This is the contract between the control plane (operator, `sluice run`) and the data plane. It travels as
JSON: in a RayService's `user_config`, in the Triton router's ConfigMap, or in-process for `sluice serve`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

STABLE = "stable"
# The largest `max_request_bytes` any config may set (the ModelDeployment API's own bound).
MAX_REQUEST_BYTES_CAP = 1024 * 1024 * 1024
CANARY = "canary"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Model):
    """Dynamic batching of one model version."""

    enabled: bool = True
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    max_wait_ms: float = Field(default=2.0, ge=0, le=1000)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_in_flight: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Calls one router keeps open to a remote version; requests arriving meanwhile go in the next one.",
    )


class VariantConfig(_Model):
    """One served model version."""

    name: str = Field(description="Variant name: 'stable', 'canary', or an experiment arm.")
    version: str = Field(description="Model version label returned with every response.")
    uri: str = Field(description="Model file URI (file://, http(s)://, s3://, gs://).")
    sha256: str | None = None
    weight: int = Field(default=0, ge=0, le=100, description="Percent of primary traffic.")
    endpoint: str | None = Field(
        default=None, description="Backend address when the version runs elsewhere (e.g. a tritonserver)."
    )


class MirrorConfig(_Model):
    """Shadow traffic: a share of requests is copied to a variant whose answer is compared, never returned."""

    variant: str
    percent: int = Field(default=0, ge=0, le=100)


class ServingConfig(_Model):
    """Everything the router and backends need; weights and mirror can change live."""

    model_name: str
    variants: tuple[VariantConfig, ...] = Field(min_length=1)
    mirror: MirrorConfig | None = None
    sticky_header: str | None = None
    override_header: str = "x-sluice-variant"
    override_enabled: bool = Field(
        default=False,
        description="Honour `override_header` from any client. Off by default: a client that can pick the canary "
        "skews its analysis; callers holding the admin token may always use it.",
    )
    fallback_to_stable: bool = False
    request_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, le=MAX_REQUEST_BYTES_CAP)
    max_request_rows: int = Field(
        default=65_536, ge=1, le=16_777_216, description="Largest first dimension of any input tensor (else 413)."
    )
    max_request_elements: int = Field(
        default=4_194_304, ge=1, le=268_435_456, description="Most elements in all input tensors together (else 413)."
    )
    batching: BatchingConfig = BatchingConfig()
    gpus_per_replica: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        total = sum(v.weight for v in self.variants)
        if total != 100:
            raise ValueError(f"variant weights must sum to 100, got {total}")
        if self.mirror is not None and self.mirror.variant not in names:
            raise ValueError(f"mirror.variant {self.mirror.variant!r} is not one of {names}")
        return self

    def variant(self, name: str) -> VariantConfig:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)
