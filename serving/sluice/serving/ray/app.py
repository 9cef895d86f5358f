"""Build the Sluice Serve application, from Python or from a Serve config file (`import_path` + `args`).

A RayService `serveConfigV2` entry comes from `spec.serve_application(config)` (re-exported here), which the
operator imports without Ray; see spec.py for why weights travel in the ingress `user_config`.
"""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application

from sluice.serving.config import ServingConfig
from sluice.serving.ray.ingress import SluiceIngress
from sluice.serving.ray.model import OnnxModelDeployment
from sluice.serving.ray.spec import (
    DEFAULTS,
    IMPORT_PATH,
    INGRESS_NAME,
    canonical,
    deployment_name,
    serve_application,
    versions,
)

__all__ = [
    "DEFAULTS",
    "IMPORT_PATH",
    "INGRESS_NAME",
    "build_app",
    "canonical",
    "deployment_name",
    "serve_application",
    "versions",
]


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for `args = {"config": ServingConfig as JSON, ...DEFAULTS}`."""
    unknown = sorted(set(args) - {"config", *DEFAULTS})
    if unknown:
        raise ValueError(f"unknown Sluice app args {unknown}; allowed: config, {', '.join(DEFAULTS)}")
    if "config" not in args:
        raise ValueError("Sluice app args need 'config' (a ServingConfig as JSON)")
    opts = {**DEFAULTS, **{k: v for k, v in args.items() if k != "config"}}
    config = ServingConfig.model_validate(args["config"])
    batching = config.batching
    max_ongoing = max(64, 4 * batching.max_batch_size)  # Serve's default of 5 would cap every batch at 5
    models: dict[str, Any] = {}
    for version, v in versions(config).items():
        models[version] = (
            cast(Any, OnnxModelDeployment)
            .options(
                name=deployment_name(version),
                num_replicas=opts["model_replicas"],
                max_ongoing_requests=max_ongoing,
                ray_actor_options={"num_cpus": opts["model_num_cpus"], "num_gpus": config.gpus_per_replica},
            )
            .bind(
                name=config.model_name,
                version=version,
                uri=v.uri,
                sha256=v.sha256,
                base_dir=opts["base_dir"],
                batching=batching.enabled,
                max_batch_size=batching.max_batch_size,
                max_wait_ms=batching.max_wait_ms,
                intra_op_threads=opts["intra_op_threads"],
            )
        )
    ingress: Any = SluiceIngress
    return cast(
        Application,
        ingress.options(
            name=INGRESS_NAME,
            max_ongoing_requests=opts["ingress_max_ongoing_requests"],
            ray_actor_options={"num_cpus": opts["ingress_num_cpus"]},
        ).bind(config.model_dump(mode="json"), models),
    )
