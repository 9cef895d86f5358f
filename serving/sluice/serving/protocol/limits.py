"""Bounds on what one infer request may ask the router to build, checked on the parsed JSON before any tensor is.

`max_request_bytes` alone does not bound the work: 1,000,000 one-element rows fit in 8 MiB and cost seconds of
numpy conversion. So each input's declared shape is checked (at most 32 dimensions, numpy's own limit; rows and
elements within the config's bounds) and the top level of its data must match the shape before it is converted.
"""

from __future__ import annotations

import math
from typing import Any

from sluice.serving.errors import InvalidInput, PayloadTooLarge

MAX_DIMS = 32  # numpy's limit; a deeper shape would escape as numpy's ValueError
# Longest request id, sticky unit key or outcome id the router keeps: ids go into the outcome store and back out
# as a response header (REST) or metadata (gRPC), so they are bounded and printable ASCII (no CR/LF, no controls).
MAX_ID_LENGTH = 256


def is_printable_id(value: str) -> bool:
    """1..MAX_ID_LENGTH characters, each printable ASCII (0x20-0x7e): safe as a header value and a store key."""
    return 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()


def check_request_id(value: str | None, what: str = "id") -> None:
    """A client's request id is an `is_printable_id` string, else a 400 naming `what` (before any routing, so a
    hostile id never reaches the model, the store or a response header)."""
    if value is not None and not is_printable_id(value):
        raise InvalidInput(f"'{what}' must be 1 to {MAX_ID_LENGTH} printable ASCII characters (no control characters)")


def check_shape(shape: list[int], name: str) -> None:
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input {name!r}: 'shape' has {len(shape)} dimensions; at most {MAX_DIMS} are supported")


def check_request_size(body: Any, max_rows: int, max_elements: int) -> None:
    """413 when an input declares more rows or the inputs more elements than allowed; 400 for a shape whose data
    is visibly of another size. Malformed entries are left to the codec, which names the problem."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return
    total = 0
    for raw in body["inputs"]:
        if not isinstance(raw, dict):
            continue
        shape, name = raw.get("shape"), str(raw.get("name", "?"))[:64]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            continue
        check_shape(shape, name)
        if shape and shape[0] > max_rows:
            raise PayloadTooLarge(f"input {name!r}: {shape[0]} rows exceed the limit of {max_rows} per request")
        size = math.prod(shape)
        total += size
        if total > max_elements:
            raise PayloadTooLarge(f"request has more than {max_elements} tensor elements (input {name!r})")
        data = raw.get("data")
        if isinstance(data, list) and data:
            nested = isinstance(data[0], list)
            expected = (shape[0] if shape else 1) if nested else size
            if len(data) != expected:
                raise InvalidInput(f"input {name!r}: shape {shape} does not match its data ({len(data)} entries)")
