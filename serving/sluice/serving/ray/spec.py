"""The Sluice Serve application as a serveConfigV2 entry, without importing Ray.

The operator renders RayServices from this module and its image has no Ray; `app.py` builds the application from
the same names. `args` carry the served versions only (weights canonicalised away) and the live weights travel in
the ingress `user_config`: Serve hashes `args` into the code version, so a weight change then reconfigures the
running ingress instead of rebuilding the application.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from sluice.serving.config import ServingConfig, VariantConfig

IMPORT_PATH = "sluice.serving.ray.app:build_app"
INGRESS_NAME = "SluiceIngress"

# args keys besides `config`, with their defaults.
DEFAULTS: dict[str, Any] = {
    "base_dir": None,  # resolves file:relative URIs (`sluice serve`); absent in a cluster
    "intra_op_threads": 1,
    "model_num_cpus": 0.5,
    "model_replicas": 1,
    "ingress_num_cpus": 0.25,
    "ingress_max_ongoing_requests": 256,
}


def deployment_name(version: str) -> str:
    """Serve deployment name of a model version (one deployment per version, shared by variants naming it).

    Letters, digits, '-' and '_' are kept as they are; a version with any other character gets its other characters
    replaced and a short hash of the original appended, so `v1.0` and `v1-0` never share a deployment.
    """
    safe = _UNSAFE.sub("-", version)
    if safe == version:
        return "model-" + version
    return f"model-{safe}-{hashlib.blake2b(version.encode(), digest_size=4).hexdigest()}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def versions(config: ServingConfig) -> dict[str, VariantConfig]:
    """One variant per distinct version; two variants naming one version must name the same file."""
    by_version: dict[str, VariantConfig] = {}
    for v in config.variants:
        seen = by_version.get(v.version)
        if seen is not None and (seen.uri, seen.sha256) != (v.uri, v.sha256):
            raise ValueError(
                f"variants {seen.name!r} and {v.name!r} share version {v.version!r} but not its uri/sha256"
            )
        by_version.setdefault(v.version, v)
    return by_version


def canonical(config: ServingConfig) -> ServingConfig:
    """The config with live settings (weights, mirror) fixed, so it only changes when the versions change."""
    raw = config.model_dump(mode="json")
    for i, v in enumerate(raw["variants"]):
        v["weight"] = 100 if i == 0 else 0
    raw["mirror"] = None
    return ServingConfig.model_validate(raw)


def serve_application(
    config: ServingConfig, *, name: str | None = None, route_prefix: str = "/", **args: Any
) -> dict[str, Any]:
    """The serveConfigV2 `applications[]` entry for config (live weights in the ingress user_config)."""
    unknown = sorted(set(args) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown Sluice app args {unknown}; allowed: {', '.join(DEFAULTS)}")
    versions(config)  # refuse inconsistent variants here, not later in a cluster
    return {
        "name": name or config.model_name,
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        "args": {"config": canonical(config).model_dump(mode="json"), **args},
        "deployments": [{"name": INGRESS_NAME, "user_config": {"config": config.model_dump(mode="json")}}],
    }
