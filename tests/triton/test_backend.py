"""The Triton backend against the real tritonserver: results, versions, batching, metadata, failures."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tests.triton.conftest import BROKEN, LOOKUP, LOOKUP_TABLE, MODEL
from tritonclient.utils import InferenceServerException

from sluice.serving.backends import make_variant_backend
from sluice.serving.backends.base import VariantBackend
from sluice.serving.backends.triton import TritonBackend
from sluice.serving.config import ServingConfig
from sluice.serving.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidInput, ModelNotFound
from sluice.serving.tensors import InferRequest, Tensor
from sluice.serving.triton.repository import Flavour, ModelVersion, RepositorySpec, write_model
from sluice.serving.triton.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]

RNG = np.random.default_rng(7)


def _request(x: np.ndarray, request_id: str | None = None) -> InferRequest:
    return InferRequest(inputs=(Tensor("X", x.astype(np.float32)),), id=request_id)


def _onnxruntime(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"X": x.astype(np.float32)}), strict=True))


def _metric(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
async def backend_v1(triton: TritonServer) -> AsyncIterator[TritonBackend]:
    """Without coalescing: every request reaches Triton on its own (so Triton's own batching can be observed)."""
    backend = TritonBackend(triton.grpc_url, MODEL, version="v1", timeout_s=10, coalesce=False)
    try:
        yield backend
    finally:
        await backend.close()


@pytest.mark.parametrize("label", ["v1", "v2"])
async def test_infer_matches_onnxruntime(triton: TritonServer, onnx_models: dict[str, Path], label: str) -> None:
    backend = TritonBackend(triton.grpc_url, MODEL, version=label)
    try:
        assert isinstance(backend, VariantBackend)
        assert await backend.ready()
        x = RNG.normal(size=(5, 4))
        response = await backend.infer(_request(x, "req-1"))
        expected = _onnxruntime(onnx_models[label], x)
        got = {t.name: t.data for t in response.outputs}
        assert response.model_version == label
        assert response.id == "req-1"
        assert set(got) == set(expected)
        for name, array in expected.items():
            assert got[name].shape == array.shape  # Triton's [N, 1] reshape of `label` is undone
            assert got[name].dtype == array.dtype
            np.testing.assert_allclose(got[name], array, rtol=1e-6)
    finally:
        await backend.close()


async def test_versions_answer_differently(triton: TritonServer) -> None:
    """v1 and v2 are different models; the label routes to the right Triton version number."""
    x = RNG.normal(size=(32, 4))  # max_batch_size of the test model
    results = {}
    for label in ("v1", "v2"):
        backend = TritonBackend(triton.grpc_url, MODEL, version=label)
        try:
            results[label] = {t.name: t.data for t in (await backend.infer(_request(x))).outputs}
        finally:
            await backend.close()
    assert not np.allclose(results["v1"]["probabilities"], results["v2"]["probabilities"])


async def test_requested_outputs_only(backend_v1: TritonBackend) -> None:
    request = InferRequest(inputs=(Tensor("X", RNG.normal(size=(2, 4)).astype(np.float32)),), outputs=("label",))
    response = await backend_v1.infer(request)
    assert [t.name for t in response.outputs] == ["label"]


async def test_metadata(backend_v1: TritonBackend) -> None:
    meta = await backend_v1.metadata()
    assert meta.name == MODEL
    assert meta.version == "v1"
    assert meta.platform == "python"
    assert meta.provider == "CPUExecutionProvider"
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [("X", "FP32", (-1, 4))]
    assert {t.name: (t.datatype, t.shape) for t in meta.outputs} == {
        "label": ("INT64", (-1,)),
        "probabilities": ("FP32", (-1, 2)),
    }


async def test_dynamic_batching_batches_concurrent_requests(triton: TritonServer, backend_v1: TritonBackend) -> None:
    def counts() -> tuple[float, float]:
        with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return _metric(text, "nv_inference_request_success", MODEL), _metric(text, "nv_inference_exec_count", MODEL)

    await backend_v1.infer(_request(RNG.normal(size=(1, 4))))  # channel and model info warm
    requests_before, execs_before = counts()
    n = 64
    x = RNG.normal(size=(n, 4))
    responses = await asyncio.gather(*(backend_v1.infer(_request(x[i : i + 1], str(i))) for i in range(n)))
    # Every request got its own row back, in spite of running inside shared batches.
    probabilities = np.concatenate([next(t.data for t in r.outputs if t.name == "probabilities") for r in responses])
    assert [r.id for r in responses] == [str(i) for i in range(n)]
    assert probabilities.shape == (n, 2)
    requests_after, execs_after = counts()
    assert requests_after - requests_before == n
    executions = execs_after - execs_before
    # Without dynamic batching this is exactly n; the bound leaves room for a starved client trickling requests in.
    assert 1 <= executions <= n // 2, f"{n} concurrent requests ran in {executions} model executions"


async def test_invalid_input_is_400(backend_v1: TritonBackend) -> None:
    with pytest.raises(InvalidInput, match="X"):
        await backend_v1.infer(_request(RNG.normal(size=(2, 3))))  # 3 features, model wants 4
    with pytest.raises(InvalidInput):
        await backend_v1.infer(InferRequest(inputs=(Tensor("nope", np.zeros((1, 4), np.float32)),)))


async def test_unknown_version_label_is_404(triton: TritonServer) -> None:
    backend = TritonBackend(triton.grpc_url, MODEL, version="v9")
    try:
        with pytest.raises(ModelNotFound, match="v9"):
            await backend.infer(_request(np.zeros((1, 4))))
        assert not await backend.ready()
    finally:
        await backend.close()


async def test_model_that_fails_to_load_is_not_ready_with_reason(triton: TritonServer) -> None:
    with grpcclient.InferenceServerClient(triton.grpc_url) as client, pytest.raises(InferenceServerException):
        client.load_model(BROKEN)
    backend = TritonBackend(triton.grpc_url, BROKEN)
    try:
        assert not await backend.ready()
        reason = await backend.not_ready_reason()
        assert reason is not None
        assert re.search(r"UNAVAILABLE: .*(onnx|ONNX|protobuf|Protobuf)", reason), reason
        with pytest.raises((BackendUnavailable, ModelNotFound)):
            await backend.infer(_request(np.zeros((1, 4))))
    finally:
        await backend.close()
    live = TritonBackend(triton.grpc_url, MODEL, version="v1")
    try:
        assert await live.not_ready_reason() is None  # the good model is untouched
    finally:
        await live.close()


async def test_server_death_raises_unavailable_quickly(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    spec = RepositorySpec(model_name=MODEL, versions=(ModelVersion("v1", "file:v1.onnx"),), flavour=Flavour.PYTHON)
    write_model(spec, tmp_path, {"v1": onnx_models["v1"]})
    server = TritonServer(tmp_path, startup_timeout_s=90)
    backend = TritonBackend(server.grpc_url, MODEL, version="v1", timeout_s=30)
    try:
        server.start()
        backend = TritonBackend(server.grpc_url, MODEL, version="v1", timeout_s=30)
        await backend.infer(_request(np.zeros((1, 4))))
        server.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.infer(_request(np.zeros((1, 4))))
        assert time.monotonic() - started < 5, "a dead server must fail fast, not wait for the 30 s timeout"
        assert not await backend.ready()
    finally:
        await backend.close()
        server.stop()


async def test_deadline_is_504(triton: TritonServer) -> None:
    backend = TritonBackend(triton.grpc_url, MODEL, version="v1", timeout_s=10)
    try:
        await backend.metadata()  # model info fetched with the normal timeout
        backend.timeout_s = 1e-5  # no server answers within 10 µs
        with pytest.raises(BackendTimeout, match="Deadline"):
            await backend.infer(_request(np.zeros((1, 4))))
    finally:
        await backend.close()


async def test_registry_builds_the_triton_backend(triton: TritonServer) -> None:
    config = ServingConfig.model_validate(
        {
            "model_name": MODEL,
            "request_timeout_s": 3,
            "variants": [
                {"name": "stable", "version": "v2", "uri": "file:v2.onnx", "weight": 100, "endpoint": triton.grpc_url}
            ],
        }
    )
    backend = make_variant_backend("triton", config.variants[0], config)
    try:
        assert isinstance(backend, TritonBackend)
        assert backend.timeout_s == 3
        assert backend.coalesce  # follows batching.enabled (default on)
        response = await backend.infer(_request(np.zeros((2, 4))))
        assert response.model_version == "v2"
    finally:
        await backend.close()
    unbatched = config.model_copy(update={"batching": config.batching.model_copy(update={"enabled": False})})
    assert not make_variant_backend("triton", config.variants[0], unbatched).coalesce  # type: ignore[attr-defined]
    no_endpoint = config.variants[0].model_copy(update={"endpoint": None})
    with pytest.raises(ValueError, match="needs 'endpoint'"):
        make_variant_backend("triton", no_endpoint, config)
    with pytest.raises(ValueError, match="gRPC address"):
        TritonBackend("http://127.0.0.1:8000", MODEL)


async def test_batch_above_max_batch_size_is_split_and_rejoined(
    backend_v1: TritonBackend, onnx_models: dict[str, Path]
) -> None:
    x = RNG.normal(size=(75, 4))  # the model's max_batch_size is 32: three Triton calls
    response = await backend_v1.infer(_request(x))
    expected = _onnxruntime(onnx_models["v1"], x)
    got = {t.name: t.data for t in response.outputs}
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)
    assert response.model_version == "v1"


async def test_coalescing_merges_concurrent_requests_and_isolates_bad_ones(
    triton: TritonServer, onnx_models: dict[str, Path]
) -> None:
    def requests_seen() -> float:
        with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
            return _metric(response.read().decode(), "nv_inference_request_success", MODEL)

    backend = TritonBackend(triton.grpc_url, MODEL, version="v2")  # coalescing is the default
    try:
        await backend.infer(_request(np.zeros((1, 4))))
        before = requests_seen()
        n = 40
        x = RNG.normal(size=(n, 4))
        calls = [backend.infer(_request(x[i : i + 1], f"r{i}")) for i in range(n)]
        calls.append(backend.infer(_request(np.zeros((1, 3)), "bad")))  # wrong width: its own call, its own error
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[-1], InvalidInput)
        good = results[:-1]
        assert all(not isinstance(r, BaseException) for r in good), good
        expected = _onnxruntime(onnx_models["v2"], x)
        got = np.concatenate([next(t.data for t in r.outputs if t.name == "probabilities") for r in good])  # type: ignore[union-attr]
        np.testing.assert_allclose(got, expected["probabilities"], rtol=1e-6)  # every row back to its caller
        assert [r.id for r in good] == [f"r{i}" for i in range(n)]  # type: ignore[union-attr]
        assert max(int(r.parameters.get("batch_size", "1")) for r in good) > 1  # type: ignore[union-attr]
        seen = requests_seen() - before
        assert seen <= n // 2, f"{n} concurrent requests reached Triton as {seen} requests"
    finally:
        await backend.close()


async def test_a_failing_request_does_not_fail_the_requests_merged_with_it(triton: TritonServer) -> None:
    """Same shapes, so all are merged into one call; index 99 makes onnxruntime fail it; each is then retried alone."""
    backend = TritonBackend(triton.grpc_url, LOOKUP)
    try:
        indices = [3, 7, 99, 0, 9, 5]
        results = await asyncio.gather(
            *(backend.infer(InferRequest(inputs=(Tensor("X", np.array([[i]], np.int64)),))) for i in indices),
            return_exceptions=True,
        )
        for index, result in zip(indices, results, strict=True):
            if index == 99:
                assert isinstance(result, BackendError), result
                assert "out of" in str(result)
            else:
                assert not isinstance(result, BaseException), result
                np.testing.assert_array_equal(result.outputs[0].data, LOOKUP_TABLE[[[index]]])
    finally:
        await backend.close()
