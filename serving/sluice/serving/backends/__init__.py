"""Where inference runs: one Backend implementation per file, chosen by `make_backend`.

Each implementation module exposes `from_variant(variant, config) -> Backend`. The registry maps a kind name to
that module, imported only when used (so the router does not pull tritonclient or onnxruntime unless asked), and
an unknown kind is refused rather than silently defaulted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from sluice.serving.backends.base import Backend

if TYPE_CHECKING:
    from sluice.serving.config import ServingConfig, VariantConfig

__all__ = ["BACKEND_KINDS", "Backend", "make_backend"]

BACKEND_KINDS: dict[str, str] = {
    "http": "sluice.serving.backends.http",  # any Open Inference Protocol REST server (variant.endpoint)
    "triton": "sluice.serving.backends.triton",  # tritonserver through tritonclient (variant.endpoint)
    "onnx": "sluice.serving.backends.onnx_local",  # in-process onnxruntime session (variant.uri)
}


def make_backend(kind: str, variant: VariantConfig, config: ServingConfig) -> Backend:
    """Build the Backend of `kind` for one variant; ValueError names the known kinds."""
    module_name = BACKEND_KINDS.get(kind)
    if module_name is None:
        raise ValueError(f"unknown backend kind {kind!r}; known: {sorted(BACKEND_KINDS)}")
    module = importlib.import_module(module_name)
    factory = getattr(module, "from_variant", None)
    if factory is None:
        raise ValueError(f"backend module {module_name} has no from_variant(variant, config)")
    return cast(Backend, factory(variant, config))
