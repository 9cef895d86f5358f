"""`start_data_plane` for the in-process and Triton backends: serve, update live, stop with nothing left listening."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from tests.support import listening

from sluice.serving.config import ServingConfig
from sluice.serving.launch import LaunchError, start_data_plane

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"
BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -1.0, 0.2, 1.5]}]}


def _config(stable: int, canary: int, sha: str | None = None) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [
                {"name": "stable", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": stable, "sha256": sha},
                {"name": "canary", "version": "v2", "uri": "file:fraud-v2.onnx", "weight": canary},
            ],
        }
    )


def _versions(url: str, n: int) -> Counter[str]:
    with httpx.Client(timeout=30) as client:
        return Counter(client.post(f"{url}/v2/models/fraud/infer", json=BODY).json()["model_version"] for _ in range(n))


@pytest.mark.parametrize("backend", ["onnx", pytest.param("triton", marks=pytest.mark.triton)])
def test_serve_update_stop(backend: str) -> None:
    plane = start_data_plane(_config(70, 30), backend, MODELS)  # type: ignore[arg-type]
    try:
        assert _versions(plane.url, 100) == {"v1": 70, "v2": 30}
        assert "sluice_requests_total" in httpx.get(plane.metrics_url, timeout=10).text
        plane.update(_config(0, 100))
        assert _versions(plane.url, 20) == {"v2": 20}
    finally:
        started = time.monotonic()
        plane.stop()
        plane.stop()  # idempotent
    assert time.monotonic() - started < 30
    host, port = plane.url.removeprefix("http://").split(":")
    assert not listening(int(port), host)


def test_unknown_backend_and_unready_model_are_clear_errors() -> None:
    with pytest.raises(LaunchError, match="unknown backend 'kserve'"):
        start_data_plane(_config(100, 0), "kserve", MODELS)  # type: ignore[arg-type]
    with pytest.raises(LaunchError, match="sha256 mismatch"):
        start_data_plane(_config(100, 0, sha="a" * 64), "onnx", MODELS, ready_timeout_s=2)
