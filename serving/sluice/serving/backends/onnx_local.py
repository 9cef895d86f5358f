"""In-process Backend: onnxruntime in a worker thread behind an asyncio dynamic batcher.

Used by `sluice serve` / `sluice run` tests and the benchmarks where a Ray cluster would only add noise. One worker
thread per model: onnxruntime releases the GIL, so the event loop keeps forming the next batch while one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from sluice.serving.config import BatchingConfig, ServingConfig, VariantConfig
from sluice.serving.errors import BackendError, BackendUnavailable
from sluice.serving.runtime import OnnxModel, RuntimeOptions, predict_many
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, Tensor

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, npt.NDArray[Any]]
    future: asyncio.Future[tuple[tuple[Tensor, ...], int]]


class OnnxLocalBackend:
    """A Backend over one OnnxModel; loads lazily on first use so construction never blocks the event loop."""

    def __init__(self, model: OnnxModel, batching: BatchingConfig | None = None) -> None:
        self.model = model
        self.batching = batching if batching is not None else BatchingConfig()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnx-{model.name}-{model.version}")
        self._load_task: asyncio.Future[bool] | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_run = 0

    @classmethod
    def for_variant(
        cls, variant: VariantConfig, config: ServingConfig, base_dir: Path | None, options: RuntimeOptions | None = None
    ) -> OnnxLocalBackend:
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
            outputs, batch = await self._enqueue(feeds)
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

    async def _enqueue(self, feeds: dict[str, npt.NDArray[Any]]) -> tuple[tuple[Tensor, ...], int]:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run_batches(self._queue))
        pending = _Pending(feeds, loop.create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _run_batches(self, queue: asyncio.Queue[_Pending]) -> None:
        """Take the first waiting request, gather more until the batch is full or max_wait passes, run, repeat."""
        loop = asyncio.get_running_loop()
        wait_s = self.batching.max_wait_ms / 1000.0
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + wait_s
            while len(batch) < self.batching.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.done()]  # cancelled callers
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, predict_many, self.model, [p.feeds for p in batch])
            except Exception as exc:
                error = BackendError(f"model {self.model.name} {self.model.version} failed: {exc}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            self.batches_run += 1
            rows = sum(next(iter(p.feeds.values())).shape[0] if p.feeds else 1 for p in batch)
            for p, out in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((out, rows))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue is not None:
            while not self._queue.empty():
                p = self._queue.get_nowait()
                if not p.future.done():
                    p.future.set_exception(BackendUnavailable("backend closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)


def from_variant(variant: VariantConfig, config: ServingConfig) -> OnnxLocalBackend:
    """Registry entry (`make_backend("onnx", ...)`): URIs must be absolute here; `file:relative` needs launch.py."""
    return OnnxLocalBackend.for_variant(variant, config, base_dir=None)
