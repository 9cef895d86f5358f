"""One local Ray Serve for every Ray test (started once per session, always shut down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.serving.config import ServingConfig

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"

CONFIG = ServingConfig.model_validate(
    {
        "model_name": "fraud",
        "variants": [
            {"name": "stable", "version": "v1", "uri": "file:fraud-v1.onnx", "weight": 70},
            {"name": "canary", "version": "v2", "uri": "file:fraud-v2.onnx", "weight": 30},
            # Served with no traffic and a wrong hash: must report not ready, with the reason, and never crash.
            {"name": "broken", "version": "v9", "uri": "file:fraud-v2.onnx", "sha256": "0" * 64, "weight": 0},
        ],
        "batching": {"max_batch_size": 16, "max_wait_ms": 10},
    }
)


@pytest.fixture(scope="session")
def ray_config() -> ServingConfig:
    return CONFIG


@pytest.fixture(scope="session")
def ray_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sluice.serving.launch import start_data_plane

    plane = start_data_plane(CONFIG, "ray", MODELS, ready_timeout_s=180)
    try:
        yield plane
    finally:
        plane.stop()
