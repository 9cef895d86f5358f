"""The ingress deployment: the router's Starlette app (`sluice.serving.app.build_app`) inside a Serve replica.

Weights and mirror arrive as `user_config` and are applied by `reconfigure` to the live Router: Serve calls it on the
running replica, so a weight change neither restarts the replica nor fails a request in flight.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from starlette.applications import Starlette

from sluice.serving.app import build_app
from sluice.serving.backends.base import VariantBackend
from sluice.serving.backends.ray_handle import RayHandleBackend
from sluice.serving.config import ServingConfig
from sluice.serving.router import Router


@serve.deployment
@serve.ingress()
class SluiceIngress:
    """Routes one model's traffic across the version deployments it was bound to (handles keyed by version)."""

    def __init__(self, config: dict[str, Any], models: dict[str, Any]) -> None:
        initial = ServingConfig.model_validate(config)
        self._backends = {version: RayHandleBackend(h, initial.model_name, version) for version, h in models.items()}
        self.router = Router(initial, self._by_variant(initial))

    def _by_variant(self, config: ServingConfig) -> dict[str, VariantBackend]:
        missing = sorted({v.version for v in config.variants} - set(self._backends))
        if missing:
            raise ValueError(
                f"versions {missing} have no model deployment in this application (deployed: "
                f"{sorted(self._backends)}); a new version needs a new application build, not user_config"
            )
        return {v.name: self._backends[v.version] for v in config.variants}

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_app(self.router)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply `{"config": ServingConfig}`: weights, mirror, headers; the served versions must stay the same."""
        if not user_config or "config" not in user_config:
            return
        config = ServingConfig.model_validate(user_config["config"])
        self.router.update(config, self._by_variant(config))

    async def replica_info(self) -> dict[str, Any]:
        """Who is answering (tests check it survives a reconfigure)."""
        ctx = serve.get_replica_context()
        return {
            "pid": os.getpid(),
            "replica": ctx.replica_id.unique_id,
            "weights": {v.name: v.weight for v in self.router.config.variants},
        }
