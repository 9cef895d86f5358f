"""The local platform behind `sluice run`: the engine's loops drive a data plane on this machine, no cluster.

One module per kind: `modeldeployment.LocalPlatform` carries rollout actions out on a local data plane handle.
"""

from sluice.local.modeldeployment import LocalPlatform

__all__ = ["LocalPlatform"]
