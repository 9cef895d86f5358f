"""Transport-free inference types shared by the protocol codecs, the router and every backend."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# Open Inference Protocol datatype <-> numpy dtype.
V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # BYTES travels as a numpy object array of `bytes` (UTF-8 strings in JSON).
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: dict[np.dtype[np.generic], str] = {v: k for k, v in V2_TO_NUMPY.items()}


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named n-d array; its Open Inference Protocol datatype follows from the numpy dtype."""

    name: str
    data: npt.NDArray[np.generic]

    @property
    def datatype(self) -> str:
        return NUMPY_TO_V2[self.data.dtype]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, datatype and shape (-1 for a variable dimension) of a model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a loaded model version looks like, for /v2/models/NAME and for input validation."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str = "CPUExecutionProvider"


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One inference call; `parameters` are the protocol's free-form request parameters, passed through."""

    inputs: tuple[Tensor, ...]
    id: str | None = None
    outputs: tuple[str, ...] = ()  # requested output names; empty means all
    parameters: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferResponse:
    """A backend's answer; a backend may set `parameters["batch_size"]` to the batch it ran this request in."""

    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
