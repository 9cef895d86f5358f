"""DriftPolicy's pure core: reference profiles, drift statistics, and `step` from window counts to actions.

Nothing here talks to a network or reads a clock: platforms load the profile, read the router's counters into
`Observations`, call `step`, and carry out the `Action`s.
"""

from sluice.drift.actions import Action, CreateRetrainJob, EmitEvent, RollbackTarget
from sluice.drift.core import Evaluation, FeatureResult, evaluate, step
from sluice.drift.observations import Observations, Problem, Reading, baseline, window_counts
from sluice.drift.profile import Profile, ProfileError, load_profile, parse_profile

__all__ = [
    "Action",
    "CreateRetrainJob",
    "EmitEvent",
    "Evaluation",
    "FeatureResult",
    "Observations",
    "Problem",
    "Profile",
    "ProfileError",
    "Reading",
    "RollbackTarget",
    "baseline",
    "evaluate",
    "load_profile",
    "parse_profile",
    "step",
    "window_counts",
]
