"""A VariantBackend over a Ray Serve DeploymentHandle of `OnnxModelDeployment` (used inside the ingress replica).

A handle call is a Ray actor call: on a small model it costs far more than the model itself. Requests that arrive
while `max_in_flight` calls are open to the deployment go together in one `infer_many` call (`Coalescer`), so
under load the ingress makes one Ray call per batch instead of one per request; at a low rate nothing waits.
"""

from __future__ import annotations

from typing import Any

from sluice.serving.backends.batcher import Feeds
from sluice.serving.backends.coalesce import Coalescer
from sluice.serving.errors import BackendError, BackendUnavailable
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata


class RayHandleBackend:
    """Calls one model-version deployment; its replicas batch requests from every ingress replica together."""

    def __init__(
        self, handle: Any, model_name: str, version: str, *, max_in_flight: int = 2, max_requests: int = 64
    ) -> None:
        self.handle = handle
        self.model_name = model_name
        self.version = version
        self.coalescer: Coalescer[Feeds, tuple[str, Any, int]] = Coalescer(
            self._call, max_rows=max_requests, max_in_flight=max_in_flight
        )

    async def _call(self, many: list[Feeds]) -> list[tuple[str, Any, int]]:
        try:
            return list(await self.handle.infer_many.remote(many))
        except Exception as exc:
            raise BackendUnavailable(f"model {self.model_name} {self.version}: replica call failed: {exc}") from exc

    async def infer(self, request: InferRequest) -> InferResponse:
        feeds = {t.name: t.data for t in request.inputs}
        status, payload, rows = await self.coalescer.submit(feeds)
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
        """Nothing to release: Serve owns the deployment's lifetime, and the ingress may route to it again later

        (the router closes a backend a new config drops only once its requests have ended, so nothing is queued).
        """
