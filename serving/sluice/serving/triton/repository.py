"""Generate a Triton model repository (``<repo>/<model>/config.pbtxt`` + ``<repo>/<model>/<n>/...``) from a spec.

Two flavours of ``config.pbtxt``:

* ``onnxruntime`` — ``platform: "onnxruntime_onnx"`` with ``<n>/model.onnx``: what a real (GPU) Triton serves.
* ``python`` — ``backend: "python"`` with a generated ``<n>/model.py`` that runs onnxruntime on the whole dynamic
  batch. The tritonserver of the nvidia-pytriton wheel has only the python backend, so this is how Sluice runs
  Triton on a laptop. The python backend cannot auto-complete a config, so inputs and outputs are declared
  explicitly from the ONNX model's signature.

Version numbers: Triton names versions by positive integers (directory names); Sluice names them by labels
(``v1``, ``2024-05-01``). Each `ModelVersion` gets a number, by default its 1-based position in the spec, and the
label of every number is written into the config's ``parameters`` as ``sluice.version_label.<n>``. Anything that
reads the config (the Triton backend, through the server's model-config API) maps numbers back to labels with
`labels_from_config`, so the mapping lives next to the model and cannot drift from it.

Configs are built as the ``ModelConfig`` protobuf message that tritonclient ships and printed with protobuf's text
format, so every file written here parses with ``text_format.Parse`` (see `parse_pbtxt`).
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluice.serving.config import ServingConfig

VERSION_LABEL_PARAM = "sluice.version_label."
MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"

# onnxruntime's type strings -> Triton's model-config data types.
_ORT_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
}


class RepositoryError(ValueError):
    """A spec, model file or config that cannot become a valid Triton model repository."""


class Flavour(StrEnum):
    """Which Triton backend serves the ONNX file."""

    ONNXRUNTIME = "onnxruntime"  # platform onnxruntime_onnx: production Triton images
    PYTHON = "python"  # python backend + generated model.py running onnxruntime: the local tritonserver


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """One input or output as Triton declares it: dims exclude the batch dimension when batching."""

    name: str
    data_type: str  # TYPE_FP32 ...
    dims: tuple[int, ...]
    # The ONNX tensor has only the batch dimension: Triton needs `dims: [1]` and `reshape { shape: [] }`.
    batch_only: bool = False


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One Sluice model version: its label, where its file is, and (optionally) its Triton number."""

    label: str
    uri: str
    sha256: str | None = None
    number: int | None = None


@dataclass(frozen=True, slots=True)
class RepositorySpec:
    """Everything needed to write one model's directory of a Triton model repository."""

    model_name: str
    versions: tuple[ModelVersion, ...]
    flavour: Flavour = Flavour.PYTHON
    max_batch_size: int = 16  # 0 turns Triton batching off (dims then include the batch dimension)
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    gpus: int = 0  # > 0: KIND_GPU instances on that many GPUs; 0: KIND_CPU
    instance_count: int = 1
    # None: serve exactly the listed versions (`specific`); N: Triton serves the latest N numbers.
    latest: int | None = None
    # Threads onnxruntime may use per instance in the python flavour (the local machine is small).
    intra_op_threads: int = 1
    parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model_name or "/" in self.model_name or self.model_name.startswith("."):
            raise RepositoryError(f"model name {self.model_name!r} cannot be a directory name")
        if not self.versions:
            raise RepositoryError("a model repository needs at least one version")
        if self.max_batch_size < 0:
            raise RepositoryError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        bad = [s for s in self.preferred_batch_sizes if s < 1 or (self.max_batch_size and s > self.max_batch_size)]
        if bad:
            raise RepositoryError(
                f"preferred batch sizes {bad} must lie within 1..max_batch_size ({self.max_batch_size})"
            )
        if self.max_queue_delay_us < 0:
            raise RepositoryError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.instance_count < 1:
            raise RepositoryError(f"instance_count must be >= 1, got {self.instance_count}")
        if self.gpus < 0:
            raise RepositoryError(f"gpus must be >= 0, got {self.gpus}")
        if self.latest is not None and self.latest < 1:
            raise RepositoryError(f"latest must be >= 1, got {self.latest}")
        version_numbers(self.versions)  # raises on duplicates

    @classmethod
    def from_serving_config(cls, config: ServingConfig, flavour: Flavour = Flavour.PYTHON) -> RepositorySpec:
        """Build a spec from a `sluice.serving.config.ServingConfig`: one Triton version per distinct label."""
        versions: dict[str, ModelVersion] = {}
        for variant in config.variants:
            versions.setdefault(variant.version, ModelVersion(variant.version, variant.uri, variant.sha256))
        batching = config.batching
        return cls(
            model_name=config.model_name,
            versions=tuple(versions.values()),
            flavour=flavour,
            max_batch_size=batching.max_batch_size,
            dynamic_batching=batching.enabled,
            preferred_batch_sizes=tuple(batching.preferred_batch_sizes),
            max_queue_delay_us=round(batching.max_wait_ms * 1000),
            gpus=math.ceil(config.gpus_per_replica),
        )


def version_numbers(versions: Sequence[ModelVersion]) -> dict[str, int]:
    """Label -> Triton version number: explicit numbers kept, the rest numbered by 1-based position."""
    result: dict[str, int] = {}
    for position, version in enumerate(versions, start=1):
        if not version.label:
            raise RepositoryError("a model version needs a non-empty label")
        if version.label in result:
            raise RepositoryError(f"version label {version.label!r} appears twice")
        number = position if version.number is None else version.number
        if number < 1:
            raise RepositoryError(f"Triton version numbers are positive integers, got {number} for {version.label!r}")
        if number in result.values():
            raise RepositoryError(f"Triton version number {number} is used by two labels")
        result[version.label] = number
    return result


def labels_from_config(parameters: dict[str, Any]) -> dict[int, str]:
    """Triton version number -> Sluice label, from a config's ``parameters`` (protobuf map or JSON dict)."""
    labels: dict[int, str] = {}
    for key, value in parameters.items():
        if not key.startswith(VERSION_LABEL_PARAM):
            continue
        suffix = key.removeprefix(VERSION_LABEL_PARAM)
        if not suffix.isdigit():
            continue
        text = value["string_value"] if isinstance(value, dict) else value.string_value
        labels[int(suffix)] = str(text)
    return labels


def read_onnx_signature(path: Path, *, batching: bool) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """Inputs and outputs of an ONNX file as Triton declares them, read with onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RepositoryError("reading an ONNX signature needs onnxruntime: pip install 'sluice[cpu]'") from exc
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RepositoryError(f"{path} is not a loadable ONNX model: {exc}") from exc

    def convert(args: Any) -> TensorSignature:
        data_type = _ORT_TO_TRITON.get(args.type)
        if data_type is None:
            raise RepositoryError(f"tensor {args.name!r} has type {args.type}, which Triton cannot declare")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in args.shape]
        if not batching:
            return TensorSignature(args.name, data_type, tuple(dims) or (1,))
        if not dims or dims[0] != -1:
            raise RepositoryError(
                f"tensor {args.name!r} has shape {args.shape}: Triton batching needs a variable first "
                "dimension; turn batching off for this model"
            )
        rest = tuple(dims[1:])
        return TensorSignature(args.name, data_type, rest or (1,), batch_only=not rest)

    return [convert(i) for i in session.get_inputs()], [convert(o) for o in session.get_outputs()]


def build_config(
    spec: RepositorySpec,
    inputs: Sequence[TensorSignature] = (),
    outputs: Sequence[TensorSignature] = (),
) -> Any:
    """The ``ModelConfig`` protobuf message of a spec (inputs/outputs may be empty for onnxruntime auto-complete)."""
    from tritonclient.grpc import model_config_pb2 as pb

    if spec.flavour is Flavour.PYTHON and not (inputs and outputs):
        raise RepositoryError("the python flavour needs the model's inputs and outputs declared")
    config = pb.ModelConfig(name=spec.model_name, max_batch_size=spec.max_batch_size)
    if spec.flavour is Flavour.PYTHON:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = MODEL_FILE
    numbers = version_numbers(spec.versions)
    if spec.latest is None:
        config.version_policy.specific.versions.extend(sorted(numbers.values()))
    else:
        config.version_policy.latest.num_versions = spec.latest
    for signatures, repeated in ((inputs, config.input), (outputs, config.output)):
        for sig in signatures:
            tensor = repeated.add()
            tensor.name = sig.name
            tensor.data_type = pb.DataType.Value(sig.data_type)
            tensor.dims.extend(sig.dims)
            if sig.batch_only and spec.max_batch_size > 0:
                tensor.reshape.SetInParent()  # empty shape: the model sees [batch] only
    group = config.instance_group.add()
    group.count = spec.instance_count
    if spec.gpus > 0:
        group.kind = pb.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(range(spec.gpus))
    else:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
    if spec.dynamic_batching and spec.max_batch_size > 0:
        config.dynamic_batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
        config.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    for label, number in numbers.items():
        config.parameters[f"{VERSION_LABEL_PARAM}{number}"].string_value = label
    if spec.flavour is Flavour.PYTHON:
        config.parameters["sluice.intra_op_threads"].string_value = str(spec.intra_op_threads)
    for key, value in spec.parameters.items():
        config.parameters[key].string_value = value
    return config


def render_config(config: Any) -> str:
    """Text of a ``config.pbtxt``; checked by parsing it back, so nothing unparsable is ever written."""
    from google.protobuf import text_format

    text: str = text_format.MessageToString(config)
    parse_pbtxt(text)
    return text


def parse_pbtxt(text: str) -> Any:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig``; a clear `RepositoryError` names the bad line."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"invalid Triton config.pbtxt: {exc}") from exc
    return config


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model(
    spec: RepositorySpec,
    repository: Path,
    model_files: dict[str, Path],
    *,
    inputs: Sequence[TensorSignature] | None = None,
    outputs: Sequence[TensorSignature] | None = None,
) -> Path:
    """Write ``<repository>/<model>/``: each version's files and ``config.pbtxt``. Returns the model directory.

    ``model_files`` maps each version label to a local ONNX file (already fetched). The signature is read from the
    first version's file unless given; versions of one Triton model share one config, so they must agree.
    """
    numbers = version_numbers(spec.versions)
    missing = [label for label in numbers if label not in model_files]
    if missing:
        raise RepositoryError(f"no model file given for versions {missing}")
    for version in spec.versions:
        path = model_files[version.label]
        if not path.is_file():
            raise RepositoryError(f"model file {path} of version {version.label!r} does not exist")
        if version.sha256 is not None and sha256_of(path) != version.sha256.lower():
            raise RepositoryError(f"sha256 of {path} does not match the one given for version {version.label!r}")
    if inputs is None or outputs is None:
        first = model_files[spec.versions[0].label]
        try:
            read_in, read_out = read_onnx_signature(first, batching=spec.max_batch_size > 0)
        except RepositoryError:
            if spec.flavour is Flavour.PYTHON:
                raise
            read_in, read_out = [], []  # onnxruntime_onnx auto-completes the signature on the server
        inputs = read_in if inputs is None else inputs
        outputs = read_out if outputs is None else outputs
    text = render_config(build_config(spec, inputs, outputs))

    model_dir = repository / spec.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    for label, number in numbers.items():
        version_dir = model_dir / str(number)
        version_dir.mkdir(exist_ok=True)
        target = version_dir / MODEL_FILE
        if model_files[label].resolve() != target.resolve():
            shutil.copyfile(model_files[label], target)
        if spec.flavour is Flavour.PYTHON:
            (version_dir / PYTHON_MODEL_FILE).write_text(PYTHON_MODEL_SOURCE)
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


# The python-backend model. It runs under Triton's stub interpreter, which must see onnxruntime and numpy: the
# local server passes the launching interpreter's sys.path in SLUICE_TRITON_PYTHONPATH (the embedded interpreter
# ignores PYTHONPATH); in a Triton image with onnxruntime installed the variable is simply absent.
PYTHON_MODEL_SOURCE = '''\
"""Generated by Sluice: serves model.onnx with onnxruntime, one session run per dynamic batch."""

import json
import os
import sys

# The stub's embedded interpreter ignores PYTHONPATH; the local server passes its own path list in this variable.
for _path in reversed(os.environ.get("SLUICE_TRITON_PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("sluice.intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        columns = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(columns[self.inputs[0]][-1].shape[0])
        try:
            feed = {name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays) for name, arrays in columns.items()}
            results = self.session.run(self.outputs, feed)
        except Exception as exc:
            if len(requests) == 1:  # a bad request fails itself, never the model
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))]
            # One request may be at fault: run each alone so it cannot fail the others batched with it.
            return [self.execute([request])[0] for request in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.outputs, results)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
'''
