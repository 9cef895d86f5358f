"""The platform-neutral engine: one controller loop per kind around its pure core, and the seams platforms fill.

`modeldeployment.RolloutLoop` observes (platform readiness, metric provider, commands), calls the pure
`sluice.rollout.step`, has the platform carry out the actions, and saves the status. The operator
(`sluice.operator`, Kubernetes) and `sluice run` (`sluice.local`, this machine) run the very same loop; they differ
only in the `Platform` they hand it. `routing.serving_config` is the one translation of a spec and its routing
into the data plane's config.
"""

from sluice.engine.modeldeployment import RolloutLoop
from sluice.engine.platform import Platform, Readiness
from sluice.engine.routing import Routing, serving_config

__all__ = ["Platform", "Readiness", "RolloutLoop", "Routing", "serving_config"]
