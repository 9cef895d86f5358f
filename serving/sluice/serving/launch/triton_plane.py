"""The "triton" plane: one local tritonserver serving every version, with the router in this process in front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.launch.common import LaunchError
from sluice.serving.launch.router_thread import RouterPlane, serve_router


def start_triton_plane(
    config: ServingConfig, base_dir: Path, host: str, port: int, ready_timeout_s: float, *, grpc_port: int | None = None
) -> RouterPlane:
    try:
        from sluice.serving.backends import make_variant_backend
        from sluice.serving.triton.managed import ManagedTriton
        from sluice.serving.triton.server import TritonServerError
    except ImportError as exc:
        raise LaunchError(
            f"the Triton backend is unavailable ({exc}); install the extras: sluice[triton,triton-local]"
        ) from exc

    triton = ManagedTriton(base_dir=base_dir, startup_timeout_s=ready_timeout_s)
    try:
        served = triton.start(config)
    except (TritonServerError, ValueError) as exc:
        raise LaunchError(f"tritonserver did not start: {exc}") from exc

    def files(c: ServingConfig) -> set[tuple[str, str, str | None]]:
        return {(v.version, v.uri, v.sha256) for v in c.variants}

    state = {"config": config}

    def prepare(new: ServingConfig) -> ServingConfig:
        """Reload Triton only when the set of model files changes; weights alone never touch the server."""
        try:
            ready = triton.update(new) if files(new) != files(state["config"]) else triton.with_endpoints(new)
        except (TritonServerError, ValueError) as exc:
            raise LaunchError(f"tritonserver could not serve the new versions: {exc}") from exc
        state["config"] = new
        return ready

    def factory(v: VariantConfig, c: ServingConfig) -> Any:
        return make_variant_backend("triton", v, c)

    plane = serve_router(
        served, factory, host, port, ready_timeout_s=ready_timeout_s, cleanups=[triton.stop], grpc_port=grpc_port
    )
    plane.prepare = prepare
    return plane
