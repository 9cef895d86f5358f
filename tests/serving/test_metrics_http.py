"""The /metrics text: exactly the names of metric_names.py, their labels, and the documented bucket edges."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.serving.helpers import MODEL, OnnxBackend, config, row, serve, v2_body

from sluice.serving import metric_names as mn
from sluice.serving.router import Router

URL = f"/v2/models/{MODEL}/infer"


async def test_metrics_names_labels_and_buckets(model_bytes: bytes, flipped_model_bytes: bytes) -> None:
    backends = {
        "stable": OnnxBackend(model_bytes, "v1", batch_size=4),
        "canary": OnnxBackend(model_bytes, "v2"),
        "shadow": OnnxBackend(flipped_model_bytes, "v3"),
    }
    cfg = config(
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 50},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 50},
            {"name": "shadow", "version": "v3", "uri": "file://v3.onnx", "weight": 0},
        ],
        mirror={"variant": "shadow", "percent": 100},
    )
    router = Router(cfg, backends)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for i in range(10):
                assert (await client.post(URL, json=v2_body(row(3, seed=i)))).status_code == 200
            assert (
                await client.post(URL, content=b"{", headers={"content-type": "application/json"})
            ).status_code == 400
            await client.get("/v2/health/ready")
    # Read after the server stopped: its shutdown waited for the shadow comparisons.
    families = {f.name: f for f in text_string_to_metric_families(router.metrics.render().decode())}

    expected = {
        mn.REQUESTS_TOTAL: "counter",
        mn.REQUEST_DURATION_SECONDS: "histogram",
        mn.PREDICTION_SCORE: "histogram",
        mn.BATCH_SIZE: "histogram",
        mn.SHADOW_COMPARISONS_TOTAL: "counter",
        mn.SHADOW_DROPPED_TOTAL: "counter",
        mn.FEATURE_ERRORS_TOTAL: "counter",
        mn.SHADOW_SCORE_DIFF: "histogram",
        mn.MODEL_LOADED: "gauge",
        mn.VARIANT_WEIGHT: "gauge",
    }
    # The parser strips `_total` from counter family names.
    # prometheus-client adds `*_created` timestamp gauges; they are not part of the contract.
    got = {
        (name if f.type != "counter" else name + "_total"): f.type
        for name, f in families.items()
        if not name.endswith("_created")
    }
    assert got == expected

    def samples(metric: str, suffix: str = "") -> dict[frozenset[tuple[str, str]], float]:
        fam = families[metric.removesuffix("_total")]
        return {frozenset(s.labels.items()): s.value for s in fam.samples if s.name == metric + suffix}

    base_labels = {"model": MODEL}
    req = samples(mn.REQUESTS_TOTAL)
    assert req[frozenset({**base_labels, "version": "v1", "variant": "stable", "code": "200"}.items())] == 5
    assert req[frozenset({**base_labels, "version": "v2", "variant": "canary", "code": "200"}.items())] == 5
    assert req[frozenset({**base_labels, "version": "", "variant": "", "code": "400"}.items())] == 1

    # Score histogram: 3 rows per request, identical 0.05-step edges for every variant.
    for version, variant in (("v1", "stable"), ("v2", "canary")):
        key = {**base_labels, "version": version, "variant": variant}
        assert samples(mn.PREDICTION_SCORE, "_count")[frozenset(key.items())] == 15
        edges = sorted(
            float(s.labels["le"])
            for s in families[mn.PREDICTION_SCORE].samples
            if s.name.endswith("_bucket") and s.labels["variant"] == variant
        )
        assert edges == [round(0.05 * i, 2) for i in range(1, 21)] + [float("inf")]
    lat_edges = {
        float(s.labels["le"]) for s in families[mn.REQUEST_DURATION_SECONDS].samples if s.name.endswith("_bucket")
    }
    assert min(lat_edges) == 0.0005
    assert 10.0 in lat_edges

    shadow_key = {**base_labels, "version": "v3", "variant": "shadow"}
    assert samples(mn.SHADOW_COMPARISONS_TOTAL) == {frozenset({**shadow_key, "outcome": "disagree"}.items()): 10}
    assert samples(mn.SHADOW_SCORE_DIFF, "_count")[frozenset(shadow_key.items())] == 30
    assert samples(mn.BATCH_SIZE, "_count") == {
        frozenset({**base_labels, "version": "v1", "variant": "stable"}.items()): 5
    }
    loaded = samples(mn.MODEL_LOADED)
    assert loaded[frozenset({**shadow_key, "provider": "CPUExecutionProvider"}.items())] == 1
    assert len(loaded) == 3
    assert samples(mn.VARIANT_WEIGHT) == {
        frozenset({**base_labels, "version": "v1", "variant": "stable"}.items()): 50,
        frozenset({**base_labels, "version": "v2", "variant": "canary"}.items()): 50,
        frozenset(shadow_key.items()): 0,
    }


async def test_two_routers_do_not_share_a_registry(model_bytes: bytes) -> None:
    a = Router(config(), {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")})
    b = Router(config(), {"stable": OnnxBackend(model_bytes, "v1"), "canary": OnnxBackend(model_bytes, "v2")})
    a.metrics.request("v1", "stable", 200, 0.01)
    assert b"sluice_requests_total{" in a.metrics.render()
    assert b"sluice_requests_total{" not in b.metrics.render()
