"""Invariants of the experiment core over random sequences of looks (hypothesis).

Weights always sum to 100; a stopped arm never gets traffic again; a terminal phase never changes; a restart that
reloads the status from its JSON (as stored in the resource) continues exactly as the uninterrupted run.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from tests.experiment.helpers import T0, make_spec

from sluice.api.experiment import ExperimentPhase, ExperimentStatus
from sluice.experiment.actions import SetWeights
from sluice.experiment.core import TERMINAL, step
from sluice.experiment.observations import ArmObservation, ExperimentCommand, Observations
from sluice.experiment.statistics import Sample

ARM_NAMES = ["control", "treatment", "third"]

arm_look = hs.tuples(
    hs.integers(0, 400),  # new trials this look
    hs.floats(0.0, 1.0),  # conversion rate this look
    hs.one_of(hs.none(), hs.floats(0.0, 0.05)),  # error rate
    hs.booleans(),  # load failure
)
looks = hs.lists(
    hs.tuples(hs.lists(arm_look, min_size=3, max_size=3), hs.sampled_from([None, None, None, None, "stop"])),
    min_size=1,
    max_size=25,
)
specs = hs.fixed_dictionaries(
    {
        "arms": hs.integers(2, 3),
        "method": hs.sampled_from(["sequential", "frequentist", "bayesian"]),
        "allocation": hs.sampled_from(["fixed", "thompson"]),
        "endPolicy": hs.sampled_from(["promoteWinner", "keepControl", "manual"]),
        "maximumDuration": hs.sampled_from(["10m", "1h"]),
        "minimumSamples": hs.sampled_from([10, 200]),
        "minimumDetectableEffect": hs.sampled_from([0.1, 0.5]),
    }
)


def _run(spec_args: dict[str, object], sequence: list, seed: int) -> None:
    arms = int(spec_args.pop("arms"))  # type: ignore[call-overload]
    spec = make_spec(arms=arms, guardrails=[{"name": "errors", "type": "error-rate", "max": 0.03}], **spec_args)
    names = ARM_NAMES[:arms]
    status = ExperimentStatus()
    totals = {n: [0.0, 0.0] for n in names}
    stopped: set[str] = set()
    terminal: ExperimentStatus | None = None
    for i, (per_arm, command) in enumerate(sequence):
        for name, (trials, rate, _, _) in zip(names, per_arm, strict=False):
            totals[name][0] += trials
            totals[name][1] += round(trials * rate)
        obs = Observations(
            uid="u",
            arms={
                name: ArmObservation(
                    Sample(totals[name][0], totals[name][1], totals[name][1]),
                    error_rate=err,
                    failed="cannot load" if fail and name != "control" and i % 7 == 3 else None,
                )
                for name, (_, _, err, fail) in zip(names, per_arm, strict=False)
            },
            command=ExperimentCommand(command) if command else None,
        )
        now = T0 + timedelta(minutes=2 * i)
        reloaded = ExperimentStatus.model_validate_json(status.model_dump_json(by_alias=True))
        before = status.model_dump()
        new, actions = step(spec, status, obs, now, np.random.default_rng([seed, i]))
        assert status.model_dump() == before, "step modified its input status"
        again, again_actions = step(spec, reloaded, obs, now, np.random.default_rng([seed, i]))
        assert again.model_dump() == new.model_dump(), "a restart from the stored status diverged"
        assert again_actions == actions
        if terminal is not None:
            assert new.model_dump() == terminal.model_dump(), "a terminal phase changed"
            assert actions == []
        status = new
        if status.variants:
            assert sum(v.weight for v in status.variants) == 100
        for v in status.variants:
            if v.stopped:
                stopped.add(v.name)
        for name in stopped:
            assert next(v for v in status.variants if v.name == name).weight == 0
            for a in actions:
                if isinstance(a, SetWeights):
                    assert dict(a.weights)[name] == 0
        if status.phase in TERMINAL and terminal is None:
            terminal = status
    assert status.phase is not ExperimentPhase.PENDING


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_args=specs, sequence=looks, seed=hs.integers(0, 2**16))
def test_invariants_hold_over_random_looks(spec_args: dict[str, object], sequence: list, seed: int) -> None:
    _run(dict(spec_args), sequence, seed)
