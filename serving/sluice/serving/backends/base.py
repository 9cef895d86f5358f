"""The seam between the router and wherever a model version runs."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata


@runtime_checkable
class VariantBackend(Protocol):
    """One model version the router can send requests to.

    Implementations raise the errors of `sluice.serving.errors` so every host maps them to the same HTTP status.
    """

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run the model on one request (the backend may batch it with others)."""
        ...

    async def ready(self) -> bool:
        """True once the model is loaded and warmed up."""
        ...

    async def metadata(self) -> ModelMetadata:
        """Inputs, outputs, version and execution provider of the loaded model."""
        ...

    async def close(self) -> None:
        """Release connections or sessions; idempotent."""
        ...
