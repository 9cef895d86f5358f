"""Open Inference Protocol (KServe v2) REST JSON <-> `InferRequest` / `InferResponse`.

Pure functions over already-parsed JSON so any transport can use them. Every error is an `InvalidInput` whose
message names the offending input, because a client can only fix what it is told.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sluice.serving.errors import InvalidInput
from sluice.serving.protocol.limits import check_shape
from sluice.serving.tensors import V2_TO_NUMPY, InferRequest, InferResponse, Tensor

# numpy kinds accepted for each datatype family: ints may feed float tensors, never the other way round.
_ACCEPTED_KINDS = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}

ParamValue = str | int | float | bool


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


def decode_tensor(raw: Any) -> Tensor:
    """One entry of a request's `inputs`: name, shape, datatype and row-major data (flat or nested)."""
    if not isinstance(raw, dict):
        raise InvalidInput("each entry of 'inputs' must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("an input has no 'name'")
    for key in ("shape", "datatype", "data"):
        if key not in raw:
            raise InvalidInput(f"input {name!r}: missing {key!r}")
    params = _parameters(raw.get("parameters"), f"input {name!r}")
    if "binary_data_size" in params:
        raise InvalidInput(f"input {name!r}: the binary tensor data extension is not supported; send JSON data")
    shape = _shape(raw["shape"], name)
    datatype = raw["datatype"]
    if datatype not in V2_TO_NUMPY:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}")
    dtype = V2_TO_NUMPY[datatype]
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    array = _to_array(data, datatype, dtype, name)
    expected = math.prod(shape)
    if array.size != expected:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, data has {array.size}")
    return Tensor(name=name, data=array.reshape(shape))


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


def decode_infer_request(body: Any, raw: bytes | None = None) -> InferRequest:
    """A parsed v2 infer request body -> InferRequest (inputs, requested outputs, parameters, id).

    With `raw` (the bytes `body` was parsed from) the result is a `DecodedRequest` that backends may forward as is.
    """
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object with 'inputs'")
    inputs_raw = body.get("inputs")
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    inputs = tuple(decode_tensor(t) for t in inputs_raw)
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate input names in {names}")
    outputs: list[str] = []
    outputs_raw = body.get("outputs")
    if outputs_raw is not None:
        if not isinstance(outputs_raw, list):
            raise InvalidInput("'outputs' must be a list")
        for out in outputs_raw:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
            outputs.append(out["name"])
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    wanted = tuple(outputs)
    parameters = _parameters(body.get("parameters"), "request")
    if raw is None:
        return InferRequest(inputs=inputs, id=request_id, outputs=wanted, parameters=parameters)
    return DecodedRequest(
        inputs=inputs,
        id=request_id,
        outputs=wanted,
        parameters=parameters,
        raw=raw,
        decoded=(inputs, wanted, request_id, parameters),
    )


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
