"""`sluice run -f FILE`: serve a ModelDeployment on this machine and carry out its rollout, no cluster needed.

Each ModelDeployment document (in one file or several `-f`, in order) is one `kubectl apply` of the same resource:
the first becomes stable, each later one is rolled out with the real decision core, the real router and the
built-in metric provider, while optional synthetic traffic (`--load RPS`) flows through the router.

Exit codes: 0 the last revision was promoted (or, for a single document, is serving), 1 it was rolled back,
3 it was aborted, failed or did not finish within --timeout, 2 invalid input.

With an Experiment in the files (and its target ModelDeployment), the experiment runs on the target's local data
plane instead: `--load RPS` sends enrolled requests and `--outcomes control=0.10,treatment=0.12` simulates each
arm's outcome (conversion rate, or MEAN:SD for a mean metric). Exit codes: 0 Concluded (a verdict, with or
without a winner), 1 Stopped (no verdict: maximum duration, guardrails, stopped), 3 Failed or --timeout,
2 invalid input.

With a DriftPolicy in the files (and its target ModelDeployment), the policy runs against the target's local data
plane: `--load RPS` sends synthetic rows, `--shift-after 30s` adds `--shift` to every input from then on, and the
real drift core reports Ok / Warning / Drifted and carries out the action (rollback serves the target's previous
document; retrain runs `--retrain-command`). It ends when the policy is Drifted and has acted, or at --timeout.
Exit codes: 0 no drift, 1 drift, 3 the policy could not evaluate (a condition names the field), 2 invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Literal

from sluice.api.base import get_condition, parse_duration
from sluice.api.drift_policy import DriftPolicy, DriftState
from sluice.api.experiment import Experiment, ExperimentPhase
from sluice.api.loading import load_file
from sluice.api.model_deployment import ModelDeployment
from sluice.api.status import Phase
from sluice.cli.serve import load_deployments
from sluice.engine.routing import Routing, serving_config
from sluice.local.driftpolicy import LocalCapture, drift_config, load_reference, run_drift
from sluice.local.experiment import parse_outcomes, run_experiment
from sluice.local.modeldeployment import run_rollout
from sluice.rollout.core import version_ref
from sluice.serving.config import ServingConfig
from sluice.serving.launch import BACKENDS, LaunchError, PlaneBackend, RunningPlane, start_data_plane

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_INVALID, EXIT_OTHER = 0, 1, 2, 3
_EXIT = {Phase.SUCCEEDED: EXIT_PROMOTED, Phase.STABLE: EXIT_PROMOTED, Phase.ROLLED_BACK: EXIT_ROLLED_BACK}

log = logging.getLogger("sluice.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", action="append", required=True, type=Path, help="ModelDeployment YAML")
    parser.add_argument("--backend", choices=BACKENDS, help="override spec.backend")
    parser.add_argument("--load", type=float, default=0.0, metavar="RPS", help="synthetic requests per second")
    parser.add_argument("--output", choices=["text", "json"], default="text", help="json prints the final status")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds per rollout")
    parser.add_argument("--port", type=int, default=0, help="router port (default: a free one)")
    parser.add_argument(
        "--outcomes",
        default="",
        metavar="ARM=RATE,...",
        help="Experiment: simulated outcome per arm, a conversion rate (control=0.10) or MEAN:SD (control=5:1.5)",
    )
    parser.add_argument(
        "--shift-after", metavar="DURATION", help="DriftPolicy: shift the synthetic inputs after this long (e.g. 30s)"
    )
    parser.add_argument("--shift", type=float, default=1.0, help="DriftPolicy: added to every input (default 1.0)")
    parser.add_argument(
        "--retrain-command", metavar="CMD", help="DriftPolicy: a local command standing in for the retrain Job"
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        objects = _objects(args.filename)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    policies = [o for o in objects if isinstance(o, DriftPolicy)]
    if policies:
        deployments = [o for o in objects if isinstance(o, ModelDeployment)]
        return run_drift_command(args, policies, deployments)
    experiments = [o for o in objects if isinstance(o, Experiment)]
    if experiments:
        deployments = [o for o in objects if isinstance(o, ModelDeployment)]
        return run_experiment_command(args, experiments, deployments)
    try:
        docs = [d for path in args.filename for d in load_deployments(path)]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    names = {d.metadata.name for d in docs}
    if len(names) != 1:
        print(f"error: all documents must be the same ModelDeployment, got {sorted(names)}", file=sys.stderr)
        return EXIT_INVALID
    first = docs[0].spec
    backend: Literal["ray", "triton", "onnx"] = args.backend or first.backend.value
    config = serving_config(first, Routing(stable=version_ref(first.model)))
    plane = start_plane(config, backend, args.filename[0].resolve().parent, args.port, quiet=args.output == "json")
    if plane is None:
        return EXIT_OTHER
    try:
        status = asyncio.run(
            run_rollout(docs, plane, load_rps=args.load, timeout_s=args.timeout, quiet=args.output == "json")
        )
    finally:
        plane.stop()
    if args.output == "json":
        print(json.dumps(status.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        print(f"result: {status.phase.value} — {status.message}")
    return _EXIT.get(status.phase, EXIT_OTHER)


_EXPERIMENT_EXIT = {ExperimentPhase.CONCLUDED: EXIT_PROMOTED, ExperimentPhase.STOPPED: EXIT_ROLLED_BACK}


def start_plane(
    config: ServingConfig, backend: PlaneBackend, base_dir: Path, port: int, *, quiet: bool
) -> RunningPlane | None:
    """Start the local data plane and say where it serves; None (the reason printed) when it cannot start."""
    try:
        plane = start_data_plane(config, backend, base_dir, port=port)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if not quiet:
        print(f"serving {config.model_name} on {plane.url} ({backend}); metrics at {plane.metrics_url}", flush=True)
    return plane


def _objects(paths: list[Path]) -> list[object]:
    """Every API object in the files, in order; ValueError lists each invalid field."""
    problems: list[str] = []
    found: list[object] = []
    for path in paths:
        for doc in load_file(path):
            if doc.error is not None:
                problems += [f"{doc.source}: {e}" for e in doc.error.errors]
            else:
                found.append(doc.obj)
    if problems:
        raise ValueError("invalid YAML:\n  " + "\n  ".join(problems))
    return found


def run_experiment_command(args: argparse.Namespace, experiments: list[Experiment], docs: list[ModelDeployment]) -> int:
    """`sluice run` on files with an Experiment and its target ModelDeployment."""
    if len(experiments) != 1:
        print(f"error: one Experiment per run, got {len(experiments)}", file=sys.stderr)
        return EXIT_INVALID
    experiment = experiments[0]
    try:
        outcomes = parse_outcomes(args.outcomes) if args.outcomes else {}
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    wanted = experiment.spec.target.name
    target = next((d for d in docs if d.metadata.name == wanted), None)
    if target is None:
        print(f"error: spec.target.name: no ModelDeployment {wanted!r} in the files", file=sys.stderr)
        return EXIT_INVALID
    arms = {v.name for v in experiment.spec.variants}
    unknown = sorted(set(outcomes) - arms)
    if unknown:
        print(f"error: --outcomes names {unknown}, not arms of the experiment ({sorted(arms)})", file=sys.stderr)
        return EXIT_INVALID
    backend: Literal["ray", "triton", "onnx"] = args.backend or target.spec.backend.value
    config = serving_config(target.spec, Routing(stable=version_ref(target.spec.model)))
    quiet = args.output == "json"
    plane = start_plane(config, backend, args.filename[0].resolve().parent, args.port, quiet=quiet)
    if plane is None:
        return EXIT_OTHER
    try:
        status, platform, traffic = asyncio.run(
            run_experiment(
                target, experiment, plane, load_rps=args.load, outcomes=outcomes, timeout_s=args.timeout, quiet=quiet
            )
        )
    finally:
        plane.stop()
    if quiet:
        print(json.dumps(status.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        if traffic is not None:
            print(f"traffic: {traffic.tally.summary()}, {traffic.reported} outcomes reported")
        if platform.promoted is not None:
            print(f"promoted {platform.promoted.version}: it now serves {target.spec.model.name} on this plane")
        print(f"result: {status.phase.value} — winner {status.winner or 'none'} — {status.verdict or status.message}")
    return _EXPERIMENT_EXIT.get(status.phase, EXIT_OTHER)


def run_drift_command(args: argparse.Namespace, policies: list[DriftPolicy], docs: list[ModelDeployment]) -> int:
    """`sluice run` on files with a DriftPolicy and its target ModelDeployment."""
    if len(policies) != 1:
        print(f"error: one DriftPolicy per run, got {len(policies)}", file=sys.stderr)
        return EXIT_INVALID
    policy = policies[0]
    wanted = policy.spec.target.name
    revisions = [d for d in docs if d.metadata.name == wanted]
    if not revisions:
        print(f"error: spec.target.name: no ModelDeployment {wanted!r} in the files", file=sys.stderr)
        return EXIT_INVALID
    try:
        shift_after = parse_duration(args.shift_after) if args.shift_after else None
    except ValueError as exc:
        print(f"error: --shift-after: {exc}", file=sys.stderr)
        return EXIT_INVALID
    base_dir = args.filename[0].resolve().parent
    profile, problem = load_reference(policy, base_dir)
    target = revisions[-1]
    capture = LocalCapture(policy, target) if policy.spec.reference.from_stable_version else None
    window = parse_duration(policy.spec.window)
    if capture is not None and shift_after is not None and shift_after < window:
        print(
            f"error: --shift-after: {args.shift_after} is shorter than spec.window ({policy.spec.window}); with "
            "reference.fromStableVersion the first window of unshifted load is the reference, so it must end "
            "before the shift",
            file=sys.stderr,
        )
        return EXIT_INVALID
    backend: Literal["ray", "triton", "onnx"] = args.backend or target.spec.backend.value
    quiet = args.output == "json"
    plane = start_plane(drift_config(target, policy, profile, capture), backend, base_dir, args.port, quiet=quiet)
    if plane is None:
        return EXIT_OTHER
    try:
        status, platform, traffic = asyncio.run(
            run_drift(
                revisions,
                policy,
                profile,
                problem,
                plane,
                load_rps=args.load,
                shift_after_s=shift_after,
                shift=args.shift,
                timeout_s=args.timeout,
                retrain_command=args.retrain_command,
                quiet=quiet,
                capture=capture,
            )
        )
    finally:
        plane.stop()
    if quiet:
        print(json.dumps(status.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        if traffic is not None:
            print(f"traffic: {traffic.tally.summary()}")
        if status.reference is not None:
            ref = status.reference
            print(f"reference: {ref.state.value} from version {ref.version}, {ref.rows} rows")
        for version in platform.rollbacks:
            print(f"rolled back: {wanted} now serves {version}")
        for name, code in platform.jobs:
            print(f"retrain: {name}" + ("" if code is None else f" (local command exited {code})"))
        print(f"result: {status.state.value} — {status.message}")
    evaluated = get_condition(status.conditions, "Evaluated")
    if evaluated is not None and evaluated.status.value == "False":
        return EXIT_OTHER
    return EXIT_ROLLED_BACK if status.state == DriftState.DRIFTED else EXIT_PROMOTED
