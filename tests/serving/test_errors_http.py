"""Every bad input and every failing backend gets its status and a JSON error naming the problem; nothing hangs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from tests.serving.helpers import (
    ADMIN_HEADERS,
    MODEL,
    FailingBackend,
    NotReadyBackend,
    OnnxBackend,
    config,
    row,
    serve,
    v2_body,
)

from sluice.serving.router import Router

pytestmark = pytest.mark.usefixtures("both_servers")  # the router's HttpServer and plain ASGI (uvicorn)

URL = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def base(model_bytes: bytes) -> Iterator[str]:
    """One server for the module: stable answers, 'broken' raises, 'slow' takes 5 s, 'cold' is not loaded."""
    backends = {
        "stable": OnnxBackend(model_bytes, "v1"),
        "broken": FailingBackend(model_bytes, "v2"),
        "slow": OnnxBackend(model_bytes, "v3", delay_s=5.0),
        "cold": NotReadyBackend(model_bytes, "v4"),
    }
    cfg = config(
        override_enabled=True,  # the tests pick the failing variant with the override header
        request_timeout_s=0.5,
        max_request_bytes=4096,
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100},
            {"name": "broken", "version": "v2", "uri": "file://v2.onnx", "weight": 0},
            {"name": "slow", "version": "v3", "uri": "file://v3.onnx", "weight": 0},
            {"name": "cold", "version": "v4", "uri": "file://v4.onnx", "weight": 0},
        ],
    )
    with serve(Router(cfg, backends)) as url:
        yield url


@pytest.fixture
async def client(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        yield c


def _input(**kw: object) -> dict[str, object]:
    tensor: dict[str, object] = {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
    tensor.update(kw)
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{not json", 400, "body is not valid JSON"),
        (json.dumps(_input(shape=[1, 3], data=[1, 2, 3])), 400, "input 'X': shape [1, 3] does not match"),
        (json.dumps(_input(datatype="FP64")), 400, "input 'X': datatype FP64 does not match the model's FP32"),
        (json.dumps(_input(data=["a", "b", "c", "d"])), 400, "input 'X': data does not match datatype FP32"),
        (json.dumps(_input(name="Y")), 400, "missing input 'X'"),
        (json.dumps({"inputs": []}), 400, "non-empty 'inputs'"),
        (json.dumps({**_input(), "outputs": [{"name": "nope"}]}), 400, "requested output(s) ['nope'] do not exist"),
    ],
)
async def test_bad_input_is_a_400_naming_the_problem(
    client: httpx.AsyncClient, content: bytes | str, status: int, message: str
) -> None:
    r = await client.post(URL, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert message in r.json()["error"]


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/other/infer", json=_input())
    assert r.status_code == 404
    assert r.json() == {"error": "unknown model 'other'; this server serves 'fraud'"}
    r = await client.get("/v2/models/other")
    assert r.status_code == 404


async def test_wrong_content_type_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415
    assert (
        r.json()["error"] == "content type 'application/x-www-form-urlencoded' is not supported; send application/json"
    )
    # The binary extension is read (its JSON header here is an empty object: the client's 400, not a 415).
    r = await client.post(URL, content=b"{}", headers={"inference-header-content-length": "2"})
    assert r.status_code == 400
    assert r.json()["error"] == "request needs a non-empty 'inputs' list"


async def test_oversized_payload_is_413_from_content_length_and_while_streaming(client: httpx.AsyncClient) -> None:
    big = json.dumps(v2_body(row(200))).encode()
    assert len(big) > 4096
    r = await client.post(URL, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == f"body of {len(big)} bytes exceeds the limit of 4096 bytes"

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length, counted while streaming
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = await client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "body exceeds the limit of 4096 bytes"


async def test_failing_backend_is_503_and_slow_one_504_within_the_timeout(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json=_input(), headers={"x-sluice-variant": "broken"})
    assert r.status_code == 503
    assert r.json() == {"error": "variant 'broken': backend failed: RuntimeError"}
    assert r.headers["x-sluice-variant"] == "broken"

    t0 = time.perf_counter()
    r = await client.post(URL, json=_input(), headers={"x-sluice-variant": "slow"})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 504
    assert r.json() == {"error": "variant 'slow' did not answer within 0.5 s"}
    assert 0.45 < elapsed < 2.0

    r = await client.post(URL, json=_input(), headers={"x-sluice-variant": "cold"})
    assert r.status_code == 503
    assert r.json() == {"error": "model not loaded"}


async def test_server_keeps_serving_after_errors(client: httpx.AsyncClient) -> None:
    bad = [client.post(URL, content=b"[[[", headers={"content-type": "application/json"}) for _ in range(20)]
    good = [client.post(URL, json=_input()) for _ in range(20)]
    results = await asyncio.gather(*bad, *good)
    assert [r.status_code for r in results] == [400] * 20 + [200] * 20


async def test_health_metadata_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    r = await client.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})  # only the 100% variant carries traffic
    assert (await client.get("/v2")).json()["name"] == "sluice"
    meta = (await client.get(f"/v2/models/{MODEL}")).json()
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert meta["versions"] == ["v1", "v2", "v3", "v4"]
    r = await client.get(f"/v2/models/{MODEL}/versions/v4/ready")
    assert (r.status_code, r.json()) == (503, {"name": MODEL, "ready": False})
    assert (await client.get(f"/v2/models/{MODEL}/versions/v9/ready")).status_code == 404


async def test_plain_predict_for_humans(client: httpx.AsyncClient) -> None:
    r = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[3, 0, 0, 0], [-3, 0, 0, 0]]})
    assert r.status_code == 200
    body = r.json()
    assert body["predictions"] == [1, 0]
    assert body["model_version"] == "v1"
    assert len(body["probabilities"]) == 2
    r = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[1, 2], [3]]})
    assert r.status_code == 400
    assert "ragged" in r.json()["error"]
    r = await client.post(f"/v1/models/{MODEL}:predict", json={"rows": []})
    assert r.status_code == 400
    assert '{"instances"' in r.json()["error"]


async def test_admin_config_validation_and_token(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/config", json={"model_name": MODEL, "variants": []}, headers=ADMIN_HEADERS)
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid ServingConfig: variants:")
    current = (await client.get("/admin/config", headers=ADMIN_HEADERS)).json()
    bad = {**current, "variants": [{**v, "weight": 50} for v in current["variants"]]}
    r = await client.put("/admin/config", json=bad, headers=ADMIN_HEADERS)
    assert r.status_code == 400
    assert "variant weights must sum to 100, got 200" in r.json()["error"]
    huge = {**current, "max_request_bytes": 10**12}
    r = await client.put("/admin/config", json=huge, headers=ADMIN_HEADERS)
    assert r.status_code == 400
    assert "max_request_bytes" in r.json()["error"]

    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "test-admin-token"}):
        for method in ("GET", "PUT"):  # reading the config is as protected as changing it
            r = await client.request(method, "/admin/config", json=current, headers=headers)
            assert r.status_code == 401
            assert r.json() == {"error": "admin endpoint needs 'Authorization: Bearer <token>'"}
    r = await client.put("/admin/config", json=current, headers=ADMIN_HEADERS)
    assert r.status_code == 200


async def test_payloads_are_never_logged(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    marker = 0.123456789
    for variant in ("stable", "broken", "slow"):
        await client.post(URL, json=_input(data=[marker] * 4), headers={"x-sluice-variant": variant})
    await client.post(URL, content=b'{"inputs": "0.123456789"', headers={"content-type": "application/json"})
    assert caplog.records  # the failures were logged ...
    assert "0.123456" not in caplog.text  # ... without their payloads
