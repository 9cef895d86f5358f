"""Synthetic requests for `sluice run --load RPS`: rows shaped like the model's first input, at a fixed rate."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np


class Tally:
    """Requests sent and failed, each failure by its cause (HTTP status or the client's error), for the last line."""

    def __init__(self) -> None:
        self.sent = 0
        self.causes: Counter[str] = Counter()

    @property
    def failed(self) -> int:
        return sum(self.causes.values())

    def answered(self, status: int) -> None:
        self.sent += 1
        if status >= 500:
            self.causes[str(status)] += 1

    def broke(self, error: Exception) -> None:
        self.sent += 1
        self.causes[type(error).__name__] += 1

    def summary(self) -> str:
        """`N requests (0 failed)` or `N requests (2 failed: 503 x1, ReadTimeout x1)`."""
        if not self.causes:
            return f"{self.sent} requests (0 failed)"
        causes = ", ".join(f"{cause} x{n}" for cause, n in sorted(self.causes.items()))
        return f"{self.sent} requests ({self.failed} failed: {causes})"


async def first_input(client: httpx.AsyncClient, url: str, model: str) -> tuple[str, list[int]]:
    """The model's first input: its name and the shape of one row (dynamic dimensions taken as 1)."""
    meta = (await client.get(f"{url}/v2/models/{model}")).json()
    first = meta["inputs"][0]
    return str(first["name"]), [d if d > 0 else 1 for d in first["shape"][1:]]


def infer_body(name: str, row: np.ndarray[Any, Any]) -> dict[str, Any]:
    """A v2 JSON infer request of one FP32 tensor."""
    return {"inputs": [{"name": name, "shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}]}


class Traffic:
    """Standard-normal rows shaped like the model's first input, `rps` a second, until `stop` is set.

    With `shift_after_s`, every value gets `shift` added from that many seconds on: inputs that drift.
    """

    def __init__(
        self, url: str, model: str, rps: float, *, shift_after_s: float | None = None, shift: float = 1.0
    ) -> None:
        self.url, self.model, self.rps = url, model, rps
        self.shift_after_s, self.shift = shift_after_s, shift
        self.tally = Tally()
        self.shifted = False

    async def run(self, stop: asyncio.Event) -> None:
        rng = np.random.default_rng(0)
        async with httpx.AsyncClient(timeout=30) as client:
            name, width = await first_input(client, self.url, self.model)
            period, next_at = 1.0 / self.rps, time.monotonic()
            started = next_at
            while not stop.is_set():
                row = rng.standard_normal(size=[1, *width]).astype(np.float32)
                if self.shift_after_s is not None and time.monotonic() - started >= self.shift_after_s:
                    row += np.float32(self.shift)
                    self.shifted = True
                try:
                    resp = await client.post(f"{self.url}/v2/models/{self.model}/infer", json=infer_body(name, row))
                    self.tally.answered(resp.status_code)
                except httpx.HTTPError as exc:
                    self.tally.broke(exc)
                next_at += period
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
