"""Check a decoded request against the model's metadata before it reaches a backend."""

from __future__ import annotations

from sluice.serving.errors import InvalidInput
from sluice.serving.tensors import InferRequest, ModelMetadata


def validate_request(request: InferRequest, metadata: ModelMetadata) -> None:
    """Raise InvalidInput naming the first input that is missing, unknown, or of the wrong datatype or shape."""
    given = {t.name: t for t in request.inputs}
    for spec in metadata.inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidInput(f"missing input {spec.name!r}; the model expects {[s.name for s in metadata.inputs]}")
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {spec.name!r}: datatype {tensor.datatype} does not match the model's {spec.datatype}"
            )
        shape = tensor.shape
        if len(shape) != len(spec.shape) or any(e not in (-1, g) for e, g in zip(spec.shape, shape, strict=True)):
            raise InvalidInput(
                f"input {spec.name!r}: shape {list(shape)} does not match the model's {list(spec.shape)} (-1 = any)"
            )
    known = {s.name for s in metadata.inputs}
    unknown = sorted(set(given) - known)
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; the model expects {sorted(known)}")
    outputs = {s.name for s in metadata.outputs}
    bad = [n for n in request.outputs if n not in outputs]
    if bad:
        raise InvalidInput(f"requested output(s) {bad} do not exist; the model has {sorted(outputs)}")
