"""One model version as a Ray Serve deployment: onnxruntime behind `@serve.batch`.

Answers are plain tuples (`("ok", outputs, batch_rows)` or `("unavailable", reason)`) rather than exceptions, so the
ingress maps them to the data plane's errors without depending on how Ray wraps exceptions across processes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy.typing as npt
from ray import serve

from sluice.serving.runtime import OnnxModel, RuntimeOptions, predict_many
from sluice.serving.tensors import ModelMetadata, Tensor

Feeds = dict[str, npt.NDArray[Any]]
Answer = tuple[str, Any, int]


def _rows(feeds: Feeds) -> int:
    return next(iter(feeds.values())).shape[0] if feeds else 1


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
        batched: Any = self._batched  # the @serve.batch wrapper, which mypy sees as the plain method
        batched.set_max_batch_size(max_batch_size)
        batched.set_batch_wait_timeout_s(max_wait_ms / 1000.0)

    async def ready(self) -> tuple[bool, str | None]:
        return self.model.ready, self.model.error

    async def metadata(self) -> ModelMetadata | str:
        return self.model.metadata if self.model.ready else (self.model.error or "not loaded")

    async def pid(self) -> int:
        return os.getpid()

    async def infer(self, feeds: Feeds) -> Answer:
        if not self.model.ready:
            return ("unavailable", self.model.error or "model not loaded", 0)
        try:
            if self.batching:
                outputs, rows = await self._batched(feeds)
            else:
                outputs, rows = await asyncio.to_thread(self.model.predict, feeds), _rows(feeds)
        except Exception as exc:
            return ("error", f"{type(exc).__name__}: {exc}", 0)
        return ("ok", outputs, rows)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _batched(self, batch: list[Feeds]) -> list[tuple[tuple[Tensor, ...], int]]:
        # In a thread so the replica keeps accepting (and queueing) requests while this batch runs.
        results = await asyncio.to_thread(predict_many, self.model, batch)
        rows = sum(_rows(f) for f in batch)
        return [(r, rows) for r in results]
