"""The "onnx" plane: the router and in-process onnxruntime in this process, no other process at all."""

from __future__ import annotations

from pathlib import Path

from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.launch.router_thread import RouterPlane, serve_router


def start_onnx_plane(
    config: ServingConfig, base_dir: Path, host: str, port: int, ready_timeout_s: float, *, grpc_port: int | None = None
) -> RouterPlane:
    from sluice.serving.backends.onnx_inprocess import InProcessOnnxBackend

    def factory(v: VariantConfig, c: ServingConfig) -> InProcessOnnxBackend:
        return InProcessOnnxBackend.for_variant(v, c, base_dir)

    return serve_router(config, factory, host, port, ready_timeout_s=ready_timeout_s, cleanups=[], grpc_port=grpc_port)
