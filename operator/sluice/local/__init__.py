"""`sluice run`: the rollout carried out on this machine against a local data plane, no cluster."""

from sluice.local.loop import RolloutLoop
from sluice.local.platform import Platform, Readiness

__all__ = ["Platform", "Readiness", "RolloutLoop"]
