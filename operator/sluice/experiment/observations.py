"""What a platform tells the experiment core at each look: the target's state and what each arm measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sluice.experiment.statistics import Sample

NO_OUTCOMES = Sample(0.0, 0.0, 0.0)


class ExperimentCommand(StrEnum):
    STOP = "stop"  # end now with no verdict: Stopped, traffic back to the target's stable version
    # End now as Concluded with the leader of this look as the winner (none before any outcome) and carry out the
    # end policy; the verdict says it was concluded by hand before (or without) a statistical verdict.
    CONCLUDE = "conclude"

    @classmethod
    def parse(cls, text: str) -> ExperimentCommand | None:
        """`stop:NONCE` / `conclude:NONCE` (the annotation kubectl sluice writes); None for anything else."""
        verb = text.strip().partition(":")[0]
        return cls(verb) if verb in {c.value for c in cls} else None


@dataclass(frozen=True)
class ArmObservation:
    """One arm's numbers since the experiment started (cumulative counters, not deltas).

    `outcomes` holds count, sum and sum of squares of the primary metric joined to this arm. The guardrail
    readings are None when there is no data (no data never breaches a guardrail).
    """

    outcomes: Sample = NO_OUTCOMES
    error_rate: float | None = None
    latency_p99: float | None = None
    promql: dict[str, float] = field(default_factory=dict)  # guardrail name -> value, for type promql
    failed: str | None = None  # the arm's model cannot serve: why (shown in a condition naming spec.variants[i])


@dataclass(frozen=True)
class Observations:
    """Everything `step` may look at besides the spec, the status, the time and the seeded generator."""

    uid: str = ""  # metadata.uid: the default assignment salt
    generation: int | None = None
    target_exists: bool = True
    target_rollout: str | None = None  # the target's rollout in progress, in words; None when it is stable
    arms: dict[str, ArmObservation] = field(default_factory=dict)  # by variant name; missing = nothing yet
    command: ExperimentCommand | None = None
    outcomes_problem: str | None = None  # the outcomes could not be read (a query error, a provider refusal)
