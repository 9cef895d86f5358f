"""The model runtime: fetch an ONNX file, verify it, open an onnxruntime session, warm it up, run batches.

Every backend that runs ONNX in Python (the in-process backend, the Ray Serve model deployment) goes through
`OnnxModel`, so URI handling, hash checks, provider choice and warm-up behave the same everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import numpy.typing as npt

from sluice.serving.errors import redact_uris
from sluice.serving.objects import ObjectReadError, read_object
from sluice.serving.tensors import V2_TO_NUMPY, ModelMetadata, Tensor, TensorSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEFAULT_MAX_BYTES = 2 * 1024**3  # an ONNX protobuf cannot exceed 2 GiB without external data anyway

# onnxruntime type strings -> Open Inference Protocol datatypes.
ORT_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ModelLoadError(Exception):
    """The model could not be fetched, verified, opened or warmed up; the message says which and why."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Knobs of one session. One intra-op thread by default: on small CPUs parallel replicas beat parallel ops."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    prefer_gpu: bool = True
    http_timeout_s: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES


def resolve_uri(uri: str, base_dir: Path | None) -> str:
    """Turn `file:relative` into `file:///abs` against base_dir; other URIs are returned unchanged."""
    if uri.startswith("file:") and not uri.startswith("file://"):
        rel = unquote(uri[len("file:") :])
        path = Path(rel)
        if not path.is_absolute():
            if base_dir is None:
                raise ModelLoadError(f"model URI {uri!r} is relative but no base directory was given to resolve it")
            path = base_dir / path
        return path.resolve().as_uri()
    return uri


def fetch(uri: str, base_dir: Path | None = None, options: RuntimeOptions = RuntimeOptions()) -> bytes:
    """The model file's bytes from file:, http(s)://, s3:// or gs:// (objects.py; object stores need an extra)."""
    uri = resolve_uri(uri, base_dir)
    try:
        return read_object(uri, options.max_bytes, options.http_timeout_s)
    except ObjectReadError as exc:
        raise ModelLoadError(f"model URI {exc}") from exc


def verify_sha256(data: bytes, expected: str | None, uri: str) -> str:
    """The file's sha256; raises ModelLoadError naming both hashes when an expected one does not match."""
    actual = hashlib.sha256(data).hexdigest()
    if expected is not None and actual != expected.lower():
        raise ModelLoadError(f"model {uri}: sha256 mismatch: expected {expected.lower()}, got {actual}")
    return actual


def choose_providers(prefer_gpu: bool) -> list[str]:
    """CUDA first when this onnxruntime build has it (the `gpu` extra); the session itself says if it was usable."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if prefer_gpu and CUDA in available:
        _preload_cuda(ort)
        return [CUDA, CPU]
    return [CPU]


@functools.cache
def _preload_cuda(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries that pip installed (the `cuda` extra, what the GPU image carries) before the
    first CUDA session: onnxruntime-gpu finds them only this way unless they are on the library path already."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # libraries of a CUDA base image or the host: the session reports what it could use
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TO_V2.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which Sluice cannot serve")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def zeros_for(spec: TensorSpec, batch: int = 1) -> npt.NDArray[Any]:
    """A zero tensor of the declared shape, dynamic dimensions = batch (warm-up and tests)."""
    shape = tuple(batch if d < 0 else d for d in spec.shape)
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])


class OnnxModel:
    """One loaded model version. `load()` never raises: a failure leaves `ready` False and `error` set."""

    def __init__(
        self,
        name: str,
        version: str,
        uri: str,
        *,
        sha256: str | None = None,
        base_dir: Path | None = None,
        options: RuntimeOptions = RuntimeOptions(),
    ) -> None:
        self.name = name
        self.version = version
        self.uri = uri
        self.sha256 = sha256
        self.base_dir = base_dir
        self.options = options
        self.error: str | None = None
        self._session: Any = None
        self._metadata: ModelMetadata | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._session is not None and self.error is None

    @property
    def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            raise ModelLoadError(self.error or f"model {self.name} {self.version} is not loaded")
        return self._metadata

    @property
    def provider(self) -> str:
        return self._metadata.provider if self._metadata else "none"

    def load(self) -> bool:
        """Fetch, verify, open and warm up; True when ready. Idempotent once loaded."""
        with self._lock:
            if self.ready:
                return True
            try:
                self._load()
            except ModelLoadError as exc:
                self._fail(str(exc))
            except Exception as exc:  # onnxruntime raises its own types for corrupt files
                self._fail(f"model {self.name} {self.version} ({self.uri}): {type(exc).__name__}: {exc}")
            return self.ready

    def _fail(self, reason: str) -> None:
        self._session = None
        reason = redact_uris(reason)  # presigned query strings and credentials never reach logs or status
        self.error = reason
        log.error("model not ready: %s", reason)

    def _load(self) -> None:
        import onnxruntime as ort

        self.error = None
        data = fetch(self.uri, self.base_dir, self.options)
        verify_sha256(data, self.sha256, self.uri)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, self.options.intra_op_threads)
        so.inter_op_num_threads = max(1, self.options.inter_op_threads)
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, sess_options=so, providers=choose_providers(self.options.prefer_gpu))
        except Exception as exc:
            raise ModelLoadError(f"model {self.uri}: onnxruntime cannot open it: {exc}") from exc
        provider = session.get_providers()[0]  # what is really used, not what is compiled in
        meta = ModelMetadata(
            name=self.name,
            version=self.version,
            platform="onnxruntime_onnx",
            inputs=tuple(_spec(i) for i in session.get_inputs()),
            outputs=tuple(_spec(o) for o in session.get_outputs()),
            provider=provider,
        )
        feeds = {spec.name: zeros_for(spec) for spec in meta.inputs}
        try:
            session.run(None, feeds)
        except Exception as exc:
            raise ModelLoadError(f"model {self.uri}: warm-up inference failed: {exc}") from exc
        self._metadata = meta
        self._session = session
        log.info("model %s %s ready on %s (pid %d)", self.name, self.version, provider, os.getpid())

    def predict(self, inputs: dict[str, npt.NDArray[Any]]) -> tuple[Tensor, ...]:
        """Run one (already batched) call; outputs in the model's declared order."""
        session = self._session
        if session is None:
            raise ModelLoadError(self.error or f"model {self.name} {self.version} is not loaded")
        names = [o.name for o in self.metadata.outputs]
        results = session.run(names, inputs)
        return tuple(Tensor(n, np.asarray(r)) for n, r in zip(names, results, strict=True))


def merge_inputs(requests: list[dict[str, npt.NDArray[Any]]]) -> tuple[dict[str, npt.NDArray[Any]], list[int]] | None:
    """Concatenate several requests' inputs along the batch axis; None when their shapes cannot be stacked."""
    if not requests:
        return None
    names = set(requests[0])
    sizes: list[int] = []
    for r in requests:
        if set(r) != names or any(a.ndim == 0 for a in r.values()):
            return None
        rows = {a.shape[0] for a in r.values()}
        if len(rows) != 1:
            return None
        sizes.append(rows.pop())
    merged: dict[str, npt.NDArray[Any]] = {}
    for name in names:
        parts = [r[name] for r in requests]
        if len({(p.dtype, p.shape[1:]) for p in parts}) != 1:
            return None
        merged[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return merged, sizes


def split_outputs(outputs: tuple[Tensor, ...], sizes: list[int]) -> list[tuple[Tensor, ...]]:
    """Undo merge_inputs on the outputs: one tuple of tensors per request, in order."""
    total = sum(sizes)
    for t in outputs:
        if t.data.ndim == 0 or t.data.shape[0] != total:
            raise ModelLoadError(f"output {t.name!r} has shape {list(t.data.shape)}, not batch-major over {total} rows")
    bounds = np.cumsum([0, *sizes])
    return [tuple(Tensor(t.name, t.data[int(lo) : int(hi)]) for t in outputs) for lo, hi in itertools.pairwise(bounds)]


def predict_many(model: OnnxModel, requests: list[dict[str, npt.NDArray[Any]]]) -> list[tuple[Tensor, ...]]:
    """Run several requests as one call when they stack, else one by one (the result is the same either way)."""
    merged = merge_inputs(requests)
    if merged is None or len(requests) == 1:
        return [model.predict(r) for r in requests]
    feeds, sizes = merged
    return split_outputs(model.predict(feeds), sizes)
