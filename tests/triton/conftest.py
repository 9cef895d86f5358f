"""Fixtures for the Triton area: real ONNX models (skl2onnx) and one real tritonserver for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sluice.serving.triton.repository import Flavour, ModelVersion, RepositorySpec, TensorSignature, write_model
from sluice.serving.triton.server import TritonServer

MODEL = "lr"
BROKEN = "broken"
LOOKUP = "lookup"


def make_onnx(path: Path, seed: int) -> Path:
    """A LogisticRegression on 4 float features, ZipMap off: outputs `label` [N] int64, `probabilities` [N, 2]."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, seed % 4] + 0.5 * x[:, (seed + 1) % 4] > 0).astype(np.int64)
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1], options={"zipmap": False}, target_opset=15)
    path.write_bytes(onx.SerializeToString())
    return path


def make_lookup_onnx(path: Path) -> Path:
    """Y[i] = TABLE[X[i]] for int64 indices X [N, 1]: an index outside 0..9 makes onnxruntime fail that batch."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(LOOKUP_TABLE, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "X"], ["Y"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("X", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 1, 2])],
        initializer=[table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


LOOKUP_TABLE = np.arange(20, dtype=np.float32).reshape(10, 2)


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of the model that answer differently, so a test can tell which one ran."""
    root = tmp_path_factory.mktemp("onnx")
    return {"v1": make_onnx(root / "v1.onnx", 1), "v2": make_onnx(root / "v2.onnx", 2)}


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory, onnx_models: dict[str, Path]) -> Path:
    """`lr` with versions v1 (Triton 1) and v2 (Triton 2), python flavour; `broken` has a garbage model file."""
    repo = tmp_path_factory.mktemp("repo")
    spec = RepositorySpec(
        model_name=MODEL,
        versions=(ModelVersion("v1", "file:v1.onnx"), ModelVersion("v2", "file:v2.onnx")),
        flavour=Flavour.PYTHON,
        max_batch_size=32,
        preferred_batch_sizes=(8, 16),
        max_queue_delay_us=20_000,  # generous so concurrent requests reliably meet in one batch on 2 cores
    )
    write_model(spec, repo, onnx_models)
    garbage = repo / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model")
    broken = RepositorySpec(model_name=BROKEN, versions=(ModelVersion("v1", "file:garbage.onnx"),))
    # The signature is given (it cannot be read from garbage), so the config is valid and loading fails in model.py.
    inputs = (TensorSignature("X", "TYPE_FP32", (4,)),)
    outputs = (TensorSignature("label", "TYPE_INT64", (1,), batch_only=True),)
    write_model(broken, repo, {"v1": garbage}, inputs=inputs, outputs=outputs)
    lookup = RepositorySpec(model_name=LOOKUP, versions=(ModelVersion("v1", "file:lookup.onnx"),), max_batch_size=64)
    write_model(lookup, repo, {"v1": make_lookup_onnx(repo / "lookup.onnx")})
    return repo


@pytest.fixture(scope="session")
def triton(repository: Path) -> Iterator[TritonServer]:
    """The real tritonserver, explicit model control: `lr` and `lookup` load at start, `broken` in its test."""
    server = TritonServer(repository, model_control_mode="explicit", load_models=(MODEL, LOOKUP), startup_timeout_s=90)
    try:
        server.start()
        yield server
    finally:
        server.stop()
