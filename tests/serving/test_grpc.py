"""The router's KServe v2 gRPC endpoint spoken to by the official tritonclient.grpc (sync and aio) with its defaults."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tests.serving.helpers import MODEL, EchoBytes, FailingBackend, OnnxBackend, config, serve
from tritonclient.utils import InferenceServerException

from sluice.serving.config import ServingConfig
from sluice.serving.endpoints import ProtocolEndpoints
from sluice.serving.errors import BackendUnavailable
from sluice.serving.grpcserver import GrpcServer
from sluice.serving.router import Router

X = np.array([[3, 0, 0, 0], [-3, 0, 0, 0]], dtype=np.float32)


@contextmanager
def serve_grpc(router: Router, **kw: int) -> Iterator[str]:
    """A GrpcServer over `router` on 127.0.0.1:<free port> in its own loop thread; always stopped."""
    loop = asyncio.new_event_loop()
    server = GrpcServer(ProtocolEndpoints(router), "127.0.0.1", 0, graceful_timeout_s=2, **kw)
    stop = asyncio.Event()
    started = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            try:
                await server.start()
            except BaseException as exc:
                failed.append(exc)
                raise
            finally:
                started.set()
            try:
                await stop.wait()
            finally:
                await server.shutdown()
                await router.drain_shadows()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        if not started.wait(10) or failed:
            raise RuntimeError(f"gRPC server did not start: {failed}")
        yield f"127.0.0.1:{server.port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


def _inputs(mod: object, x: np.ndarray = X) -> list[object]:
    item = mod.InferInput("X", list(x.shape), "FP32")  # type: ignore[attr-defined]
    item.set_data_from_numpy(x)  # the client's default: raw_input_contents
    return [item]


@pytest.fixture(scope="module")
def backends(model_bytes: bytes, flipped_model_bytes: bytes) -> dict[str, OnnxBackend]:
    return {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(flipped_model_bytes, "v2")}


@pytest.fixture(scope="module")
def url(backends: dict[str, OnnxBackend]) -> Iterator[str]:
    cfg = config(sticky_header="x-user", mirror={"variant": "canary", "percent": 100}, override_enabled=True)
    router = Router(cfg, backends)
    with serve_grpc(router) as target:
        yield target


def test_sync_client_health_metadata_and_infer(url: str, backends: dict[str, OnnxBackend]) -> None:
    with grpcclient.InferenceServerClient(url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert client.is_model_ready(MODEL, model_version="v2")
        assert not client.is_model_ready("nope")
        assert not client.is_model_ready(MODEL, model_version="v9")
        server = client.get_server_metadata(as_json=True)
        assert server["name"] == "sluice"
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "4"]}]
        assert meta["versions"] == ["v1", "v2"]

        expected = backends["stable"].session.run(None, {"X": X})
        result = client.infer(MODEL, _inputs(grpcclient), request_id="g-1", model_version="v1")
        response = result.get_response(as_json=True)
        assert response["model_version"] == "v1"
        assert response["id"] == "g-1"
        assert result.as_numpy("label").tolist() == expected[0].tolist()
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected[1], rtol=1e-6)

        only = client.infer(MODEL, _inputs(grpcclient), outputs=[grpcclient.InferRequestedOutput("probabilities")])
        assert [o["name"] for o in only.get_response(as_json=True)["outputs"]] == ["probabilities"]
        assert only.as_numpy("label") is None


async def test_aio_client_infer(url: str, backends: dict[str, OnnxBackend]) -> None:
    async with grpcaio.InferenceServerClient(url) as client:
        assert await client.is_server_live()
        assert await client.is_model_ready(MODEL)
        big = np.random.default_rng(4).normal(size=(200, 4)).astype(np.float32)
        results = await asyncio.gather(
            *(client.infer(MODEL, _inputs(grpcaio, big), model_version="v2") for _ in range(8))
        )
        expected = backends["canary"].session.run(["label"], {"X": big})[0]
        for result in results:
            assert result.as_numpy("label").tolist() == expected.tolist()


def test_sticky_key_override_and_shadow_work_as_over_rest(url: str, backends: dict[str, OnnxBackend]) -> None:
    """The sticky header travels as gRPC metadata and picks the same variant REST would; the override wins;
    every request is mirrored to the canary (100 %)."""
    router = Router(config(sticky_header="x-user"), backends)
    with grpcclient.InferenceServerClient(url) as client:
        for user in ("ana", "bo", "cy", "dee", "eve", "fay"):
            want = router.choose(sticky_key=user)
            versions = {
                client.infer(MODEL, _inputs(grpcclient), headers={"x-user": user}).get_response().model_version
                for _ in range(3)
            }
            assert versions == {router.config.variant(want).version}, user
        canary = client.infer(MODEL, _inputs(grpcclient), headers={"x-sluice-variant": "canary", "x-user": "ana"})
        assert canary.get_response().model_version == "v2"
        before = backends["canary"].calls
        client.infer(MODEL, _inputs(grpcclient), headers={"x-sluice-variant": "stable"})
    for _ in range(100):  # the shadow copy runs after the answer: bounded wait for it
        if backends["canary"].calls > before:
            break
        threading.Event().wait(0.02)
    assert backends["canary"].calls == before + 1


def test_errors_map_to_grpc_status_codes(url: str) -> None:
    with grpcclient.InferenceServerClient(url) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer("nope", _inputs(grpcclient))
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "unknown model 'nope'" in info.value.message()

        wrong = grpcclient.InferInput("X", [2, 4], "FP64")
        wrong.set_data_from_numpy(X.astype(np.float64))
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [wrong])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "datatype FP64 does not match" in info.value.message()

        short = grpcclient.InferInput("X", [2, 4], "FP32")
        short.set_data_from_numpy(X)
        short.set_shape([3, 4])
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [short])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "needs 48 bytes, got 32" in info.value.message()

        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, _inputs(grpcclient), headers={"x-sluice-variant": "nope"})
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"

        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics(MODEL)
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        assert client.is_server_live()


def test_unavailable_backend_is_unavailable_and_counted(model_bytes: bytes) -> None:
    cfg = ServingConfig.model_validate(
        {"model_name": MODEL, "variants": [{"name": "stable", "version": "v1", "uri": "file://v1", "weight": 100}]}
    )
    router = Router(cfg, {"stable": FailingBackend(model_bytes, "v1", BackendUnavailable("model not loaded"))})
    with serve_grpc(router) as target, grpcclient.InferenceServerClient(target) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, _inputs(grpcclient))
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "model not loaded" in info.value.message()
    metrics = router.metrics.render().decode()
    assert 'code="503"' in metrics
    assert 'variant="stable"' in metrics


def test_message_size_and_concurrency_are_bounded(model_bytes: bytes) -> None:
    slow = {"stable": OnnxBackend(model_bytes, "v1", delay_s=0.5), "canary": OnnxBackend(model_bytes, "v2")}
    router = Router(config(max_request_bytes=4096), slow)
    with serve_grpc(router, max_concurrent_rpcs=4) as target:
        with grpcclient.InferenceServerClient(target) as client:
            big = np.zeros((30_000, 4), np.float32)  # 480 kB > 4096 + framing allowance
            with pytest.raises(InferenceServerException) as info:
                client.infer(MODEL, _inputs(grpcclient, big))
            assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"

        async def burst() -> list[object]:
            async with grpcaio.InferenceServerClient(target) as aio:
                calls = (aio.infer(MODEL, _inputs(grpcaio), model_version="v1") for _ in range(10))
                return list(await asyncio.gather(*calls, return_exceptions=True))

        outcomes = asyncio.run(burst())
        refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
        assert 4 <= len(outcomes) - len(refused) < 10  # at most 4 at once (0.5 s each), the rest refused at once
        assert {o.status() for o in refused} == {"StatusCode.RESOURCE_EXHAUSTED"}
        with grpcclient.InferenceServerClient(target) as client:  # and it serves again afterwards
            assert client.infer(MODEL, _inputs(grpcclient)).as_numpy("label").shape == (2,)


def test_requests_are_counted_like_rest(model_bytes: bytes) -> None:
    router = Router(config(), {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")})
    with serve_grpc(router) as target, serve(router) as base, grpcclient.InferenceServerClient(target) as client:
        for _ in range(5):
            client.infer(MODEL, _inputs(grpcclient), model_version="v2")
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, [grpcclient.InferInput("X", [1], "FP64").set_data_from_numpy(np.zeros(1))])
        import httpx

        text = httpx.get(f"{base}/metrics").text
    ok = [line for line in text.splitlines() if line.startswith("sluice_requests_total{") and 'code="200"' in line]
    assert any('version="v2"' in line and line.endswith(" 5.0") for line in ok), ok
    assert any(line.startswith("sluice_requests_total{") and 'code="400"' in line for line in text.splitlines())


def test_bytes_tensors_round_trip() -> None:
    cfg = ServingConfig.model_validate(
        {"model_name": "words", "variants": [{"name": "stable", "version": "v1", "uri": "file://w", "weight": 100}]}
    )
    words = np.array([b"sluice", "héllo".encode(), b""], dtype=object)
    with serve_grpc(Router(cfg, {"stable": EchoBytes()})) as target, grpcclient.InferenceServerClient(target) as c:
        item = grpcclient.InferInput("text", [3], "BYTES")
        item.set_data_from_numpy(words)
        assert c.infer("words", [item]).as_numpy("reversed").tolist() == [bytes(reversed(w)) for w in words]


def test_grpc_status_names_are_the_protocol_ones() -> None:
    from sluice.serving.errors import InvalidInput, ModelNotFound
    from sluice.serving.grpcserver import grpc_code

    assert grpc_code(InvalidInput("x")) is grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(ModelNotFound("x")) is grpc.StatusCode.NOT_FOUND
    assert grpc_code(BackendUnavailable("x")) is grpc.StatusCode.UNAVAILABLE


def test_override_is_off_by_default_and_the_served_variant_comes_back_as_metadata(model_bytes: bytes) -> None:
    """As over REST: without override_enabled the header is ignored; the variant and version that answered come
    back as initial metadata (REST's response headers)."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    cfg = config(
        override_enabled=False,
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 0},
        ],
    )
    router = Router(cfg, {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")})
    with serve_grpc(router) as target, grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = service_pb2.ModelInferRequest(model_name=MODEL)
        message.inputs.add(name="X", datatype="FP32", shape=[2, 4])
        message.raw_input_contents.append(X.tobytes())
        response, call = stub.ModelInfer.with_call(message, metadata=(("x-sluice-variant", "canary"),))
        assert response.model_version == "v1"
        metadata = dict(call.initial_metadata())
        assert (metadata["x-sluice-variant"], metadata["x-sluice-model-version"]) == ("stable", "v1")


def test_row_and_element_limits_apply_as_over_rest(model_bytes: bytes) -> None:
    router = Router(
        config(max_request_rows=100),
        {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")},
    )
    with serve_grpc(router) as target, grpcclient.InferenceServerClient(target) as client:
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, _inputs(grpcclient, np.zeros((101, 4), np.float32)))
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "101 rows exceed the limit of 100" in info.value.message()
        assert client.infer(MODEL, _inputs(grpcclient, np.zeros((100, 4), np.float32))).as_numpy("label").shape == (
            100,
        )
    assert 'code="413"' in router.metrics.render().decode()
