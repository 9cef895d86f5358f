"""The Sluice Serve application end to end over real HTTP on a real local Ray Serve."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest

from sluice.serving.config import ServingConfig
from sluice.serving.ray.app import build_app, canonical, serve_application

pytestmark = pytest.mark.ray


def _body(n: int = 1, seed: int = 0) -> dict[str, Any]:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return {"inputs": [{"name": "features", "shape": [n, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}


def _with_weights(config: ServingConfig, **weights: int) -> ServingConfig:
    raw = config.model_dump(mode="json")
    for v in raw["variants"]:
        v["weight"] = weights.get(v["name"], 0)
    return ServingConfig.model_validate(raw)


async def _load(url: str, n: int, concurrency: int, flowing: asyncio.Event | None = None) -> list[httpx.Response]:
    """`n` requests, `concurrency` at a time; `flowing` is set once the first 20 were answered."""
    answered = 0
    async with httpx.AsyncClient(timeout=30) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> httpx.Response:
            nonlocal answered
            async with sem:
                response = await client.post(f"{url}/v2/models/fraud/infer", json=_body(1, seed=i))
            answered += 1
            if flowing is not None and answered >= 20:
                flowing.set()
            return response

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_v2_infer_over_http(ray_plane: Any) -> None:
    r = httpx.post(f"{ray_plane.url}/v2/models/fraud/infer", json=_body(3), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "fraud"
    assert body["model_version"] in {"v1", "v2"}
    probs = next(o for o in body["outputs"] if o["name"] == "probabilities")
    assert probs["shape"] == [3, 2]
    assert np.allclose(np.array(probs["data"]).reshape(3, 2).sum(axis=1), 1.0, atol=1e-5)
    pinned = httpx.post(f"{ray_plane.url}/v2/models/fraud/versions/v2/infer", json=_body(1), timeout=30)
    assert pinned.json()["model_version"] == "v2"
    bad = httpx.post(f"{ray_plane.url}/v2/models/fraud/infer", json={"inputs": [{"name": "nope"}]}, timeout=30)
    assert bad.status_code == 400


def test_model_metadata_names_the_provider(ray_plane: Any) -> None:
    meta = httpx.get(f"{ray_plane.url}/v2/models/fraud/versions/v1", timeout=30)
    assert meta.status_code == 200, meta.text
    assert meta.json()["inputs"][0]["name"] == "features"
    metrics = httpx.get(ray_plane.metrics_url, timeout=30).text
    assert re.search(r'sluice_model_loaded\{[^}]*provider="CPUExecutionProvider"[^}]*version="v1"[^}]*\} 1\.0', metrics)


def test_broken_version_is_not_ready_and_says_why(ray_plane: Any) -> None:
    ready = httpx.get(f"{ray_plane.url}/v2/models/fraud/versions/v9/ready", timeout=30)
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    r = httpx.post(f"{ray_plane.url}/v2/models/fraud/versions/v9/infer", json=_body(1), timeout=30)
    assert r.status_code == 503
    assert "sha256 mismatch" in r.json()["error"]
    assert httpx.get(f"{ray_plane.url}/v2/models/fraud/ready", timeout=30).status_code == 200


def test_weights_split_traffic(ray_plane: Any) -> None:
    responses = asyncio.run(_load(ray_plane.url, 200, 8))
    assert all(r.status_code == 200 for r in responses)
    counts = Counter(r.json()["model_version"] for r in responses)
    assert 120 <= counts["v1"] <= 160, counts  # 70 % of 200, smooth weighted round robin
    assert counts["v9"] == 0


def test_batching_forms_batches_under_concurrency(ray_plane: Any) -> None:
    before = httpx.get(ray_plane.metrics_url, timeout=30).text
    responses = asyncio.run(_load(ray_plane.url, 160, 16))
    assert all(r.status_code == 200 for r in responses)
    after = httpx.get(ray_plane.metrics_url, timeout=30).text
    rows = _metric_sum(after, "sluice_batch_size_sum") - _metric_sum(before, "sluice_batch_size_sum")
    calls = _metric_sum(after, "sluice_batch_size_count") - _metric_sum(before, "sluice_batch_size_count")
    assert calls == 160
    assert rows / calls > 1.5, f"mean batch size {rows / calls:.2f}"
    assert max(int(r.json()["parameters"]["batch_size"]) for r in responses) > 1


def test_weight_change_reconfigures_in_place_without_failures(ray_plane: Any, ray_config: ServingConfig) -> None:
    config = ray_config
    from ray import serve

    ingress = serve.get_app_handle("fraud")
    model_v1 = serve.get_deployment_handle("model-v1", app_name="fraud")
    before = ingress.replica_info.remote().result()
    model_pid = model_v1.pid.remote().result()
    assert before["weights"] == {"stable": 70, "canary": 30, "broken": 0}

    async def load_during_update() -> list[httpx.Response]:
        flowing = asyncio.Event()
        task = asyncio.create_task(_load(ray_plane.url, 300, 8, flowing))
        await asyncio.wait_for(flowing.wait(), 60)  # the update lands in the middle of the load
        await asyncio.to_thread(ray_plane.update, _with_weights(config, stable=10, canary=90))
        return await task

    try:
        responses = asyncio.run(load_during_update())
        failed = [r.status_code for r in responses if r.status_code != 200]
        assert failed == []
        after = ingress.replica_info.remote().result()
        assert after["weights"] == {"stable": 10, "canary": 90, "broken": 0}
        assert (after["pid"], after["replica"]) == (before["pid"], before["replica"])
        assert model_v1.pid.remote().result() == model_pid
        counts = Counter(r.json()["model_version"] for r in asyncio.run(_load(ray_plane.url, 100, 4)))
        assert counts["v2"] >= 80, counts
    finally:
        ray_plane.update(config)


def test_serve_application_keeps_args_fixed_when_weights_move(ray_config: ServingConfig) -> None:
    config = ray_config
    a = serve_application(config)
    b = serve_application(_with_weights(config, stable=10, canary=90))
    assert a["args"] == b["args"]
    assert a["import_path"] == "sluice.serving.ray.app:build_app"
    assert a["deployments"][0]["user_config"]["config"]["variants"][0]["weight"] == 70
    assert b["deployments"][0]["user_config"]["config"]["variants"][0]["weight"] == 10
    assert canonical(config).mirror is None


def test_bad_app_args_are_refused_with_names(ray_config: ServingConfig) -> None:
    config = ray_config
    with pytest.raises(ValueError, match="unknown Sluice app args"):
        serve_application(config, colour="blue")
    with pytest.raises(ValueError, match="need 'config'"):
        build_app({})
    raw = config.model_dump(mode="json")
    raw["variants"][1]["version"] = "v1"
    with pytest.raises(ValueError, match="share version 'v1'"):
        serve_application(ServingConfig.model_validate(raw))


def test_tritonclient_defaults_binary_tensors_through_the_ray_ingress(ray_plane: Any) -> None:
    """tritonclient.http with its defaults (binary request and answer) through Serve's proxy and the ingress."""
    import tritonclient.http as httpclient

    x = np.random.default_rng(9).normal(size=(4, 4)).astype(np.float32)
    with httpclient.InferenceServerClient(ray_plane.url.removeprefix("http://"), network_timeout=30) as client:
        item = httpclient.InferInput("features", list(x.shape), "FP32")
        item.set_data_from_numpy(x)
        result = client.infer("fraud", [item], model_version="v1")
        response = result.get_response()
        assert response["model_version"] == "v1"
        assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
        probs = result.as_numpy("probabilities")
        assert probs.shape == (4, 2)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        json_result = client.infer(
            "fraud", [item], model_version="v1", outputs=[httpclient.InferRequestedOutput("probabilities", False)]
        )
        np.testing.assert_array_equal(json_result.as_numpy("probabilities"), probs)
