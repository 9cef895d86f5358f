"""What a platform tells the decision core at each step: readiness, a finished analysis, a manual command."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.rollout.analysis import AnalysisOutcome


class CommandKind(StrEnum):
    PROMOTE = "promote"  # pass the current manual gate; elsewhere in a rollout: skip the remaining steps
    ABORT = "abort"  # stop the rollout, all traffic to stable (phase Aborted)
    RETRY = "retry"  # from RolledBack/Aborted/Failed: roll the spec's version out again
    UNDO = "undo"  # roll back to the previous promoted revision in status.history, as a new rollout


@dataclass(frozen=True)
class Command:
    """A manual command with a nonce; `value` is stored in status.lastCommand so it is carried out once."""

    kind: CommandKind
    nonce: str = ""

    @property
    def value(self) -> str:
        return f"{self.kind.value}:{self.nonce}" if self.nonce else self.kind.value

    @classmethod
    def parse(cls, text: str) -> Command:
        """Parse an annotation value such as `promote:1700000000`; raises ValueError naming the bad part."""
        kind, _, nonce = text.strip().partition(":")
        try:
            return cls(CommandKind(kind), nonce)
        except ValueError:
            allowed = ", ".join(k.value for k in CommandKind)
            raise ValueError(f"unknown command {kind!r} in {text!r}: expected one of {allowed}") from None


@dataclass(frozen=True)
class Observations:
    """Everything `step` may look at besides the spec, the status and the time."""

    revision: str  # revision_hash(spec) of the spec being observed
    generation: int | None = None  # metadata.generation of that spec
    stable_ready: bool = False
    canary_ready: bool = False
    analysis: AnalysisOutcome | None = None  # an analysis that just completed, else None
    command: Command | None = None  # the pending manual command, if any
