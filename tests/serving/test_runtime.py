"""The ONNX model runtime and the in-process backend: real onnxruntime, real files, a real HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sluice.serving.backends.onnx_inprocess import InProcessOnnxBackend
from sluice.serving.config import BatchingConfig
from sluice.serving.errors import BackendUnavailable
from sluice.serving.runtime import (
    CPU,
    ModelLoadError,
    OnnxModel,
    RuntimeOptions,
    fetch,
    merge_inputs,
    predict_many,
    resolve_uri,
)
from sluice.serving.tensors import InferRequest, Tensor

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"
V1 = MODELS / "fraud-v1.onnx"


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def test_loads_absolute_file_uri_and_reports_the_provider_in_use() -> None:
    m = OnnxModel("fraud", "v1", V1.as_uri())
    assert m.load(), m.error
    assert m.metadata.provider == CPU == m._session.get_providers()[0]
    assert [s.name for s in m.metadata.inputs] == ["features"]
    assert m.metadata.inputs[0].shape == (-1, 4)
    assert [(s.name, s.datatype) for s in m.metadata.outputs] == [("label", "INT64"), ("probabilities", "FP32")]
    label, probs = m.predict({"features": _x(5)})
    assert probs.data.shape == (5, 2)
    np.testing.assert_allclose(probs.data.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(label.data, probs.data.argmax(axis=1))


def test_relative_file_uri_resolves_against_base_dir() -> None:
    assert resolve_uri("file:fraud-v1.onnx", MODELS) == V1.as_uri()
    assert OnnxModel("fraud", "v1", "file:fraud-v1.onnx", base_dir=MODELS).load()
    m = OnnxModel("fraud", "v1", "file:fraud-v1.onnx")
    assert not m.load()
    assert "relative" in (m.error or "")


@pytest.fixture
def http_models(http_dir: tuple[str, Path]) -> str:
    """The example models over real HTTP (tests/support/object_stores.py)."""
    url, root = http_dir
    for name in ("fraud-v1.onnx", "fraud-v2.onnx"):
        shutil.copy(MODELS / name, root / name)
    return url


def test_http_uri_downloads(http_models: str) -> None:
    m = OnnxModel("fraud", "v2", f"{http_models}/fraud-v2.onnx")
    assert m.load(), m.error


def test_http_404_and_size_cap_are_clear_errors(http_models: str) -> None:
    m = OnnxModel("fraud", "v9", f"{http_models}/missing.onnx")
    assert not m.load()
    assert "HTTP 404" in (m.error or "")
    with pytest.raises(ModelLoadError, match="cap"):
        fetch(f"{http_models}/fraud-v1.onnx", options=RuntimeOptions(max_bytes=100))


def test_sha256_good_and_bad() -> None:
    good = hashlib.sha256(V1.read_bytes()).hexdigest()
    assert OnnxModel("fraud", "v1", V1.as_uri(), sha256=good).load()
    bad = "0" * 64
    m = OnnxModel("fraud", "v1", V1.as_uri(), sha256=bad)
    assert not m.load()
    assert not m.ready
    assert bad in (m.error or "")
    assert good in (m.error or "")
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        m.predict({"features": _x(1)})


def test_object_stores_need_their_extra_and_unknown_schemes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def without_object_stores(name: str, *args: object, **kw: object) -> object:
        if name in ("boto3", "google.cloud"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", without_object_stores)  # a laptop without the extras
    with pytest.raises(ModelLoadError, match=r"sluice\[s3\]"):
        fetch("s3://bucket/model.onnx")
    with pytest.raises(ModelLoadError, match=r"google-cloud-storage; install the extra: pip install 'sluice\[gcs\]'"):
        fetch("gs://bucket/model.onnx")
    with pytest.raises(ModelLoadError, match="unsupported scheme 'ftp'"):
        fetch("ftp://host/model.onnx")


def test_corrupt_file_is_never_ready(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    m = OnnxModel("x", "1", bad.as_uri())
    assert not m.load()
    assert "cannot open" in (m.error or "")


def test_warm_up_failure_means_not_ready_with_reason(tmp_path: Path) -> None:
    """Reshape [N,4] -> [3,-1] loads fine but fails on the warm-up batch of one row."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad-reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(model)
    m = OnnxModel("x", "1", path.as_uri())
    assert not m.load()
    assert "warm-up" in (m.error or "")


def test_predict_many_equals_one_by_one() -> None:
    m = OnnxModel("fraud", "v1", V1.as_uri())
    assert m.load()
    requests = [{"features": _x(n, seed=n)} for n in (1, 3, 2)]
    batched = predict_many(m, requests)
    for req, got in zip(requests, batched, strict=True):
        want = m.predict(req)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(a.data, b.data, atol=1e-5)
    # Different trailing shapes cannot be stacked: merge refuses rather than mixing them.
    assert merge_inputs([{"features": _x(1)}, {"features": np.zeros((1, 5), np.float32)}]) is None


async def test_local_backend_forms_batches_under_concurrency() -> None:
    model = OnnxModel("fraud", "v1", V1.as_uri())
    backend = InProcessOnnxBackend(model, BatchingConfig(max_batch_size=16, max_wait_ms=20))
    try:
        assert await backend.ready()
        rows = [_x(1, seed=i) for i in range(32)]
        responses = await asyncio.gather(*(backend.infer(InferRequest(inputs=(Tensor("features", r),))) for r in rows))
        sizes = [int(r.parameters["batch_size"]) for r in responses]
        assert max(sizes) > 1
        assert backend.batches_run < 32
        for r, resp in zip(rows, responses, strict=True):
            np.testing.assert_allclose(resp.outputs[1].data, model.predict({"features": r})[1].data, atol=1e-5)
    finally:
        await backend.close()
        await backend.close()  # idempotent


async def test_local_backend_without_batching_runs_one_by_one() -> None:
    backend = InProcessOnnxBackend(OnnxModel("fraud", "v1", V1.as_uri()), BatchingConfig(enabled=False))
    try:
        responses = await asyncio.gather(
            *(backend.infer(InferRequest(inputs=(Tensor("features", _x(1)),))) for _ in range(8))
        )
        assert {r.parameters["batch_size"] for r in responses} == {"1"}
    finally:
        await backend.close()


async def test_local_backend_not_ready_says_why() -> None:
    backend = InProcessOnnxBackend(OnnxModel("fraud", "v1", V1.as_uri(), sha256="1" * 64))
    try:
        assert not await backend.ready()
        with pytest.raises(BackendUnavailable, match="sha256 mismatch"):
            await backend.infer(InferRequest(inputs=(Tensor("features", _x(1)),)))
        with pytest.raises(BackendUnavailable, match="sha256 mismatch"):
            await backend.metadata()
    finally:
        await backend.close()


def test_gs_uris_load_through_google_cloud_storage(gcs: Any) -> None:
    gcs.bucket("models").blob("fraud/v1.onnx").upload_from_string(V1.read_bytes())
    good = hashlib.sha256(V1.read_bytes()).hexdigest()
    model = OnnxModel("fraud", "v1", "gs://models/fraud/v1.onnx", sha256=good)
    assert model.load(), model.error
    label, _ = model.predict({"features": _x(2)})
    assert label.shape == (2,)
    with pytest.raises(ModelLoadError, match="no such object in bucket 'models'"):
        fetch("gs://models/fraud/v9.onnx")
    with pytest.raises(ModelLoadError, match="over the 10-byte cap"):
        fetch("gs://models/fraud/v1.onnx", options=RuntimeOptions(max_bytes=10))


def test_s3_uris_load_through_boto3(s3: Any) -> None:
    """moto's S3 server (tests/support/object_stores.py), reached by boto3 through AWS_ENDPOINT_URL."""
    s3.put_object(Bucket="models", Key="fraud/v1.onnx", Body=V1.read_bytes())
    good = hashlib.sha256(V1.read_bytes()).hexdigest()
    model = OnnxModel("fraud", "v1", "s3://models/fraud/v1.onnx", sha256=good)
    assert model.load(), model.error
    label, _ = model.predict({"features": _x(2)})
    assert label.shape == (2,)
    missing = OnnxModel("fraud", "v9", "s3://models/fraud/v9.onnx")
    assert not missing.load()
    assert "no such object in bucket 'models'" in (missing.error or "")
    with pytest.raises(ModelLoadError, match="no such bucket 'nowhere'"):
        fetch("s3://nowhere/fraud/v1.onnx")
    with pytest.raises(ModelLoadError, match=f"{V1.stat().st_size} bytes, over the 10-byte cap"):
        fetch("s3://models/fraud/v1.onnx", options=RuntimeOptions(max_bytes=10))
