"""Model-repository generation: configs parse with Triton's own protobuf, versions map both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from sluice.serving.config import ServingConfig
from sluice.serving.triton.repository import (
    Flavour,
    ModelVersion,
    RepositoryError,
    RepositorySpec,
    build_config,
    labels_from_config,
    parse_pbtxt,
    read_onnx_signature,
    render_config,
    sha256_of,
    version_numbers,
    write_model,
)


def _triton_parse(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


@pytest.mark.parametrize("flavour", list(Flavour))
def test_both_flavours_parse_as_triton_model_config(
    flavour: Flavour, tmp_path: Path, onnx_models: dict[str, Path]
) -> None:
    spec = RepositorySpec(
        model_name="iris",
        versions=(ModelVersion("v1", "file:a"), ModelVersion("2024-05", "file:b")),
        flavour=flavour,
        max_batch_size=64,
        preferred_batch_sizes=(8, 32),
        max_queue_delay_us=500,
        gpus=2 if flavour is Flavour.ONNXRUNTIME else 0,
        instance_count=3,
    )
    model_dir = write_model(spec, tmp_path, {"v1": onnx_models["v1"], "2024-05": onnx_models["v2"]})
    config = _triton_parse((model_dir / "config.pbtxt").read_text())

    assert config.name == "iris"
    assert config.max_batch_size == 64
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.version_policy.specific.versions) == [1, 2]
    group = config.instance_group[0]
    assert group.count == 3
    if flavour is Flavour.ONNXRUNTIME:
        assert config.platform == "onnxruntime_onnx"
        assert config.backend == ""
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert list(group.gpus) == [0, 1]
        assert not (model_dir / "1" / "model.py").exists()
    else:
        assert config.backend == "python"
        assert config.platform == ""
        assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert (model_dir / "1" / "model.py").is_file()
        assert (model_dir / "2" / "model.py").is_file()
    # The signature comes from the ONNX file; the batch-only `label` output is reshaped for Triton.
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("X", model_config_pb2.TYPE_FP32, [4])]
    outputs = {t.name: t for t in config.output}
    assert list(outputs["probabilities"].dims) == [2]
    assert list(outputs["label"].dims) == [1]
    assert outputs["label"].HasField("reshape")
    assert list(outputs["label"].reshape.shape) == []
    assert sha256_of(model_dir / "2" / "model.onnx") == sha256_of(onnx_models["v2"])
    assert labels_from_config(dict(config.parameters)) == {1: "v1", 2: "2024-05"}


def test_misspelt_field_is_refused_with_its_position() -> None:
    spec = RepositorySpec(model_name="m", versions=(ModelVersion("v1", "file:a"),), flavour=Flavour.ONNXRUNTIME)
    good = render_config(build_config(spec))
    bad = good.replace("max_queue_delay_microseconds", "max_delay")
    assert bad != good
    parse_pbtxt(good)
    with pytest.raises(RepositoryError, match=r"invalid Triton config.pbtxt: \d+:\d+ .*max_delay"):
        parse_pbtxt(bad)


def test_latest_policy_and_no_batching(onnx_models: dict[str, Path]) -> None:
    spec = RepositorySpec(
        model_name="m", versions=(ModelVersion("a", "file:a"),), latest=2, max_batch_size=0, flavour=Flavour.PYTHON
    )
    inputs, outputs = read_onnx_signature(onnx_models["v1"], batching=False)
    config = parse_pbtxt(render_config(build_config(spec, inputs, outputs)))
    assert config.version_policy.latest.num_versions == 2
    assert not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[-1, 4]]  # batch dimension is part of dims without batching


def test_version_numbers_are_positions_unless_given() -> None:
    versions = (ModelVersion("v1", "u"), ModelVersion("canary", "u", number=7), ModelVersion("v3", "u"))
    assert version_numbers(versions) == {"v1": 1, "canary": 7, "v3": 3}
    with pytest.raises(RepositoryError, match="appears twice"):
        version_numbers((ModelVersion("v1", "u"), ModelVersion("v1", "u")))
    with pytest.raises(RepositoryError, match="number 1 is used by two labels"):
        version_numbers((ModelVersion("a", "u"), ModelVersion("b", "u", number=1)))
    with pytest.raises(RepositoryError, match="positive"):
        version_numbers((ModelVersion("a", "u", number=0),))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_name": "a/b"}, "directory name"),
        ({"versions": ()}, "at least one version"),
        ({"preferred_batch_sizes": (64,)}, r"preferred batch sizes \[64\]"),
        ({"instance_count": 0}, "instance_count"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"model_name": "m", "versions": (ModelVersion("v1", "u"),), "max_batch_size": 16}
    with pytest.raises(RepositoryError, match=message):
        RepositorySpec(**(base | kwargs))  # type: ignore[arg-type]


def test_wrong_checksum_and_python_flavour_without_signature(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    spec = RepositorySpec(model_name="m", versions=(ModelVersion("v1", "u", sha256="0" * 64),))
    with pytest.raises(RepositoryError, match="sha256"):
        write_model(spec, tmp_path, {"v1": onnx_models["v1"]})
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(RepositoryError, match="not a loadable ONNX model"):
        write_model(RepositorySpec(model_name="m", versions=(ModelVersion("v1", "u"),)), tmp_path, {"v1": garbage})
    assert not (tmp_path / "m").exists()


def test_spec_from_serving_config() -> None:
    serving = ServingConfig.model_validate(
        {
            "model_name": "iris",
            "variants": [
                {"name": "stable", "version": "v1", "uri": "file:a.onnx", "weight": 90},
                {"name": "canary", "version": "v2", "uri": "file:b.onnx", "weight": 10},
            ],
            "batching": {"max_batch_size": 8, "max_wait_ms": 1.5, "preferred_batch_sizes": [4]},
            "gpus_per_replica": 0.5,
        }
    )
    spec = RepositorySpec.from_serving_config(serving, Flavour.ONNXRUNTIME)
    assert [v.label for v in spec.versions] == ["v1", "v2"]
    assert (spec.max_batch_size, spec.max_queue_delay_us, spec.preferred_batch_sizes, spec.gpus) == (8, 1500, (4,), 1)
