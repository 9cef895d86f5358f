"""ManagedTriton: the tritonserver `sluice serve/run --backend triton` uses, following config updates live."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from sluice.serving.backends.triton import TritonBackend
from sluice.serving.config import ServingConfig
from sluice.serving.tensors import InferRequest, Tensor
from sluice.serving.triton.managed import ManagedTriton
from sluice.serving.triton.repository import sha256_of
from sluice.serving.triton.server import TritonServerError

pytestmark = [pytest.mark.triton, pytest.mark.timeout(180)]


def _config(*variants: tuple[str, str, str, int]) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [{"name": n, "version": v, "uri": u, "weight": w} for n, v, u, w in variants],
        }
    )


async def _version_of(config: ServingConfig, variant: str) -> str:
    v = config.variant(variant)
    assert v.endpoint is not None
    backend = TritonBackend(v.endpoint, config.model_name, version=v.version)
    try:
        request = InferRequest(inputs=(Tensor("X", np.zeros((1, 4), np.float32)),))
        return (await backend.infer(request)).model_version
    finally:
        await backend.close()


async def test_start_update_and_stop(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(onnx_models["v1"], models / "a.onnx")
    shutil.copy(onnx_models["v2"], models / "b.onnx")
    triton = ManagedTriton(base_dir=tmp_path)  # relative file: URIs resolve against the YAML's directory
    try:
        served = triton.start(_config(("stable", "v1", "file:models/a.onnx", 100)))
        assert served.variant("stable").endpoint == triton.endpoint
        assert await _version_of(served, "stable") == "v1"

        # A canary appears (listed first, to prove numbers do not follow list order).
        served = triton.update(
            _config(
                ("canary", "v2", "file:models/b.onnx", 10),
                ("stable", "v1", "file:models/a.onnx", 90),
            )
        )
        assert await _version_of(served, "canary") == "v2"
        assert await _version_of(served, "stable") == "v1"
        assert triton.numbers == {"v1": 1, "v2": 2}

        # Promotion: v2 becomes the only version; Triton unloads v1.
        served = triton.update(_config(("stable", "v2", "file:models/b.onnx", 100)))
        assert await _version_of(served, "stable") == "v2"
        old = TritonBackend(triton.endpoint, "fraud", version="1")
        try:
            assert not await old.ready()
        finally:
            await old.close()
        workdir = triton.workdir
    finally:
        triton.stop()
    assert not workdir.exists()
    triton.stop()  # idempotent


def test_bad_checksum_is_a_clear_error_and_cleans_up(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    config = ServingConfig.model_validate(
        {
            "model_name": "fraud",
            "variants": [
                {
                    "name": "stable",
                    "version": "v1",
                    "uri": onnx_models["v1"].as_uri(),
                    "weight": 100,
                    "sha256": "0" * 64,
                }
            ],
        }
    )
    triton = ManagedTriton()
    with pytest.raises(TritonServerError, match="sha256 mismatch"):
        triton.start(config)
    assert triton.server is None
    assert not triton.workdir.exists()
    assert sha256_of(onnx_models["v1"]) != "0" * 64


async def test_a_canary_that_fails_to_load_is_reported_and_stable_keeps_serving(
    tmp_path: Path, onnx_models: dict[str, Path]
) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"truncated download")
    triton = ManagedTriton(base_dir=tmp_path)
    try:
        served = triton.start(_config(("stable", "v1", onnx_models["v1"].as_uri(), 100)))
        with pytest.raises(TritonServerError, match="could not load the new versions"):
            triton.update(
                _config(("stable", "v1", onnx_models["v1"].as_uri(), 90), ("canary", "v2", "file:bad.onnx", 10))
            )
        assert await _version_of(served, "stable") == "v1"
    finally:
        triton.stop()
