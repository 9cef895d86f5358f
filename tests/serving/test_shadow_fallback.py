"""Shadow mirroring never touches the primary; comparisons are counted right; fallback to stable on canary 5xx."""

from __future__ import annotations

import statistics
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.serving.helpers import MODEL, FailingBackend, OnnxBackend, config, row, serve, v2_body

from sluice.serving.config import ServingConfig
from sluice.serving.errors import BackendError, BackendTimeout
from sluice.serving.router import Router

URL = f"/v2/models/{MODEL}/infer"


# Shadow tasks run on the server's loop; leaving serve() drains them (app lifespan), so counts are final after it.


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _shadow_counts(router: Router) -> dict[str, float]:
    got = _samples(router.metrics.render().decode(), "sluice_shadow_comparisons_total")
    return {dict(k)["outcome"]: v for k, v in got.items()}


def _mirror_config(percent: int = 100) -> ServingConfig:
    return config(
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100},
            {"name": "shadow", "version": "v2", "uri": "file://v2.onnx", "weight": 0},
        ],
        mirror={"variant": "shadow", "percent": percent},
    )


async def _latencies(client: httpx.AsyncClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await client.post(URL, json=v2_body(row(seed=i)))
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200
        assert r.headers["x-sluice-variant"] == "stable"
    return out


async def test_flipped_shadow_disagrees_on_every_mirrored_request(
    model_bytes: bytes, flipped_model_bytes: bytes
) -> None:
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "shadow": OnnxBackend(flipped_model_bytes, "v2")}
    router = Router(_mirror_config(percent=50), backends)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            await _latencies(client, 40)
    assert _shadow_counts(router) == {"disagree": 20.0}
    diffs = _samples(router.metrics.render().decode(), "sluice_shadow_score_difference_count")
    assert sum(diffs.values()) == 20  # one |diff| per row of each mirrored request


async def test_identical_shadow_agrees(model_bytes: bytes) -> None:
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "shadow": OnnxBackend(model_bytes, "v2")}
    router = Router(_mirror_config(), backends)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            await _latencies(client, 10)
    assert _shadow_counts(router) == {"agree": 10.0}
    diff_sum = _samples(router.metrics.render().decode(), "sluice_shadow_score_difference_sum")
    assert sum(diff_sum.values()) == 0.0


async def test_slow_and_failing_shadows_do_not_touch_the_primary(model_bytes: bytes) -> None:
    """Primary latency with a 300 ms shadow stays that of no shadow; a crashing shadow only counts errors."""
    baseline = Router(
        _mirror_config(percent=0), {"stable": OnnxBackend(model_bytes, "v1"), "shadow": OnnxBackend(model_bytes, "v2")}
    )
    slow = Router(
        _mirror_config(),
        {"stable": OnnxBackend(model_bytes, "v1"), "shadow": OnnxBackend(model_bytes, "v2", delay_s=0.3)},
        max_shadow_in_flight=8,
    )
    failing = Router(
        _mirror_config(),
        {"stable": OnnxBackend(model_bytes, "v1"), "shadow": FailingBackend(model_bytes, "v2")},
    )
    results = {}
    for name, router in (("baseline", baseline), ("slow", slow), ("failing", failing)):
        with serve(router) as base:
            async with httpx.AsyncClient(base_url=base) as client:
                await _latencies(client, 5)  # warm-up
                results[name] = statistics.median(await _latencies(client, 30))
    # A shadow awaited inline would add its 300 ms to every request; the margin absorbs this shared machine's noise.
    assert results["slow"] < results["baseline"] + 0.1, results
    assert results["failing"] < results["baseline"] + 0.1, results
    assert _shadow_counts(failing) == {"error": 35.0}
    # Bounded: at most 8 shadows in flight; the rest were dropped and counted.
    dropped = _samples(slow.metrics.render().decode(), "sluice_shadow_dropped_total")
    counts = _shadow_counts(slow)
    assert sum(dropped.values()) > 0
    assert sum(dropped.values()) + counts["agree"] == 35


async def test_fallback_serves_stable_and_still_counts_the_canary_failure(model_bytes: bytes) -> None:
    canary = FailingBackend(model_bytes, "v2", BackendError("model exploded"))
    backends = {"stable": OnnxBackend(model_bytes, "v1"), "canary": canary}
    cfg = config(
        override_enabled=True,
        fallback_to_stable=True,
        variants=[
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 50},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 50},
        ],
    )
    router = Router(cfg, backends)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            for i in range(20):
                r = await client.post(URL, json=v2_body(row(seed=i)))
                assert r.status_code == 200
                assert r.headers["x-sluice-variant"] == "stable"
            # An explicit override is honoured, so it is not rescued: the client sees the canary's error.
            r = await client.post(URL, json=v2_body(row()), headers={"x-sluice-variant": "canary"})
            assert r.status_code == 500
            assert r.json() == {"error": "model exploded"}
            metrics = (await client.get("/metrics")).text
    assert canary.calls == 11
    codes = _samples(metrics, "sluice_requests_total")
    by = {(dict(k)["variant"], dict(k)["code"]): v for k, v in codes.items()}
    assert by[("canary", "500")] == 11
    assert by[("stable", "200")] == 20


async def test_without_fallback_the_canary_error_reaches_the_client(model_bytes: bytes) -> None:
    backends = {
        "stable": OnnxBackend(model_bytes, "v1"),
        "canary": FailingBackend(model_bytes, "v2", BackendTimeout("slow")),
    }
    router = Router(config(override_enabled=True), backends)
    with serve(router) as base:
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post(URL, json=v2_body(row()), headers={"x-sluice-variant": "canary"})
    assert r.status_code == 504
    assert r.json() == {"error": "slow"}
