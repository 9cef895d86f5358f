"""In-process VariantBackend: onnxruntime in a worker thread behind an asyncio dynamic batcher.

Used by `sluice serve` / `sluice run` tests and the benchmarks where a Ray cluster would only add noise. One worker
thread per model: onnxruntime releases the GIL, so the event loop keeps forming the next batch while one runs.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from sluice.serving.backends.batcher import DynamicBatcher
from sluice.serving.config import BatchingConfig, ServingConfig, VariantConfig
from sluice.serving.errors import BackendError, BackendUnavailable
from sluice.serving.runtime import OnnxModel, RuntimeOptions, predict_many
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, Tensor

log = logging.getLogger(__name__)


class InProcessOnnxBackend:
    """A VariantBackend over one OnnxModel; loads lazily on first use so construction never blocks the event loop."""

    def __init__(self, model: OnnxModel, batching: BatchingConfig | None = None) -> None:
        self.model = model
        self.batching = batching if batching is not None else BatchingConfig()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnx-{model.name}-{model.version}")
        self._load_task: asyncio.Future[bool] | None = None
        self._batcher: DynamicBatcher[tuple[Tensor, ...]] = DynamicBatcher(
            partial(predict_many, model),
            self._executor,
            max_batch_size=self.batching.max_batch_size,
            max_wait_s=self.batching.max_wait_ms / 1000.0,
        )
        self._closed = False

    @property
    def batches_run(self) -> int:
        return self._batcher.batches_run

    @classmethod
    def for_variant(
        cls, variant: VariantConfig, config: ServingConfig, base_dir: Path | None, options: RuntimeOptions | None = None
    ) -> InProcessOnnxBackend:
        model = OnnxModel(
            config.model_name,
            variant.version,
            variant.uri,
            sha256=variant.sha256,
            base_dir=base_dir,
            options=options or RuntimeOptions(),
        )
        return cls(model, config.batching)

    async def _ensure_loaded(self) -> bool:
        if self._closed:
            raise BackendUnavailable(f"model {self.model.name} {self.model.version}: backend is closed")
        if self._load_task is None:
            self._load_task = asyncio.get_running_loop().run_in_executor(self._executor, self.model.load)
        return await asyncio.shield(self._load_task)

    async def ready(self) -> bool:
        return await self._ensure_loaded()

    async def metadata(self) -> ModelMetadata:
        if not await self._ensure_loaded():
            raise BackendUnavailable(f"model not ready: {self.model.error}")
        return self.model.metadata

    async def infer(self, request: InferRequest) -> InferResponse:
        if not await self._ensure_loaded():
            raise BackendUnavailable(f"model not ready: {self.model.error}")
        feeds = {t.name: t.data for t in request.inputs}
        if self.batching.enabled and self.batching.max_batch_size > 1:
            try:
                outputs, batch = await self._batcher.submit(feeds)
            except BackendUnavailable:
                raise
            except Exception as exc:
                raise BackendError(f"model {self.model.name} {self.model.version} failed: {exc}") from exc
        else:
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, self.model.predict, feeds)
            except Exception as exc:
                raise BackendError(f"model {self.model.name} {self.model.version} failed: {exc}") from exc
            batch = next(iter(feeds.values())).shape[0] if feeds else 1
        return InferResponse(
            model_name=self.model.name,
            model_version=self.model.version,
            outputs=outputs,
            id=request.id,
            parameters={"batch_size": str(batch)},
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batcher.close(BackendUnavailable("backend closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)


def from_variant(variant: VariantConfig, config: ServingConfig) -> InProcessOnnxBackend:
    """Registry entry (`make_variant_backend("onnx", ...)`): URIs must be absolute here (`file:relative` needs a
    base dir, which `sluice.serving.launch` passes to `InProcessOnnxBackend.for_variant`)."""
    return InProcessOnnxBackend.for_variant(variant, config, base_dir=None)
