"""Open Inference Protocol (KServe v2) gRPC messages <-> `InferRequest` / `InferResponse`.

Pure functions over the `GRPCInferenceService` messages that ship in `tritonclient.grpc.service_pb2`, the same
protobufs Triton and KServe serve, so tritonclient.grpc talks to the router as to either. Inputs come as
`raw_input_contents` (what tritonclient sends by default: one little-endian buffer per input, in input order) or
as typed `contents`; outputs always go back as `raw_output_contents`, which every v2 gRPC client reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2 as pb

from sluice.serving.errors import InvalidInput
from sluice.serving.protocol.limits import check_request_id
from sluice.serving.protocol.v2_codec import ParamValue, array_from_bytes, select_outputs, tensor_bytes
from sluice.serving.tensors import V2_TO_NUMPY, InferRequest, InferResponse, Tensor

# The typed `contents` field each datatype travels in (FP16 has none: raw only, as in the protocol).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param(value: Any, where: str) -> ParamValue:
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidInput(f"{where}: a parameter has no value")
    result: ParamValue = getattr(value, kind)
    return result


def _parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    return {str(key): _param(value, f"{where} parameter {key!r}") for key, value in raw.items()}


def _shape(dims: Any, name: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: 'shape' has a negative dimension {list(shape)}")
    return shape


def _from_contents(tensor: Any, shape: tuple[int, ...], name: str) -> npt.NDArray[Any]:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: datatype {tensor.datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    expected = int(np.prod(shape, dtype=np.int64))
    if len(values) != expected:
        raise InvalidInput(f"input {name!r}: shape {list(shape)} needs {expected} elements, contents has {len(values)}")
    if tensor.datatype == "BYTES":
        out = np.empty(expected, dtype=object)
        out[:] = [bytes(v) for v in values]
        return out.reshape(shape)
    dtype = V2_TO_NUMPY[tensor.datatype]
    wide = np.asarray(values)
    converted = wide.astype(dtype)
    if dtype.kind in "iu" and not np.array_equal(converted, wide):
        raise InvalidInput(f"input {name!r}: value out of range for datatype {tensor.datatype}")
    return converted.reshape(shape)


def decode_grpc_request(message: Any) -> InferRequest:
    """A `ModelInferRequest` -> InferRequest; every refusal names the input, as in the REST codec."""
    if not message.inputs:
        raise InvalidInput("request needs at least one input")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} buffers for {len(message.inputs)} inputs; send one per input"
        )
    inputs: list[Tensor] = []
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput("an input has no 'name'")
        if tensor.datatype not in V2_TO_NUMPY:
            raise InvalidInput(
                f"input {name!r}: unknown datatype {tensor.datatype!r}; expected one of {sorted(V2_TO_NUMPY)}"
            )
        shape = _shape(tensor.shape, name)
        data = array_from_bytes(raw[i], shape, tensor.datatype, name) if raw else _from_contents(tensor, shape, name)
        inputs.append(Tensor(name, data))
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate input names in {names}")
    outputs: list[str] = []
    for out in message.outputs:
        params = _parameters(out.parameters, f"output {out.name!r}")
        if params.get("class_count", 0) not in (0, False):
            raise InvalidInput(f"output {out.name!r}: the classification extension (class_count) is not supported")
        outputs.append(out.name)
    check_request_id(message.id or None)
    return InferRequest(
        inputs=tuple(inputs),
        id=message.id or None,
        outputs=tuple(outputs),
        parameters=_parameters(message.parameters, "request"),
    )


def encode_grpc_response(response: InferResponse, request: InferRequest, model_name: str, model_version: str) -> Any:
    """InferResponse -> `ModelInferResponse` with the requested outputs (all when none named) as raw contents."""
    message = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    for tensor in select_outputs(response.outputs, request.outputs):
        message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        message.raw_output_contents.append(tensor_bytes(tensor))
    for key, value in response.parameters.items():
        message.parameters[key].string_param = value
    return message


def metadata_message(body: dict[str, Any]) -> Any:
    """The REST metadata answer (`dataplane.metadata_body`) as a `ModelMetadataResponse`."""
    return pb.ModelMetadataResponse(
        name=body["name"],
        versions=body["versions"],
        platform=body["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in body["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in body["outputs"]],
    )
