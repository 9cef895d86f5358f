"""Where inference runs: one VariantBackend implementation per file, chosen by `make_variant_backend`.

Each implementation module exposes `from_variant(variant, config) -> VariantBackend`. The registry maps a kind name to
that module, imported only when used (so the router does not pull tritonclient or onnxruntime unless asked), and
an unknown kind is refused rather than silently defaulted.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from sluice.serving.backends.base import VariantBackend

if TYPE_CHECKING:
    from sluice.serving.config import ServingConfig, VariantConfig

__all__ = ["VARIANT_BACKENDS", "VariantBackend", "make_variant_backend"]

VARIANT_BACKENDS: dict[str, str] = {
    "http": "sluice.serving.backends.http",  # any Open Inference Protocol REST server (variant.endpoint)
    "triton": "sluice.serving.backends.triton",  # tritonserver through tritonclient (variant.endpoint)
    "onnx": "sluice.serving.backends.onnx_inprocess",  # in-process onnxruntime session (variant.uri)
}


def make_variant_backend(kind: str, variant: VariantConfig, config: ServingConfig) -> VariantBackend:
    """Build the VariantBackend of `kind` for one variant; ValueError names the known kinds."""
    module_name = VARIANT_BACKENDS.get(kind)
    if module_name is None:
        raise ValueError(f"unknown backend kind {kind!r}; known: {sorted(VARIANT_BACKENDS)}")
    module = importlib.import_module(module_name)
    factory = getattr(module, "from_variant", None)
    if factory is None:
        raise ValueError(f"backend module {module_name} has no from_variant(variant, config)")
    return cast(VariantBackend, factory(variant, config))
