"""The init-container step, run as the operator will run it: `python -m sluice.serving.triton.prepare`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sluice.serving.triton.repository import labels_from_config, parse_pbtxt, sha256_of


def _prepare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.serving.triton.prepare", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_prepare_file_and_http_versions(
    tmp_path: Path, onnx_models: dict[str, Path], http_dir: tuple[str, Path]
) -> None:
    base_url, www = http_dir
    (www / "v2.onnx").write_bytes(onnx_models["v2"].read_bytes())
    dest = tmp_path / "models"
    result = _prepare(
        "--model", "iris", "--dest", str(dest),
        "--version", "v1", "--uri", onnx_models["v1"].as_uri(), "--sha256", sha256_of(onnx_models["v1"]),
        "--version", "v2", "--uri", f"{base_url}/v2.onnx", "--sha256", sha256_of(onnx_models["v2"]),
        "--preferred-batch-size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = parse_pbtxt((dest / "iris" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx"
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert labels_from_config(dict(config.parameters)) == {1: "v1", 2: "v2"}
    assert sha256_of(dest / "iris" / "1" / "model.onnx") == sha256_of(onnx_models["v1"])
    assert sha256_of(dest / "iris" / "2" / "model.onnx") == sha256_of(onnx_models["v2"])


def test_prepare_refuses_a_wrong_checksum_and_leaves_nothing(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    dest = tmp_path / "models"
    result = _prepare(
        "--model", "iris", "--dest", str(dest),
        "--version", "v1", "--uri", onnx_models["v1"].as_uri(), "--sha256", "ab" * 32,
    )  # fmt: skip
    assert result.returncode == 1
    assert "sha256 mismatch" in result.stderr
    assert not list(dest.rglob("*.onnx"))
    assert not list(dest.rglob("config.pbtxt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "v1", "--version", "v2", "--uri", "file:///x.onnx"], "2 --version but 1 --uri"),
        (["--version", "v1", "--uri", "file:///nonexistent/m.onnx"], "cannot be read"),
        (["--version", "v1", "--uri", "ftp://host/m.onnx"], "unsupported scheme"),
    ],
)
def test_prepare_bad_arguments_name_the_problem(tmp_path: Path, args: list[str], message: str) -> None:
    result = _prepare("--model", "iris", "--dest", str(tmp_path), *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
