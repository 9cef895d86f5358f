"""The official tritonclient (sync and aio HTTP) talks to the Sluice router like to a tritonserver."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tests.serving.helpers import MODEL, OnnxBackend, config, serve
from tritonclient.utils import InferenceServerException

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
