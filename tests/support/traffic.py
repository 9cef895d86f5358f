"""Requests and models for tests and benchmarks that drive a real data plane.

`send` posts the example models' synthetic feature rows (manifests/examples/models/traffic.py, the generator the
examples' models were trained on) and counts which version answered; `logistic_onnx` writes a small skl2onnx model
with a dynamic batch dimension.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"


class _Served(Protocol):
    @property
    def url(self) -> str: ...


def _example_traffic() -> Any:
    if str(MODELS) not in sys.path:
        sys.path.insert(0, str(MODELS))
    import traffic

    return traffic


async def send(plane: _Served, n: int, seed: int, model: str = "fraud") -> Counter[str]:
    """`n` single-row requests of the examples' traffic (seeded); how many each model version answered."""
    traffic = _example_traffic()
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=30) as client:
        for row in traffic.features(n, seed=seed):
            resp = await client.post(
                f"{plane.url}/v2/models/{model}/infer", json=traffic.v2_request(row.reshape(1, -1))
            )
            resp.raise_for_status()
            seen[resp.json()["model_version"]] += 1
    return seen


def logistic_onnx(path: Path, target_opset: int | None = None, width: int = 4) -> Path:
    """A LogisticRegression on `width` float features (label: x0 + x1 > 0), no ZipMap: `label` [N], `probabilities`
    [N, 2]."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, width)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1], options={"zipmap": False}, target_opset=target_opset)
    path.write_bytes(onx.SerializeToString())
    return path
