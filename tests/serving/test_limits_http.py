"""Issue 13 rows 1, 5, 6, 8, 9 through real HTTP (the router's HttpServer and uvicorn): admin lock and config
validation, per-request row/element limits, deep shapes, FP32 overflow, echo bounds, the override header and URIs
kept from clients and logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
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

from sluice.serving.admin import AdminAuth
from sluice.serving.app import build_app
from sluice.serving.backends.base import VariantBackend
from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.errors import hide_uris, redact_uris
from sluice.serving.router import Router
from sluice.serving.runtime import OnnxModel
from sluice.serving.tensors import InferRequest, InferResponse, Tensor

pytestmark = pytest.mark.usefixtures("both_servers")

URL = f"/v2/models/{MODEL}/infer"
SECRET_URI = "https://models.example/fraud-v3.onnx?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"


class ComplexBackend(OnnxBackend):
    """Answers with a tensor the codec cannot encode (complex numbers): a server bug, not the client's fault."""

    async def infer(self, request: InferRequest) -> InferResponse:
        return InferResponse(MODEL, self.version, (Tensor("label", np.zeros(1, dtype=np.complex128)),))


class UriLeakingBackend(FailingBackend):
    """Fails the way a model loader does: with the model's (presigned) URI in the message."""

    async def infer(self, request: InferRequest) -> InferResponse:
        from sluice.serving.errors import BackendUnavailable

        raise BackendUnavailable(f"model not ready: model {SECRET_URI}: HTTP 403")


@pytest.fixture(scope="module")
def router(model_bytes: bytes) -> Router:
    backends: dict[str, VariantBackend] = {
        "stable": OnnxBackend(model_bytes, "v1"),
        "canary": OnnxBackend(model_bytes, "v2"),
        "bug": ComplexBackend(model_bytes, "v3"),
        "leaky": UriLeakingBackend(model_bytes, "v4"),
    }

    def factory(v: VariantConfig, _: ServingConfig) -> VariantBackend:
        """file://good.onnx loads; anything else is a model that never becomes ready."""
        if v.uri.endswith("good.onnx"):
            return OnnxBackend(model_bytes, v.version)
        return NotReadyBackend(model_bytes, v.version)

    cfg = config(
        override_enabled=False,
        max_request_rows=100,
        max_request_elements=1000,
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 0},
            {"name": "bug", "version": "v3", "uri": "file://v3.onnx", "weight": 0},
            {"name": "leaky", "version": "v4", "uri": SECRET_URI, "weight": 0},
        ],
    )
    return Router(cfg, backends, factory=factory)


@pytest.fixture
def base(router: Router) -> Iterator[str]:
    with serve(router) as url:
        yield url


@pytest.fixture
async def client(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        yield c


def _tensor(**kw: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}
    t.update(kw)
    return {"inputs": [t]}


def _count(router: Router, code: str) -> float:
    families = text_string_to_metric_families(router.metrics.render().decode())
    samples = [s for f in families if f.name == "sluice_requests" for s in f.samples if s.name.endswith("_total")]
    return sum(s.value for s in samples if s.labels["code"] == code)


async def test_rows_and_elements_per_request_are_bounded(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json=v2_body(row(101)))
    assert r.status_code == 413
    assert r.json()["error"] == "input 'X': 101 rows exceed the limit of 100 per request"
    r = await client.post(URL, json=_tensor(shape=[50, 40], data=[0.0] * 2000))
    assert r.status_code == 413
    assert "more than 1000 tensor elements" in r.json()["error"]
    # A shape that lies about its data is refused before the data is converted.
    r = await client.post(URL, json=_tensor(shape=[1, 4], data=[[0.0] * 4] * 90))
    assert r.status_code == 400
    assert "does not match its data (90 entries)" in r.json()["error"]
    r = await client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[0, 0, 0, 0]] * 101})
    assert r.status_code == 413
    assert (await client.post(URL, json=v2_body(row(100)))).status_code == 200


async def test_a_shape_of_more_than_32_dims_is_400_and_every_5xx_is_counted(
    client: httpx.AsyncClient, router: Router
) -> None:
    before_400 = _count(router, "400")
    r = await client.post(URL, json=_tensor(shape=[1] * 33, data=[1.0]))
    assert r.status_code == 400
    assert r.json()["error"] == "input 'X': 'shape' has 33 dimensions; at most 32 are supported"
    assert _count(router, "400") == before_400 + 1

    before_500 = _count(router, "500")
    r = await client.post(URL, json=_tensor(), headers={"x-sluice-variant": "bug", **ADMIN_HEADERS})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error"}
    assert _count(router, "500") == before_500 + 1


async def test_fp32_overflow_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(URL, json=_tensor(data=[1e39, 0.0, 0.0, 0.0]))
    assert r.status_code == 400
    assert r.json()["error"] == "input 'X': value out of range for datatype FP32"
    assert (await client.post(URL, json=_tensor(data=[3e38, 0.0, 0.0, 0.0]))).status_code == 200


async def test_unknown_names_are_never_echoed_at_length(client: httpx.AsyncClient) -> None:
    name = "m" * 5000
    r = await client.post(f"/v2/models/{name}/infer", json=_tensor())
    assert r.status_code == 404
    assert len(r.text) < 300
    assert "(5000 chars)" in r.json()["error"]
    r = await client.post(f"/v2/models/{MODEL}/versions/{'v' * 5000}/infer", json=_tensor())
    assert r.status_code == 404
    assert len(r.text) < 300


async def test_override_header_is_ignored_unless_enabled_or_admin(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        r = await client.post(URL, json=_tensor(), headers={"x-sluice-variant": "canary"})
        assert (r.status_code, r.headers["x-sluice-variant"]) == (200, "stable")
    r = await client.post(URL, json=_tensor(), headers={"x-sluice-variant": "canary", **ADMIN_HEADERS})
    assert (r.status_code, r.headers["x-sluice-variant"]) == (200, "canary")


async def test_model_uris_never_reach_clients_and_logs_redact_them(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    r = await client.post(URL, json=_tensor(), headers={"x-sluice-variant": "leaky", **ADMIN_HEADERS})
    assert r.status_code == 503
    assert r.json() == {"error": "model not ready: model <uri>: HTTP 403"}
    # GET /admin/config is for the admin only; the data plane's own answers never carry a URI.
    meta = await client.get(f"/v2/models/{MODEL}")
    assert "models.example" not in meta.text
    assert "file:" not in meta.text
    caplog.set_level(logging.INFO)
    model = OnnxModel("m", "v1", "ftp://user:pw@host/m.onnx?sig=s3cr3t")
    assert model.load() is False
    assert "s3cr3t" not in caplog.text
    assert "pw@" not in caplog.text
    assert "ftp://host/m.onnx?<redacted>" in caplog.text
    assert model.error is not None
    assert "s3cr3t" not in model.error
    assert redact_uris(f"load {SECRET_URI} failed") == "load https://models.example/fraud-v3.onnx?<redacted> failed"
    assert redact_uris("s3://user:pw@bucket/k.onnx") == "s3://bucket/k.onnx"
    assert hide_uris("model file:v1.onnx: gone") == "model <uri>: gone"


async def test_admin_changes_are_validated_before_200(client: httpx.AsyncClient, router: Router) -> None:
    current = (await client.get("/admin/config", headers=ADMIN_HEADERS)).json()

    def with_arm(uri: str) -> dict[str, Any]:
        arm = {"name": "arm", "version": "v9", "uri": uri, "weight": 10}
        variants = [{**v, "weight": 90 if v["name"] == "stable" else 0} for v in current["variants"]]
        return {**current, "variants": [*variants, arm]}

    for uri, message in (
        ("http://169.254.169.254/latest/meta-data", "uri scheme 'http' is not allowed here"),
        ("ftp://x/m.onnx", "uri scheme 'ftp' is not allowed here"),
        ("file://missing.onnx", "variant 'arm' (version 'v9'): model did not load: not ready"),
    ):
        r = await client.put("/admin/config", json=with_arm(uri), headers=ADMIN_HEADERS)
        assert r.status_code == 422, r.text
        assert message in r.json()["error"]
        assert [v.name for v in router.config.variants] == ["stable", "canary", "bug", "leaky"]  # old config serves
        assert (await client.post(URL, json=_tensor())).status_code == 200
    r = await client.put("/admin/config", json=with_arm("file://good.onnx"), headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    assert router.config.variant("arm").weight == 10
    r = await client.put("/admin/config", json=current, headers=ADMIN_HEADERS)  # back, for the other tests
    assert r.status_code == 200


def test_admin_api_is_off_without_a_token(router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    for key in ("SLUICE_ADMIN_TOKEN", "SLUICE_ADMIN_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    app = build_app(router)  # as the Ray ingress builds it: no token in its environment
    with TestClient(app) as tc:
        r = tc.get("/admin/config", headers={"authorization": "Bearer "})
        assert r.status_code == 403
        assert "admin API is off" in r.json()["error"]
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "from-env")
    with TestClient(build_app(router)) as tc:
        assert tc.get("/admin/config", headers={"authorization": "Bearer from-env"}).status_code == 200
    assert AdminAuth(None).allows({"authorization": "Bearer "}) is False


def test_no_traceback_for_client_errors(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    from starlette.testclient import TestClient

    caplog.set_level(logging.DEBUG)
    with TestClient(build_app(router)) as tc:
        for body in (_tensor(shape=[1] * 40, data=[1.0]), _tensor(data=[1e39, 0, 0, 0]), v2_body(row(500))):
            assert tc.post(URL, json=body).status_code in (400, 413)
    assert not [rec for rec in caplog.records if rec.exc_info]
