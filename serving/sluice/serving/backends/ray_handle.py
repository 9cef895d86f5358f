"""A Backend over a Ray Serve DeploymentHandle of `OnnxModelDeployment` (used inside the ingress replica)."""

from __future__ import annotations

from typing import Any

from sluice.serving.errors import BackendError, BackendUnavailable
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata


class RayHandleBackend:
    """Calls one model-version deployment; its replicas batch requests from every ingress replica together."""

    def __init__(self, handle: Any, model_name: str, version: str) -> None:
        self.handle = handle
        self.model_name = model_name
        self.version = version

    async def infer(self, request: InferRequest) -> InferResponse:
        feeds = {t.name: t.data for t in request.inputs}
        try:
            status, payload, rows = await self.handle.infer.remote(feeds)
        except Exception as exc:
            raise BackendUnavailable(f"model {self.model_name} {self.version}: replica call failed: {exc}") from exc
        if status == "unavailable":
            raise BackendUnavailable(f"model {self.model_name} {self.version} not ready: {payload}")
        if status != "ok":
            raise BackendError(f"model {self.model_name} {self.version} failed: {payload}")
        return InferResponse(
            model_name=self.model_name,
            model_version=self.version,
            outputs=tuple(payload),
            id=request.id,
            parameters={"batch_size": str(rows)},
        )

    async def ready(self) -> bool:
        try:
            ok, _ = await self.handle.ready.remote()
        except Exception:
            return False
        return bool(ok)

    async def not_ready_reason(self) -> str | None:
        _, reason = await self.handle.ready.remote()
        return str(reason) if reason else None

    async def metadata(self) -> ModelMetadata:
        try:
            meta = await self.handle.metadata.remote()
        except Exception as exc:
            raise BackendUnavailable(f"model {self.model_name} {self.version}: replica call failed: {exc}") from exc
        if isinstance(meta, str):
            raise BackendUnavailable(f"model {self.model_name} {self.version} not ready: {meta}")
        if not isinstance(meta, ModelMetadata):
            raise BackendError(f"model {self.model_name} {self.version}: unexpected metadata {type(meta).__name__}")
        return meta

    async def close(self) -> None:
        """Nothing to release: Serve owns the deployment's lifetime."""
