"""The Sluice router (standalone host, its own process) in front of the real tritonserver, spoken to over v2 REST."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tests.support import answers, free_port, wait_for
from tests.triton.conftest import MODEL
from tritonclient.utils import InferenceServerException

from sluice.serving.triton.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def router_url(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m sluice.serving.host_standalone --variant-backend triton`: stable v1 at 100 %, canary v2 at 0 %."""
    config = {
        "model_name": MODEL,
        "variants": [
            {"name": "stable", "version": "v1", "uri": "file:v1.onnx", "weight": 100, "endpoint": triton.grpc_url},
            {"name": "canary", "version": "v2", "uri": "file:v2.onnx", "weight": 0, "endpoint": triton.grpc_url},
        ],
        "request_timeout_s": 10,
        "override_enabled": True,  # the override test below sends x-sluice-variant without the admin token
    }
    path = tmp_path_factory.mktemp("router") / "serving.json"
    path.write_text(json.dumps(config))
    port = free_port()
    log = path.with_suffix(".log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice.serving.host_standalone", "--config", str(path), "--port", str(port),
         "--variant-backend", "triton"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def ready() -> bool:
            assert process.poll() is None, f"router exited: {path.with_suffix('.log').read_text()}"
            return answers(f"http://127.0.0.1:{port}/v2/health/ready")

        wait_for("the router to be ready", ready, 60)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _infer(url: str, x: np.ndarray, headers: dict[str, str] | None = None) -> httpclient.InferResult:
    with httpclient.InferenceServerClient(url) as client:
        item = httpclient.InferInput("X", list(x.shape), "FP32")
        item.set_data_from_numpy(x.astype(np.float32), binary_data=False)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
        return client.infer(MODEL, [item], outputs=outputs, headers=headers)


def test_router_answers_like_onnxruntime(router_url: str, onnx_models: dict[str, Path]) -> None:
    x = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(onnx_models["v1"]), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    result = _infer(router_url, x)
    assert result.get_response()["model_version"] == "v1"
    np.testing.assert_array_equal(result.as_numpy("label"), expected[0])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)


def test_router_override_header_reaches_the_canary_version(router_url: str, onnx_models: dict[str, Path]) -> None:
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(onnx_models["v2"]), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    result = _infer(router_url, x, headers={"x-sluice-variant": "canary"})
    assert result.get_response()["model_version"] == "v2"
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)


def test_router_metadata_and_bad_input(router_url: str) -> None:
    with httpclient.InferenceServerClient(router_url) as client:
        meta = client.get_model_metadata(MODEL)
        assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("X", [-1, 4])]
        item = httpclient.InferInput("X", [1, 3], "FP32")
        item.set_data_from_numpy(np.zeros((1, 3), np.float32), binary_data=False)
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [item])
        assert info.value.status() == "400", str(info.value)
        assert "X" in str(info.value.message())
