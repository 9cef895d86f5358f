"""One model version as a Ray Serve deployment: onnxruntime in a worker thread behind Sluice's dynamic batcher.

Not `@serve.batch`: Ray Serve 2.60 forms a new batch every `batch_wait_timeout_s` even while the previous one still
runs, so under load it ran many batches of one or two requests (mean 1.2 at 16 clients, slower than no batching).
`DynamicBatcher` (the in-process backend's) starts the next batch when the model is free, with everything that queued.

Answers are plain tuples (`("ok", outputs, batch_rows)` or `("unavailable", reason)`) rather than exceptions, so the
ingress maps them to the data plane's errors without depending on how Ray wraps exceptions across processes.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ray import serve

from sluice.serving.backends.batcher import DynamicBatcher, Feeds, rows_of
from sluice.serving.runtime import OnnxModel, RuntimeOptions, predict_many
from sluice.serving.tensors import ModelMetadata, Tensor

Answer = tuple[str, Any, int]


@serve.deployment
class OnnxModelDeployment:
    """Loads in the constructor and never crashes on a bad model: `ready()` then says why it is not ready."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        uri: str,
        sha256: str | None = None,
        base_dir: str | None = None,
        batching: bool = True,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        intra_op_threads: int = 1,
    ) -> None:
        self.model = OnnxModel(
            name,
            version,
            uri,
            sha256=sha256,
            base_dir=Path(base_dir) if base_dir else None,
            options=RuntimeOptions(intra_op_threads=intra_op_threads),
        )
        self.model.load()
        self.batching = batching and max_batch_size > 1
        # One worker thread: onnxruntime releases the GIL, so the replica keeps queueing requests while a batch runs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"onnx-{name}-{version}")
        self._batcher: DynamicBatcher[tuple[Tensor, ...]] = DynamicBatcher(
            partial(predict_many, self.model),
            self._executor,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_ms / 1000.0,
        )

    async def ready(self) -> tuple[bool, str | None]:
        return self.model.ready, self.model.error

    async def metadata(self) -> ModelMetadata | str:
        return self.model.metadata if self.model.ready else (self.model.error or "not loaded")

    async def pid(self) -> int:
        return os.getpid()

    async def infer_many(self, many: list[Feeds]) -> list[Answer]:
        """Answers for requests the ingress coalesced into one call (each still goes through the batcher)."""
        return list(await asyncio.gather(*(self.infer(feeds) for feeds in many)))

    async def infer(self, feeds: Feeds) -> Answer:
        if not self.model.ready:
            return ("unavailable", self.model.error or "model not loaded", 0)
        try:
            if self.batching:
                outputs, rows = await self._batcher.submit(feeds)
            else:
                loop = asyncio.get_running_loop()
                outputs, rows = await loop.run_in_executor(self._executor, self.model.predict, feeds), rows_of(feeds)
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}", 0)
        return ("ok", outputs, rows)
