"""Observed state of a ModelDeployment. All rollout state lives here, so an operator restart loses nothing."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from sluice.api.base import ApiModel, Condition


class Phase(StrEnum):
    """Where a ModelDeployment is in its life.

    Terminal phases hold until the spec changes or a manual `retry`/`undo` starts a new rollout.
    """

    PENDING = "Pending"  # accepted; nothing deployed yet
    INITIALIZING = "Initializing"  # first version starting; gets all traffic once ready, no analysis
    STABLE = "Stable"  # one version serves all traffic; no rollout in progress
    PROGRESSING = "Progressing"  # new version deployed and analysed; traffic shifting, timed pauses, no-data holds
    PAUSED = "Paused"  # waiting for a human (manual gate, blue-green without autoPromote); analysis keeps running
    PROMOTING = "Promoting"  # analysis passed: all traffic moved to the new version, old one being retired
    SUCCEEDED = "Succeeded"  # terminal: the new version is stable
    ROLLED_BACK = "RolledBack"  # terminal: analysis failed or deadline passed; stable serves everything
    ABORTED = "Aborted"  # terminal: a human aborted; stable serves everything
    FAILED = "Failed"  # terminal: the spec cannot be carried out (see conditions); stable keeps serving


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED})


class Verdict(StrEnum):
    """Outcome of one check at one analysis."""

    PASS = "Pass"
    FAIL = "Fail"
    NO_DATA = "NoData"  # too little traffic to decide: holds progress, never passes or fails
    ERROR = "Error"  # the metric could not be read: counted on its own


class VersionRef(ApiModel):
    """A model version as it was deployed."""

    version: str = Field(description="Version label.")
    uri: str = Field(description="Model URI.")
    sha256: str | None = Field(default=None, description="SHA-256 of the model file, when given.")


class CheckResult(ApiModel):
    """One check's outcome at one analysis."""

    name: str = Field(description="Check name.")
    verdict: Verdict = Field(description="Pass, Fail, NoData or Error.")
    value: float | None = Field(default=None, description="Measured value (absent for NoData/Error).")
    threshold: str = Field(default="", description="The bound it was held to, e.g. '<= 0.01'.")
    message: str = Field(default="", description="Why, in words (sample sizes, test statistic, error).")


class AnalysisRun(ApiModel):
    """The checks of one analysis interval."""

    time: datetime = Field(description="When the analysis ran.")
    step_index: int = Field(default=0, ge=0, description="Canary step during the analysis.")
    canary_weight: int = Field(default=0, ge=0, le=100, description="Canary weight during the analysis.")
    results: list[CheckResult] = Field(default_factory=list, description="One result per check.")


class CheckState(ApiModel):
    """Evidence a sequential check carries from one analysis to the next within one rollout."""

    name: str = Field(description="Check name.")
    log_likelihood_ratio: float = Field(
        default=0.0, description="Cumulative log likelihood ratio of 'canary worse' against 'canary as good'."
    )
    analyses: int = Field(default=0, ge=0, description="Analyses that added evidence.")


class RevisionOutcome(StrEnum):
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    SUPERSEDED = "Superseded"  # the spec changed mid-rollout


class Revision(ApiModel):
    """A past rollout, newest first in status.history; `undo` returns to the previous promoted one."""

    revision: str = Field(description="Hash of the model and rollout spec this rollout carried out.")
    model: VersionRef = Field(description="The version rolled out.")
    outcome: RevisionOutcome = Field(description="How it ended.")
    reason: str = Field(default="", description="Why it ended so: the failing check, value and threshold.")
    finished_at: datetime | None = Field(default=None, description="When it ended.")


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment, written by Sluice only."""

    observed_generation: int | None = Field(default=None, description="Last metadata.generation acted on.")
    phase: Phase = Field(default=Phase.PENDING, description="Lifecycle phase (see the Phase enum).")
    message: str = Field(default="", description="What is happening now, in one sentence.")
    revision: str | None = Field(default=None, description="Hash of the model and rollout spec now being acted on.")
    stable: VersionRef | None = Field(default=None, description="The version serving production traffic.")
    canary: VersionRef | None = Field(default=None, description="The version being rolled out, if any.")
    canary_weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic on the new version.")
    mirror_percent: int = Field(default=0, ge=0, le=100, description="Percent of traffic mirrored to it.")
    step_index: int = Field(default=0, ge=0, description="Current canary step (0-based).")
    step_started_at: datetime | None = Field(default=None, description="When the current step began.")
    rollout_started_at: datetime | None = Field(default=None, description="When the current rollout began.")
    last_progress_at: datetime | None = Field(
        default=None, description="Last time the rollout advanced; the progress deadline counts from here."
    )
    passing_analyses: int = Field(default=0, ge=0, description="Passing analyses in a row at this step.")
    failed_analyses: int = Field(default=0, ge=0, description="Failed analyses during this rollout.")
    errored_analyses: int = Field(default=0, ge=0, description="Analyses whose metrics could not be read.")
    failed_checks: list[CheckResult] = Field(
        default_factory=list, description="Checks that failed in this rollout, latest per check."
    )
    last_analysis: AnalysisRun | None = Field(default=None, description="The most recent analysis.")
    last_command: str | None = Field(
        default=None,
        description="The last manual command carried out (value of the sluice.dev/command annotation), so that "
        "each is carried out once.",
    )
    observed_revision: str | None = Field(
        default=None,
        description="Hash of the spec's model and rollout settings last seen; a different one means the spec changed.",
    )
    canary_ready_at: datetime | None = Field(
        default=None, description="When the new version became ready and got its share; empty while it starts."
    )
    consecutive_errored_analyses: int = Field(
        default=0, ge=0, description="Errored analyses in a row; enough of them count as one failed analysis."
    )
    check_states: list[CheckState] = Field(
        default_factory=list, description="Sequential-test evidence per check for the current rollout."
    )
    scale_down_version: VersionRef | None = Field(
        default=None, description="The replaced version kept running after a blue-green switch, for a fast undo."
    )
    scale_down_at: datetime | None = Field(default=None, description="When scaleDownVersion is scaled down.")
    ready: str = Field(default="0/0", description="Ready replicas / desired replicas, all versions.")
    history: list[Revision] = Field(default_factory=list, description="Past rollouts, newest first.")
    conditions: list[Condition] = Field(default_factory=list, description="Kubernetes-convention conditions.")
