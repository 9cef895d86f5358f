"""Write fraud-v1.profile.json: the reference profile of fraud-v1's training data, for the drift examples.

    python manifests/examples/models/make_profile.py

The rows are the ones make_models.py trained fraud-v1 on (traffic.features(4000, seed=1)), keyed as the router keys
them (`features[0]` .. `features[3]` of the 2-D input `features`), and the prediction is fraud-v1's score on them
(P(class 1), as the router scores a binary classifier). Same as `sluice profile` with `--as-input features`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import traffic  # noqa: E402

from sluice.drift.profile import build_profile  # noqa: E402

OUT = HERE / "fraud-v1.profile.json"


def make(out: Path = OUT) -> Path:
    x = traffic.features(4000, seed=1)
    session = ort.InferenceSession(str(HERE / "fraud-v1.onnx"), providers=["CPUExecutionProvider"])
    probabilities = next(o for o in session.run(None, {traffic.INPUT_NAME: x}) if np.asarray(o).ndim == 2)
    columns = {f"{traffic.INPUT_NAME}[{j}]": x[:, j] for j in range(x.shape[1])}
    columns["prediction"] = np.asarray(probabilities)[:, 1]
    profile = build_profile(columns, bins=10, sample_size=1000, source="traffic.features(4000, seed=1)")
    out.write_text(profile.to_json())
    return out


if __name__ == "__main__":
    print(f"wrote {make()}")
