"""The "ray" plane: Sluice on a local Ray Serve, deployed through the same config path a RayService uses
(serveConfigV2).

Deploying the `serve_application` dict (not `serve.run(app)`) is what makes `update()` a lightweight user_config
change: Serve derives the code version from import_path + args, which stay fixed while only weights move.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.serving.config import ServingConfig
from sluice.serving.launch.common import LaunchError, remove_tree, temp_dir, wait_ready
from sluice.serving.ray.app import serve_application

log = logging.getLogger(__name__)


@dataclass
class RayPlane:
    """Ray + Serve started by this process (or an already running Ray, which is then left running)."""

    host: str
    port: int
    base_dir: Path
    args: dict[str, Any]
    own_ray: bool
    tmp: Path | None
    app_name: str = ""
    _stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def application(self, config: ServingConfig) -> dict[str, Any]:
        return serve_application(config, base_dir=str(self.base_dir.resolve()), **self.args)

    def deploy(self, config: ServingConfig, timeout_s: float = 120.0) -> None:
        from ray.serve.context import _get_global_client
        from ray.serve.schema import ServeDeploySchema

        app = self.application(config)
        self.app_name = app["name"]
        before = self._deployed_at()
        client: Any = _get_global_client()
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
        self._wait_running(before, timeout_s)

    def _deployed_at(self) -> float | None:
        """When the controller last took a target for the application (None: no such application yet)."""
        from ray import serve

        status = serve.status().applications.get(self.app_name)
        return None if status is None else float(status.last_deployed_time_s)

    def _wait_running(self, before: float | None, timeout_s: float) -> None:
        """RUNNING after the controller took this deploy's target (its deploy time moved past `before`)."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = serve.status().applications.get(self.app_name)
            if status is not None and (before is None or status.last_deployed_time_s > before):
                if status.status == "RUNNING":
                    return
                if status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise LaunchError(f"Ray Serve application {self.app_name} {status.status}: {status.message}")
            time.sleep(0.2)
        raise LaunchError(f"Ray Serve application {self.app_name} not running after {timeout_s:g} s")

    def update(self, config: ServingConfig) -> None:
        """Same versions: only the ingress user_config changes (reconfigure, no restart). New versions: rebuild."""
        self.deploy(config)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        try:
            if self.own_ray:
                serve.shutdown()  # type: ignore[no-untyped-call]
                ray.shutdown()
            elif self.app_name:
                serve.delete(self.app_name)
        finally:
            if self.tmp is not None:
                remove_tree(self.tmp)


def _python_signal_handlers() -> dict[int, Any]:
    """SIGTERM/SIGINT handlers set from Python, when called on the main thread (only there can they be reset)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGTERM, signal.SIGINT) if (h := signal.getsignal(s)) is not None}


def start_ray_plane(
    config: ServingConfig, base_dir: Path, host: str, port: int, *, ready_timeout_s: float, args: dict[str, Any]
) -> RayPlane:
    """Start Ray (2 CPUs, session files in a temp dir) unless one is running, then Serve and the application."""
    import ray
    from ray import serve

    own = not ray.is_initialized()
    tmp = None
    if own:
        tmp = temp_dir("sluice-ray-")
        num_cpus = int(os.environ.get("SLUICE_RAY_NUM_CPUS", "2"))
        # Ray's core worker installs a C-level SIGTERM handler that aborts the process; keep the caller's handlers
        # (`sluice serve` shuts down cleanly on SIGTERM) by putting them back once Ray is up.
        handlers = _python_signal_handlers()
        ray.init(
            _temp_dir=str(tmp), num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace="sluice"
        )
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    plane = RayPlane(host, port, base_dir, args, own, tmp)
    try:
        serve.start(http_options={"host": host, "port": port})
        from ray.serve.context import _get_global_client

        client: Any = _get_global_client()
        plane.port = int(client.http_config.port)  # a Serve that was already running keeps its own port
        plane.deploy(config, ready_timeout_s)
        wait_ready(plane.url, config, ready_timeout_s)
    except BaseException:
        plane.stop()
        raise
    return plane
