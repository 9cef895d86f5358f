"""The router in this process: its `HttpServer` on a background thread, and the plane built on it (onnx, triton)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.serving.admin import AdminAuth
from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.launch.common import LaunchError, wait_ready

log = logging.getLogger(__name__)


class RouterThread:
    """`HttpServer` serving `build_app(router)` (and a `GrpcServer` when given a gRPC port) on a background thread
    with its own event loop."""

    def __init__(
        self, router: Any, host: str, port: int, admin: AdminAuth | None = None, grpc_port: int | None = None
    ) -> None:
        from sluice.serving.httpserver import HttpServer

        self.router = router
        self.server = HttpServer.for_router(router, host, port, admin=admin)
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
class RouterPlane:
    """A router in this process over in-process or tritonserver backends."""

    server: RouterThread
    host: str
    port: int
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    # ServingConfig -> ServingConfig run before the router sees an update (Triton: endpoints, reloads)
    prepare: Callable[[ServingConfig], ServingConfig] | None = None
    grpc_port: int | None = None  # the v2 gRPC API's port when served
    admin_token_file: Path | None = None  # where the admin API's bearer token is (see sluice.serving.admin)
    stopped: bool = False

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
        if self.stopped:
            return
        self.stopped = True
        self.server.stop()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception:
                log.exception("cleanup failed")


def serve_router(
    config: ServingConfig,
    factory: Callable[[VariantConfig, ServingConfig], Any],
    host: str,
    port: int,
    *,
    ready_timeout_s: float,
    cleanups: list[Callable[[], None]],
    grpc_port: int | None = None,
) -> RouterPlane:
    """A `Router` over `factory`'s backends, served here; returns once the model answers ready."""
    from sluice.serving import admin
    from sluice.serving.router import Router

    router = Router(config, {v.name: factory(v, config) for v in config.variants}, factory=factory)
    auth = admin.for_process("serve")  # the configured token, else a generated one in a 0600 file
    cleanups = [lambda: admin.remove_token_file(auth), *cleanups]
    try:
        server = RouterThread(router, host, port, auth, grpc_port)
    except ValueError as exc:  # a bad $SLUICE_HTTP_* limit: undo what was started (tritonserver, the token file)
        for cleanup in reversed(cleanups):
            cleanup()
        raise LaunchError(str(exc)) from exc
    plane = RouterPlane(server, host, 0, cleanups, admin_token_file=auth.token_file)
    try:
        plane.port = server.start(ready_timeout_s)
        plane.grpc_port = server.grpc.port if server.grpc is not None else None
        wait_ready(plane.url, config, ready_timeout_s)
    except BaseException:
        plane.stop()
        raise
    return plane
