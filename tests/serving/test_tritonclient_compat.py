"""The official tritonclient (sync and aio HTTP, with its defaults too) talks to the router as to tritonserver."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tests.serving.helpers import MODEL, EchoBytes, OnnxBackend, config, serve
from tritonclient.utils import InferenceServerException

from sluice.serving.config import ServingConfig
from sluice.serving.router import Router

pytestmark = pytest.mark.usefixtures("both_servers")  # the router's HttpServer and plain ASGI (uvicorn)

X = np.array([[3, 0, 0, 0], [-3, 0, 0, 0]], dtype=np.float32)


@pytest.fixture(scope="module")
def url(model_bytes: bytes) -> Iterator[str]:
    router = Router(config(), {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")})
    with serve(router) as base:
        yield base.removeprefix("http://")


def _inputs(mod: object) -> list[object]:
    inp = mod.InferInput("X", list(X.shape), "FP32")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(X, binary_data=False)
    return [inp]


def test_sync_client_health_metadata_and_infer(url: str) -> None:
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert client.is_model_ready(MODEL, model_version="v2")
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
        assert client.get_server_metadata()["name"] == "sluice"

        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
        result = client.infer(MODEL, _inputs(httpclient), outputs=outputs, request_id="req-7")
        probs = result.as_numpy("probabilities")
        assert probs.shape == (2, 2)
        assert probs.dtype == np.float32
        assert probs[0, 1] > 0.5 > probs[1, 1]
        assert result.as_numpy("label") is None  # only the requested output came back
        response = result.get_response()
        assert response["model_version"] in {"v1", "v2"}
        assert response["id"] == "req-7"

        pinned = client.infer(MODEL, _inputs(httpclient), model_version="v2")
        assert pinned.get_response()["model_version"] == "v2"
        assert pinned.as_numpy("label").tolist() == [1, 0]

        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.infer("nope", _inputs(httpclient))
    finally:
        client.close()


async def test_aio_client_infer(url: str) -> None:
    client = aioclient.InferenceServerClient(url=url)
    try:
        assert await client.is_server_live()
        assert await client.is_model_ready(MODEL)
        result = await client.infer(
            MODEL, _inputs(aioclient), outputs=[aioclient.InferRequestedOutput("label", binary_data=False)]
        )
        assert result.as_numpy("label").tolist() == [1, 0]
        assert result.get_response()["model_version"] in {"v1", "v2"}
    finally:
        await client.close()


# ---- the official clients with their defaults: binary tensors both ways (KServe v2 binary extension) ----


def _default_inputs(mod: object, x: np.ndarray = X) -> list[object]:
    inp = mod.InferInput("X", list(x.shape), "FP32")  # type: ignore[attr-defined]
    inp.set_data_from_numpy(x)  # binary_data=True: the extension
    return [inp]


def test_sync_client_defaults_send_and_receive_binary_tensors(url: str, model_bytes: bytes) -> None:
    client = httpclient.InferenceServerClient(url=url)
    try:
        expected = OnnxBackend(model_bytes, "v1").session.run(None, {"X": X})
        result = client.infer(MODEL, _default_inputs(httpclient), request_id="bin-1")
        response = result.get_response()
        # No outputs named: every output comes back binary (binary_data_output), sized in its parameters.
        assert {o["name"] for o in response["outputs"]} == {"label", "probabilities"}
        assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in response["outputs"])
        assert response["id"] == "bin-1"
        assert result.as_numpy("label").tolist() == expected[0].tolist()
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)

        # Per output: InferRequestedOutput defaults to binary_data=True; one may ask for JSON next to it.
        outputs = [
            httpclient.InferRequestedOutput("probabilities"),
            httpclient.InferRequestedOutput("label", binary_data=False),
        ]
        mixed = client.infer(MODEL, _default_inputs(httpclient), outputs=outputs, model_version="v2")
        by_name = {o["name"]: o for o in mixed.get_response()["outputs"]}
        assert by_name["label"]["data"] == expected[0].tolist()
        assert "data" not in by_name["probabilities"]
        assert mixed.as_numpy("probabilities").shape == (2, 2)
        assert mixed.get_response()["model_version"] == "v2"

        # Binary request, JSON answer (all outputs named with binary_data=False).
        json_out = [httpclient.InferRequestedOutput("label", binary_data=False)]
        assert client.infer(MODEL, _default_inputs(httpclient), outputs=json_out).as_numpy("label").tolist() == [1, 0]
    finally:
        client.close()


async def test_aio_client_defaults_send_and_receive_binary_tensors(url: str, model_bytes: bytes) -> None:
    client = aioclient.InferenceServerClient(url=url)
    try:
        big = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
        result = await client.infer(MODEL, _default_inputs(aioclient, big))
        labels = result.as_numpy("label")
        assert labels.shape == (300,)
        assert labels.tolist() == OnnxBackend(model_bytes, "v1").session.run(["label"], {"X": big})[0].tolist()
    finally:
        await client.close()


def test_binary_request_errors_name_the_problem(url: str) -> None:
    client = httpclient.InferenceServerClient(url=url)
    try:
        wrong = httpclient.InferInput("X", [2, 4], "FP64")
        wrong.set_data_from_numpy(X.astype(np.float64))
        with pytest.raises(InferenceServerException, match="datatype FP64 does not match"):
            client.infer(MODEL, [wrong])
        short = httpclient.InferInput("X", [2, 4], "FP32")
        short.set_data_from_numpy(X)
        short.set_shape([3, 4])  # the shape claims 3 rows, the binary data holds 2
        with pytest.raises(InferenceServerException, match="needs 48 bytes, got 32"):
            client.infer(MODEL, [short])
        assert client.is_server_live()  # and it still serves
    finally:
        client.close()


def test_bytes_tensors_travel_length_prefixed_both_ways() -> None:
    cfg = ServingConfig.model_validate(
        {"model_name": "words", "variants": [{"name": "stable", "version": "v1", "uri": "file://w", "weight": 100}]}
    )
    words = np.array([b"sluice", "héllo".encode(), b"", b"\x00\xff"], dtype=object)
    with serve(Router(cfg, {"stable": EchoBytes()})) as base:
        client = httpclient.InferenceServerClient(url=base.removeprefix("http://"))
        try:
            inp = httpclient.InferInput("text", [4], "BYTES")
            inp.set_data_from_numpy(words)
            got = client.infer("words", [inp]).as_numpy("reversed")
            assert got.tolist() == [bytes(reversed(w)) for w in words]
            as_json = client.infer("words", [inp], outputs=[httpclient.InferRequestedOutput("reversed", False)])
            assert as_json.get_response()["outputs"][0]["data"][0] == "eciuls"
        finally:
            client.close()
