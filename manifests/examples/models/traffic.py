"""Synthetic fraud-check requests, drawn from the distribution the example models were trained on.

`sluice run --load RPS` and the benchmarks use `features(n, seed)`; `make_models.py` trains on the same function.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

N_FEATURES = 4
INPUT_NAME = "features"
# Ground truth of the synthetic world: fraud log-odds = X @ TRUE_COEF + TRUE_BIAS.
TRUE_COEF = np.array([1.5, -2.0, 0.8, 1.2])
TRUE_BIAS = -1.0


def features(n: int, seed: int | None = None) -> npt.NDArray[np.float32]:
    """n rows of 4 float32 features: amount z-score, account age, merchant risk, velocity (all standardised)."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(n, N_FEATURES)).astype(np.float32)


def labels(x: npt.NDArray[np.float32], seed: int | None = None) -> npt.NDArray[np.int64]:
    """Fraud labels sampled from the true logistic model (so a fitted model recovers TRUE_COEF)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ TRUE_COEF + TRUE_BIAS)))
    return (rng.random(len(x)) < p).astype(np.int64)


def v2_request(x: npt.NDArray[np.float32]) -> dict[str, object]:
    """An Open Inference Protocol (v2) JSON body for the rows of x."""
    return {"inputs": [{"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
