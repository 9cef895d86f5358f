"""Make the tiny, deterministic example models beside this file and record how they differ.

    python manifests/examples/models/make_models.py

fraud-v1.onnx          LogisticRegression on 4 synthetic features (seed 1)
fraud-v2.onnx          retrained on fresh data (seed 2): a good candidate, predictions close to v1
fraud-v2-bad.onnx      trained on corrupted labels and shifted features: a degraded candidate
models.json            sha256 of each file, and PSI / label disagreement of each v2 against v1 on the same traffic

Outputs: `label` (int64 [N]) and `probabilities` (float32 [N, 2]); the input is `features` (float32 [N, 4]).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import traffic  # noqa: E402

SCORE_EDGES = np.array([0.0, *[round(i * 0.05, 2) for i in range(1, 21)]])  # the router's score buckets


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64], eps: float = 1e-4) -> float:
    """Population stability index over the router's 0.05-wide score buckets."""
    e, _ = np.histogram(expected, bins=SCORE_EDGES)
    a, _ = np.histogram(actual, bins=SCORE_EDGES)
    pe = np.clip(e / e.sum(), eps, None)
    pa = np.clip(a / a.sum(), eps, None)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def _fit(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=500).fit(x, y)


def _to_onnx(model: Any, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[(traffic.INPUT_NAME, FloatTensorType([None, traffic.N_FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    onx.producer_name = "sluice-examples"
    onx.doc_string = path.stem
    path.write_bytes(onx.SerializeToString())


def make(out: Path = HERE) -> dict[str, Any]:
    x1 = traffic.features(4000, seed=1)
    v1 = _fit(x1, traffic.labels(x1, seed=11))
    x2 = traffic.features(4000, seed=2)
    v2 = _fit(x2, traffic.labels(x2, seed=12))
    # Degraded: 35 % of labels flipped and one feature's sign confused during "feature engineering".
    rng = np.random.default_rng(3)
    x3 = traffic.features(4000, seed=3)
    y3 = traffic.labels(x3, seed=13)
    flip = rng.random(len(y3)) < 0.35
    y3 = np.where(flip, 1 - y3, y3)
    x3_bad = x3.copy()
    x3_bad[:, 1] = -x3_bad[:, 1]
    bad = _fit(x3_bad, y3)

    files = {"fraud-v1.onnx": v1, "fraud-v2.onnx": v2, "fraud-v2-bad.onnx": bad}
    for name, model in files.items():
        _to_onnx(model, out / name)

    probe = traffic.features(20000, seed=99)
    p1 = v1.predict_proba(probe)[:, 1]
    report: dict[str, Any] = {"traffic": "traffic.features(20000, seed=99)", "models": {}}
    for name, model in files.items():
        p = model.predict_proba(probe)[:, 1]
        report["models"][name] = {
            "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest(),
            "bytes": (out / name).stat().st_size,
            "psi_vs_v1": round(psi(p1, p), 4),
            "label_disagreement_vs_v1": round(float(np.mean((p > 0.5) != (p1 > 0.5))), 4),
            "mean_score": round(float(p.mean()), 4),
        }
    (out / "models.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def make_mlp(path: Path, width: int = 512, layers: int = 4, n_in: int = traffic.N_FEATURES, seed: int = 0) -> Path:
    """A bigger ONNX MLP (random weights, `layers` x `width` Gemm+Relu, softmax over 2) where batching matters.

    Not committed (about 4 MB at the defaults): the batching benchmark builds it into a temporary directory.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev, dim = traffic.INPUT_NAME, n_in
    for i in range(layers):
        w = (rng.normal(0, 1 / np.sqrt(dim), size=(dim, width))).astype(np.float32)
        b = np.zeros(width, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]),
            helper.make_node("Relu", [f"g{i}"], [f"h{i}"]),
        ]
        prev, dim = f"h{i}", width
    wo = rng.normal(0, 1 / np.sqrt(dim), size=(dim, 2)).astype(np.float32)
    inits += [numpy_helper.from_array(wo, "wo"), numpy_helper.from_array(np.zeros(2, np.float32), "bo")]
    nodes += [
        helper.make_node("Gemm", [prev, "wo", "bo"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(traffic.INPUT_NAME, TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sluice-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


if __name__ == "__main__":
    print(json.dumps(make(), indent=2))
