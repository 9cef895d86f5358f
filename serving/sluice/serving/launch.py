"""A data plane on this machine, started and stopped from Python: `sluice serve`, `sluice run`, tests, benchmarks.

    plane = start_data_plane(config, "ray", base_dir=Path("manifests/examples"))
    ...  # POST {plane.url}/v2/models/NAME/infer, scrape plane.metrics_url
    plane.update(new_config)  # live weights / mirror
    plane.stop()              # idempotent; nothing left running

Backends: "ray" (local Ray Serve running the Sluice application, updated through user_config exactly as a
RayService would be), "triton" (the local tritonserver with the standalone router in front) and "onnx" (the router
and in-process onnxruntime in this process: no extra processes at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from sluice.serving.config import ServingConfig, VariantConfig

log = logging.getLogger(__name__)

BackendKind = Literal["ray", "triton", "onnx"]
KINDS: tuple[str, ...] = ("ray", "triton", "onnx")


class LaunchError(RuntimeError):
    """The data plane could not start; the message says which part and why."""


class DataPlane(Protocol):
    """A running local data plane."""

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_data_plane(
    config: ServingConfig,
    backend: BackendKind,
    base_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready_timeout_s: float = 120.0,
    ray_args: dict[str, Any] | None = None,
    grpc_port: int | None = None,
) -> DataPlane:
    """Start serving `config`; returns once every variant answers ready (or raises LaunchError and cleans up).

    `grpc_port` (onnx and triton; 0 picks a free one) also serves the v2 gRPC API there: see `plane.grpc_port`."""
    if backend == "ray":
        from sluice.serving.ray.local import start_ray_plane

        return start_ray_plane(
            config, base_dir, host, port or free_port(host), ready_timeout_s=ready_timeout_s, args=ray_args or {}
        )
    if backend == "onnx":
        return _start_onnx_plane(config, base_dir, host, port, ready_timeout_s, grpc_port=grpc_port)
    if backend == "triton":
        return _start_triton_plane(config, base_dir, host, port, ready_timeout_s, grpc_port=grpc_port)
    raise LaunchError(f"unknown backend {backend!r}; choose one of {', '.join(KINDS)}")


# ---- the router in this process (its HttpServer in a background thread) ------------------------------------------


class _RouterServer:
    """`HttpServer` serving `build_app(router)` on a background thread with its own event loop."""

    def __init__(self, router: Any, host: str, port: int, grpc_port: int | None = None) -> None:
        from sluice.serving.httpserver import HttpServer

        self.router = router
        self.server = HttpServer.for_router(router, host, port)
        self.grpc: Any = None
        if grpc_port is not None:
            from sluice.serving.grpcserver import GrpcServer

            self.grpc = GrpcServer(self.server.app.plane, host, grpc_port)
        self.host = host
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-router", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()  # a failed start must not leave start() waiting

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.server.start()
        try:
            if self.grpc is not None:
                await self.grpc.start()
            self._started.set()
            await self._stop.wait()
        finally:
            if self.grpc is not None:
                await self.grpc.shutdown()
            await self.server.shutdown()

    def start(self, timeout_s: float) -> int:
        self._thread.start()
        if not self._started.wait(timeout_s) or self._error is not None or not self._thread.is_alive():
            self.stop()
            raise LaunchError(f"router did not start: {self._error or 'timed out'}")
        return self.server.port

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        if self.loop is None:
            raise LaunchError("router is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have just closed
                self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=30)


@dataclass
class _LocalPlane:
    """A router in this process over in-process or tritonserver backends."""

    server: _RouterServer
    host: str
    port: int
    cleanups: list[Any] = field(default_factory=list)
    prepare: Any = None  # ServingConfig -> ServingConfig run before the router sees an update (Triton endpoints)
    grpc_port: int | None = None  # the v2 gRPC API's port when served
    _stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def update(self, config: ServingConfig) -> None:
        if self.prepare is not None:
            config = self.prepare(config)
        self.server.call(self.server.router.apply(config))

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.stop()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:
                log.exception("cleanup failed")


def _serve_router(
    config: ServingConfig,
    factory: Any,
    host: str,
    port: int,
    *,
    ready_timeout_s: float,
    cleanups: list[Any],
    grpc_port: int | None = None,
) -> _LocalPlane:
    from sluice.serving.router import Router

    router = Router(config, {v.name: factory(v, config) for v in config.variants}, factory=factory)
    server = _RouterServer(router, host, port, grpc_port)
    plane = _LocalPlane(server, host, 0, cleanups)
    try:
        plane.port = server.start(ready_timeout_s)
        plane.grpc_port = server.grpc.port if server.grpc is not None else None
        _wait_ready(plane.url, config, ready_timeout_s)
    except BaseException:
        plane.stop()
        raise
    return plane


def _start_onnx_plane(
    config: ServingConfig, base_dir: Path, host: str, port: int, ready_timeout_s: float, *, grpc_port: int | None
) -> _LocalPlane:
    from sluice.serving.backends.onnx_local import OnnxLocalBackend

    def factory(v: VariantConfig, c: ServingConfig) -> OnnxLocalBackend:
        return OnnxLocalBackend.for_variant(v, c, base_dir)

    return _serve_router(config, factory, host, port, ready_timeout_s=ready_timeout_s, cleanups=[], grpc_port=grpc_port)


def _start_triton_plane(
    config: ServingConfig, base_dir: Path, host: str, port: int, ready_timeout_s: float, *, grpc_port: int | None
) -> _LocalPlane:
    """The triton engineer's LocalTriton (one tritonserver, every version) with the router here in front."""
    try:
        from sluice.serving.backends import make_backend
        from sluice.serving.triton.local import LocalTriton
        from sluice.serving.triton.server import TritonServerError
    except ImportError as exc:
        raise LaunchError(
            f"the Triton backend is unavailable ({exc}); install the extras: sluice[triton,triton-local]"
        ) from exc

    triton = LocalTriton(base_dir=base_dir, startup_timeout_s=ready_timeout_s)
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
        return make_backend("triton", v, c)

    plane = _serve_router(
        served, factory, host, port, ready_timeout_s=ready_timeout_s, cleanups=[triton.stop], grpc_port=grpc_port
    )
    plane.prepare = prepare
    return plane


def _wait_ready(url: str, config: ServingConfig, timeout_s: float) -> None:
    """Poll /v2/models/NAME/ready; on timeout the error carries each weighted version's not-ready reason."""
    import httpx

    model = config.model_name
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.get(f"{url}/v2/models/{model}/ready", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        time.sleep(0.1)
    reasons = []
    for v in config.variants:
        if v.weight > 0:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"{url}/v2/models/{model}/versions/{v.version}", timeout=5)
                if r.status_code != 200:
                    reasons.append(f"{v.name} {v.version}: {r.json().get('error', r.text)}")
    raise LaunchError(f"model {model} did not become ready within {timeout_s:g} s ({'; '.join(reasons) or last})")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
