"""A data plane on this machine, started and stopped from Python: `sluice serve`, `sluice run`, tests, benchmarks.

    plane = start_data_plane(config, "ray", base_dir=Path("manifests/examples"))
    ...  # POST {plane.url}/v2/models/NAME/infer, scrape plane.metrics_url
    plane.update(new_config)  # live weights / mirror
    plane.stop()              # idempotent; nothing left running

Backends (the values of `--backend` on `sluice serve` and `sluice run`): "ray" (local Ray Serve running the Sluice
application, updated through user_config exactly as a RayService would be), "triton" (a local tritonserver with the
router in this process in front) and "onnx" (the router and in-process onnxruntime here: no extra process at all).
One module per plane (`ray_plane`, `triton_plane`, `onnx_plane`, the last two on `router_thread`); `common` holds
what they share. Each is imported only when asked for, so `sluice serve --backend onnx` never imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from sluice.serving.config import ServingConfig
from sluice.serving.launch.common import LaunchError
from sluice.serving.ports import free_port

__all__ = ["BACKENDS", "LaunchError", "PlaneBackend", "RunningPlane", "start_data_plane"]

PlaneBackend = Literal["ray", "triton", "onnx"]
BACKENDS: tuple[PlaneBackend, ...] = ("ray", "triton", "onnx")


class RunningPlane(Protocol):
    """A data plane this process started and runs."""

    @property
    def url(self) -> str: ...

    @property
    def metrics_url(self) -> str: ...

    def update(self, config: ServingConfig) -> None:
        """Apply new weights / mirror (and, where the backend allows, new versions) without dropping requests."""
        ...

    def stop(self) -> None:
        """Stop everything this data plane started; safe to call twice."""
        ...


def start_data_plane(
    config: ServingConfig,
    backend: PlaneBackend,
    base_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready_timeout_s: float = 120.0,
    ray_args: dict[str, Any] | None = None,
    grpc_port: int | None = None,
) -> RunningPlane:
    """Start serving `config`; returns once every variant answers ready (or raises LaunchError and cleans up).

    `grpc_port` (onnx and triton; 0 picks a free one) also serves the v2 gRPC API there: see `plane.grpc_port`."""
    if backend == "ray":
        from sluice.serving.launch.ray_plane import start_ray_plane

        return start_ray_plane(
            config, base_dir, host, port or free_port(host), ready_timeout_s=ready_timeout_s, args=ray_args or {}
        )
    if backend == "onnx":
        from sluice.serving.launch.onnx_plane import start_onnx_plane

        return start_onnx_plane(config, base_dir, host, port, ready_timeout_s, grpc_port=grpc_port)
    if backend == "triton":
        from sluice.serving.launch.triton_plane import start_triton_plane

        return start_triton_plane(config, base_dir, host, port, ready_timeout_s, grpc_port=grpc_port)
    raise LaunchError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
