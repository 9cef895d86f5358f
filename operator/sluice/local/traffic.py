"""Synthetic requests for `sluice run --load RPS`: rows shaped like the model's first input, at a fixed rate."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import numpy as np


class Traffic:
    """Standard-normal rows shaped like the model's first input, `rps` a second, until `stop` is set."""

    def __init__(self, url: str, model: str, rps: float) -> None:
        self.url, self.model, self.rps = url, model, rps
        self.sent = self.failed = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = np.random.default_rng(0)
        async with httpx.AsyncClient(timeout=30) as client:
            meta = (await client.get(f"{self.url}/v2/models/{self.model}")).json()
            first = meta["inputs"][0]
            width = [d if d > 0 else 1 for d in first["shape"][1:]]
            period, next_at = 1.0 / self.rps, time.monotonic()
            while not stop.is_set():
                row = rng.standard_normal(size=[1, *width]).astype(np.float32)
                body = {
                    "inputs": [
                        {
                            "name": first["name"],
                            "shape": list(row.shape),
                            "datatype": "FP32",
                            "data": row.ravel().tolist(),
                        }
                    ]
                }
                try:
                    resp = await client.post(f"{self.url}/v2/models/{self.model}/infer", json=body)
                    self.failed += resp.status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                self.sent += 1
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
