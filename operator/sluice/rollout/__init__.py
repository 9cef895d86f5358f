"""The progressive delivery engine: a pure decision core, check evaluation and the statistics behind it.

Nothing here does I/O or reads a clock: platforms gather `Observations`, call `step`, and carry out `Action`s.
"""

from sluice.rollout.actions import Action, DeployVersion, EmitEvent, PromoteCanary, ScaleDown, SetTraffic
from sluice.rollout.analysis import AnalysisOutcome, evaluate
from sluice.rollout.core import revision_hash, step
from sluice.rollout.observations import Command, CommandKind, Observations

__all__ = [
    "Action",
    "AnalysisOutcome",
    "Command",
    "CommandKind",
    "DeployVersion",
    "EmitEvent",
    "Observations",
    "PromoteCanary",
    "ScaleDown",
    "SetTraffic",
    "evaluate",
    "revision_hash",
    "step",
]
