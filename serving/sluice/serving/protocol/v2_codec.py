"""Open Inference Protocol (KServe v2) REST JSON <-> `InferRequest` / `InferResponse`, binary extension included.

Pure functions over bytes and parsed JSON so any transport can use them. Every error is an `InvalidInput` whose
message names the offending input, because a client can only fix what it is told.

The binary tensor data extension (what tritonclient sends by default): the body is a JSON header of
`Inference-Header-Content-Length` bytes, then the raw tensors in input order; an input whose
`parameters.binary_data_size` is set takes that many bytes (little-endian, row-major; BYTES elements are each a
4-byte little-endian length then the bytes). Outputs come back the same way when asked for, per output
(`parameters.binary_data`) or for the whole request (`parameters.binary_data_output`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from sluice.serving.errors import InvalidInput
from sluice.serving.protocol.limits import check_request_id, check_shape
from sluice.serving.tensors import V2_TO_NUMPY, InferRequest, InferResponse, Tensor

# numpy kinds accepted for each datatype family: ints may feed float tensors, never the other way round.
_ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}

ParamValue = str | int | float | bool

HEADER_LENGTH = "inference-header-content-length"  # the extension's HTTP header (lower-cased, as hosts pass it)
BINARY_TYPE = "application/octet-stream"
# Request parameters that steer the encoding of this one exchange: the router answers them, backends never see them.
_TRANSPORT_PARAMS = frozenset({"binary_data_output"})


def _parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    out: dict[str, ParamValue] = {}
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool):
            raise InvalidInput(f"{where}: parameter {key!r} must be a string, number or boolean")
        out[str(key)] = value
    return out


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers")
    if any(d < 0 for d in raw):
        raise InvalidInput(f"input {name!r}: 'shape' has a negative dimension {raw}")
    check_shape(raw, name)
    return tuple(raw)


class BinaryReader:
    """The binary section after the JSON header, handed out input by input in order."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.view = memoryview(data)
        self.offset = 0

    def take(self, size: int, name: str) -> memoryview:
        end = self.offset + size
        if end > len(self.view):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(self.view) - self.offset} binary bytes left)"
            )
        chunk = self.view[self.offset : end]
        self.offset = end
        return chunk

    def finish(self) -> None:
        left = len(self.view) - self.offset
        if left:
            raise InvalidInput(f"the body has {left} binary bytes that no input's binary_data_size accounts for")


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, BinaryReader | None]:
    """(JSON header, binary section) of a body, given its `Inference-Header-Content-Length` (None: all JSON)."""
    if header_length is None:
        return raw, None
    value = header_length.strip()
    if not value.isdigit():
        raise InvalidInput(f"header Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    size = int(value)
    if size > len(raw):
        raise InvalidInput(f"header Inference-Header-Content-Length is {size} but the body has only {len(raw)} bytes")
    return raw[:size], BinaryReader(memoryview(raw)[size:])


def decode_tensor(raw: Any, binary: BinaryReader | None = None) -> Tensor:
    """One entry of a request's `inputs`: name, shape, datatype and row-major data (flat or nested, or binary)."""
    if not isinstance(raw, dict):
        raise InvalidInput("each entry of 'inputs' must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input has no 'name'")
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    binary_size = params.get("binary_data_size")
    for key in ("shape", "datatype") if binary_size is not None else ("shape", "datatype", "data"):
        if key not in raw:
            raise InvalidInput(f"input {name!r}: missing {key!r}")
    shape = _shape(raw["shape"], name)
    datatype = raw["datatype"]
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}")
    dtype = V2_TO_NUMPY[datatype]
    if binary_size is not None:
        return Tensor(name=name, data=_from_binary(binary_size, binary, shape, datatype, name))
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    array = _to_array(data, datatype, dtype, name)
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {array.size}")
    return Tensor(name=name, data=array.reshape(shape))


def _from_binary(
    size: ParamValue, binary: BinaryReader | None, shape: tuple[int, ...], datatype: str, name: str
) -> npt.NDArray[Any]:
    """A tensor from its slice of the binary section (little-endian on the wire, native in memory)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"input {name!r}: parameter 'binary_data_size' must be a non-negative integer")
    if binary is None:
        raise InvalidInput(
            f"input {name!r}: has binary_data_size but the request has no Inference-Header-Content-Length header"
        )
    return array_from_bytes(binary.take(size, name), shape, datatype, name)


def array_from_bytes(chunk: memoryview | bytes, shape: tuple[int, ...], datatype: str, name: str) -> npt.NDArray[Any]:
    """A tensor from its raw bytes (binary extension, gRPC raw contents): little-endian on the wire, native here."""
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}")
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(chunk, count, name).reshape(shape)
    dtype = V2_TO_NUMPY[datatype]
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(chunk)}"
        )
    array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"))
    return array.astype(dtype, copy=False).reshape(shape)


def deserialize_bytes(chunk: memoryview | bytes, count: int, name: str) -> npt.NDArray[Any]:
    """`count` BYTES elements, each a 4-byte little-endian length then that many bytes, filling `chunk` exactly."""
    out = np.empty(count, dtype=object)
    view = memoryview(chunk)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends after {i} of {count} elements")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input {name!r}: BYTES element {i} claims {length} bytes, past the end of its data")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInput(f"input {name!r}: BYTES data has {len(view) - offset} bytes after its {count} elements")
    return out


def serialize_bytes(data: npt.NDArray[Any]) -> bytes:
    """BYTES elements (bytes, or str as UTF-8) as 4-byte little-endian length + bytes, row-major."""
    parts: list[bytes] = []
    for item in data.reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor's binary form for the extension: little-endian row-major, or length-prefixed BYTES."""
    data = tensor.data
    if data.dtype.kind == "O":
        return serialize_bytes(data)
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def _to_array(data: list[Any], datatype: str, dtype: np.dtype[Any], name: str) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        flat = _flatten(data, name)
        out = np.empty(len(flat), dtype=object)
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise InvalidInput(f"input {name!r}: BYTES data must be strings")
            out[i] = item.encode()
        return out
    try:
        array = np.asarray(data)
    except ValueError as exc:
        raise InvalidInput(f"input {name!r}: data is ragged or not a nested list of numbers") from exc
    if array.size == 0:
        return np.zeros(0, dtype=dtype)
    if array.dtype.kind not in _ACCEPTED_KINDS.get(dtype.kind, ""):
        raise InvalidInput(f"input {name!r}: data does not match datatype {datatype} (got {_kind_name(array)})")
    try:
        with np.errstate(over="ignore"):  # overflow is checked below and answered as the client's error
            converted = array.astype(dtype)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: value out of range for datatype {datatype}") from exc
    # Integer casts wrap silently: a round-trip mismatch is an out-of-range value.
    if dtype.kind in "iu" and not np.array_equal(converted, array):
        raise InvalidInput(f"input {name!r}: value out of range for datatype {datatype}")
    # Narrowing float casts overflow to infinity silently (1e39 as FP32); JSON has no infinities to begin with.
    if dtype.kind == "f" and dtype.itemsize < array.dtype.itemsize and not np.isfinite(converted).all():
        raise InvalidInput(f"input {name!r}: value out of range for datatype {datatype}")
    return converted.reshape(-1)


def _kind_name(array: npt.NDArray[Any]) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}.get(
        array.dtype.kind, "mixed values"
    )


def _flatten(data: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


@dataclass(frozen=True, slots=True)
class DecodedRequest(InferRequest):
    """An InferRequest that remembers the JSON body it was decoded from (see `raw_body`)."""

    raw: bytes = field(default=b"", compare=False, repr=False)
    # The field objects at decode time: a copy made with dataclasses.replace() keeps `raw` but not these identities.
    decoded: tuple[Any, ...] = field(default=(), compare=False, repr=False)


def raw_body(request: InferRequest) -> bytes | None:
    """The client's JSON body when `request` is exactly what was decoded from it, else None.

    A v2 HTTP backend forwards these bytes instead of re-encoding the tensors: the body already passed decoding and
    validation, and re-encoding (numpy -> lists -> JSON) would be the router's largest cost per request.
    """
    if not isinstance(request, DecodedRequest) or not request.raw or len(request.decoded) != 4:
        return None
    inputs, outputs, request_id, parameters = request.decoded
    if (
        request.inputs is inputs
        and request.outputs is outputs
        and request.id is request_id
        and request.parameters is parameters
    ):
        return request.raw
    return None


@dataclass(frozen=True, slots=True)
class OutputEncoding:
    """Which outputs a client wants as binary: per output (`binary_data`), else the request's `binary_data_output`."""

    default: bool = False
    per_output: dict[str, bool] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        return self.per_output.get(name, self.default)

    @property
    def any(self) -> bool:
        return self.default or any(self.per_output.values())


JSON_OUTPUTS = OutputEncoding()


def _flag(value: ParamValue | None, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where} must be true or false")


def _requested_outputs(raw: Any) -> tuple[tuple[str, ...], dict[str, bool]]:
    """Names of the requested outputs and each one's explicit `binary_data` choice."""
    if raw is None:
        return (), {}
    if not isinstance(raw, list):
        raise InvalidInput("'outputs' must be a list")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for out in raw:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
        name = out["name"]
        names.append(name)
        params = _parameters(out.get("parameters"), f"output {name!r}")
        if params.get("class_count", 0) not in (0, False):
            raise InvalidInput(f"output {name!r}: the classification extension (class_count) is not supported")
        flag = _flag(params.get("binary_data"), f"output {name!r}: parameter 'binary_data'")
        if flag is not None:
            binary[name] = flag
    return tuple(names), binary


def decode_infer_request(body: Any, raw: bytes | None = None, binary: BinaryReader | None = None) -> InferRequest:
    """A parsed v2 infer request body -> InferRequest (inputs, requested outputs, parameters, id).

    `binary` is the body's binary section (see `split_body`); every byte of it must belong to an input. With
    `raw` (the bytes `body` was parsed from) and nothing binary either way, the result is a `DecodedRequest` that
    backends may forward as is. Transport parameters (`binary_data_output`) are answered here, not passed on.
    """
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    inputs_raw = body.get("inputs")
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    inputs = tuple(decode_tensor(t, binary) for t in inputs_raw)
    if binary is not None:
        binary.finish()
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate input names in {names}")
    wanted, per_output = _requested_outputs(body.get("outputs"))
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    check_request_id(request_id)
    parameters = _parameters(body.get("parameters"), "request")
    _flag(parameters.get("binary_data_output"), "request parameter 'binary_data_output'")
    transport = _TRANSPORT_PARAMS.intersection(parameters)
    if transport:
        parameters = {k: v for k, v in parameters.items() if k not in transport}
    if raw is None or binary is not None or transport or per_output:
        return InferRequest(inputs=inputs, id=request_id, outputs=wanted, parameters=parameters)
    return DecodedRequest(
        inputs=inputs,
        id=request_id,
        outputs=wanted,
        parameters=parameters,
        raw=raw,
        decoded=(inputs, wanted, request_id, parameters),
    )


def output_encoding(body: Any) -> OutputEncoding:
    """How the answer to an already decoded request body encodes each output (JSON unless binary was asked for)."""
    if not isinstance(body, dict):
        return JSON_OUTPUTS
    _, per_output = _requested_outputs(body.get("outputs"))
    params = body.get("parameters")
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    if not default and not per_output:
        return JSON_OUTPUTS
    return OutputEncoding(default, per_output)


def encode_tensor(tensor: Tensor) -> dict[str, Any]:
    data = tensor.data
    if data.dtype.kind == "O":
        flat: list[Any] = [b.decode(errors="replace") if isinstance(b, bytes) else str(b) for b in data.reshape(-1)]
    else:
        flat = data.reshape(-1).tolist()
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "data": flat}


def select_outputs(outputs: tuple[Tensor, ...], requested: tuple[str, ...]) -> tuple[Tensor, ...]:
    """Keep the requested outputs in the requested order; an unknown name is the client's error."""
    if not requested:
        return outputs
    by_name = {t.name: t for t in outputs}
    missing = [n for n in requested if n not in by_name]
    if missing:
        raise InvalidInput(f"requested output(s) {missing} do not exist; the model has {sorted(by_name)}")
    return tuple(by_name[n] for n in requested)


def encode_infer_response(response: InferResponse, requested: tuple[str, ...] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": [encode_tensor(t) for t in select_outputs(response.outputs, requested)],
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = dict(response.parameters)
    return body


def encode_binary_response(
    body: dict[str, Any], encoding: OutputEncoding, outputs: tuple[Tensor, ...]
) -> tuple[bytes, int]:
    """An encoded JSON response (`encode_infer_response`) with the chosen outputs moved into a binary section.

    Returns (whole body, length of its JSON header): the transport sends the latter as
    `Inference-Header-Content-Length`. `body` is changed in place.
    """
    chunks: list[bytes] = []
    by_name = {t.name: t for t in outputs}
    for entry in body["outputs"]:
        if not encoding.binary(entry["name"]):
            continue
        data = tensor_bytes(by_name[entry["name"]])
        del entry["data"]
        entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(data)}
        chunks.append(data)
    header = orjson.dumps(body)
    return header + b"".join(chunks), len(header)


def encode_request(request: InferRequest) -> dict[str, Any]:
    """InferRequest -> v2 JSON body; used by HTTP backends that forward a request to a v2 server."""
    body: dict[str, Any] = {"inputs": [encode_tensor(t) for t in request.inputs]}
    if request.outputs:
        body["outputs"] = [{"name": n} for n in request.outputs]
    if request.id is not None:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = dict(request.parameters)
    return body


def decode_response(body: Any) -> InferResponse:
    """A v2 JSON response body -> InferResponse; used by HTTP backends."""
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise InvalidInput("response body has no 'outputs' list")
    params = _parameters(body.get("parameters"), "response")
    return InferResponse(
        model_name=str(body.get("model_name", "")),
        model_version=str(body.get("model_version", "")),
        outputs=tuple(decode_tensor(t) for t in body["outputs"]),
        id=body.get("id"),
        parameters={k: str(v) for k, v in params.items()},
    )
