"""Write fraud-v1.profile.json: the reference profile of fraud-v1's training data, for the drift examples.

    python manifests/examples/models/make_profile.py

The rows are the ones make_models.py trained fraud-v1 on (traffic.features(4000, seed=1)). The same as

    np.save("x.npy", traffic.features(4000, seed=1))
    sluice profile x.npy --model models/fraud-v1.onnx --sample-size 1000 -o models/fraud-v1.profile.json

which keys the columns as the router does (`features[0]` .. `features[3]`, from the model's input name) and adds
fraud-v1's score on each row as the prediction.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import traffic  # noqa: E402

from sluice.cli.profile import with_model_predictions  # noqa: E402
from sluice.drift.profile import build_profile  # noqa: E402

OUT = HERE / "fraud-v1.profile.json"
SOURCE = "traffic.features(4000, seed=1)"


def make(out: Path = OUT) -> Path:
    x = traffic.features(4000, seed=1)
    columns = with_model_predictions({f"c{j}": x[:, j] for j in range(x.shape[1])}, str(HERE / "fraud-v1.onnx"))
    profile = build_profile(columns, bins=10, sample_size=1000, source=SOURCE)
    out.write_text(profile.to_json())
    return out


if __name__ == "__main__":
    print(f"wrote {make()}")
