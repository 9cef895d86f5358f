"""`kubectl-sluice`: the kubectl plugin (`kubectl sluice status|promote|abort|retry|undo NAME`, and
`kubectl sluice experiment status|conclude|stop NAME`, `kubectl sluice drift status NAME`).

`status` renders a ModelDeployment's status (operator/sluice/api/status.py) as compact tables. The verbs only set
the annotation `sluice.dev/command: "<verb>:<nonce>"` with a merge patch: the operator compares it with
`status.lastCommand`, so each request is carried out once, even when the operator restarts in between.
"""

from __future__ import annotations

import argparse
import datetime
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from sluice.api.base import COMMAND_ANNOTATION, GROUP, VERSION

PLURAL = "modeldeployments"
VERBS: dict[str, str] = {
    "promote": "skip the remaining steps and analysis: move all traffic to the new version now",
    "abort": "stop the rollout: all traffic back to the stable version (phase Aborted)",
    "retry": "start the last aborted or rolled-back rollout again",
    "undo": "roll back to the previously promoted version",
}
EXPERIMENT_PLURAL = "experiments"
EXPERIMENT_ACTIONS: dict[str, str] = {
    "status": "show phase, verdict, the per-arm table (weight, samples, value, lift with interval, p, P(best))",
    "stop": "end the experiment now with no verdict: Stopped, traffic back to the target's stable version",
    "conclude": "end the experiment now with the current leader as the winner (Concluded, marked as concluded by "
    "hand) and carry out its endPolicy; with no outcomes yet there is no leader and control keeps the traffic",
}
DRIFT_PLURAL = "driftpolicies"
# Phases in which promote/abort have nothing to act on (the operator ignores the command then).
_IDLE_PHASES = {"Stable", "Succeeded", "RolledBack", "Aborted", "Failed"}

Obj = dict[str, Any]


class PluginError(Exception):
    """A failure explained in one line for the user; exit status 1."""


def _connection_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the options may come before or after the subcommand (kubectl passes them through as given).
    parser.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG)")
    parser.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    parser.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl sluice", description="Inspect and steer Sluice ModelDeployment rollouts."
    )
    _connection_options(parser)
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    status = sub.add_parser("status", help="show phase, versions, weights, checks, history and conditions")
    status.add_argument("name", help="ModelDeployment name")
    status.add_argument("-w", "--watch", action="store_true", help="print again whenever the status changes")
    status.add_argument(
        "--timeout", type=float, default=None, help="with --watch: stop after this many seconds (default: never)"
    )
    _connection_options(status)
    for verb, help_text in VERBS.items():
        command = sub.add_parser(verb, help=help_text, description=help_text)
        command.add_argument("name", help="ModelDeployment name")
        _connection_options(command)
    experiment = sub.add_parser("experiment", help="show, conclude or stop an Experiment")
    _connection_options(experiment)
    actions = experiment.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in EXPERIMENT_ACTIONS.items():
        command = actions.add_parser(action, help=help_text, description=help_text)
        command.add_argument("name", help="Experiment name")
        _connection_options(command)
    drift = sub.add_parser("drift", help="show a DriftPolicy")
    _connection_options(drift)
    drift_actions = drift.add_subparsers(dest="action", metavar="ACTION", required=True)
    help_text = "show state, score, the per-feature table (method, score, p-values, samples, state), last action"
    command = drift_actions.add_parser("status", help=help_text, description=help_text)
    command.add_argument("name", help="DriftPolicy name")
    _connection_options(command)
    return parser


# -- connection ----------------------------------------------------------------------------------------------


class Cluster:
    """The ModelDeployment calls the plugin makes, over the official client."""

    def __init__(
        self, kubeconfig: str | None, context: str | None, namespace: str | None, plural: str = PLURAL
    ) -> None:
        from kubernetes import client
        from kubernetes import config as _config
        from kubernetes.config.config_exception import ConfigException

        config: Any = _config  # the client is untyped

        try:
            api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
            if namespace is None:
                _, active = config.list_kube_config_contexts(config_file=kubeconfig)
                if context is not None:
                    contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
                    active = next((c for c in contexts if c["name"] == context), active)
                namespace = (active or {}).get("context", {}).get("namespace")
        except (ConfigException, OSError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}") from exc
        self.namespace: str = namespace or "default"
        self.plural = plural
        self.api = client.CustomObjectsApi(api_client)
        self._client = api_client

    def close(self) -> None:
        self._client.close()

    def _call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(GROUP, VERSION, self.namespace, self.plural, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                kind = "driftpolicy" if self.plural == DRIFT_PLURAL else self.plural[:-1]
                raise PluginError(
                    f'{kind} "{name}" not found in namespace "{self.namespace}"'
                    + ("" if self.plural in str(exc.body) else " (are the Sluice CRDs installed?)")
                ) from exc
            raise PluginError(f"the API server refused the request ({exc.status} {exc.reason}): {exc.body}") from exc
        except HTTPError as exc:
            raise PluginError(f"cannot reach the API server: {exc}") from exc

    def get(self, name: str) -> Obj:
        result: Obj = self._call(name, self.api.get_namespaced_custom_object, name)
        return result

    def annotate(self, name: str, key: str, value: str) -> Obj:
        patch = {"metadata": {"annotations": {key: value}}}
        result: Obj = self._call(name, self.api.patch_namespaced_custom_object, name, patch)
        return result

    def watch(self, name: str, timeout: float | None) -> Iterable[Obj]:
        """The object now, then each new state of it until `timeout` (server-side watch, resumed on expiry)."""
        from kubernetes import watch as _watch

        watch: Any = _watch  # the client is untyped
        obj = self.get(name)
        yield obj
        version = obj["metadata"].get("resourceVersion", "")
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            left = 300 if deadline is None else max(1, int(deadline - time.monotonic() + 0.999))
            stream = watch.Watch().stream(
                self.api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                self.plural,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=left,
            )
            for event in stream:
                current: Obj = event["object"]
                version = current.get("metadata", {}).get("resourceVersion", version)
                if event["type"] == "DELETED":
                    raise PluginError(f'{self.plural[:-1]} "{name}" was deleted')
                yield current


# -- status rendering ----------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Left-aligned columns, kubectl style; the last column is not padded."""
    cells = [list(headers)] + [[_text(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]


def _version(ref: Obj | None) -> str:
    if not ref:
        return "-"
    return f"{ref.get('version', '?')} ({ref.get('uri', '?')})"


def render_status(obj: Obj) -> str:
    """A compact, readable picture of one ModelDeployment (spec only where status has nothing yet)."""
    meta = obj.get("metadata", {})
    status: Obj = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    lines = [
        f"Name:        {meta.get('name')}    Namespace: {meta.get('namespace')}",
        f"Phase:       {phase}" + (f" - {status['message']}" if status.get("message") else ""),
        f"Generation:  {meta.get('generation', '-')} (observed {_text(status.get('observedGeneration'))})",
        f"Stable:      {_version(status.get('stable'))}",
    ]
    if status.get("canary"):
        lines.append(
            f"Canary:      {_version(status.get('canary'))}   weight {status.get('canaryWeight', 0)}%"
            f"   step {status.get('stepIndex', 0)}   mirror {status.get('mirrorPercent', 0)}%"
        )
    lines.append(
        f"Traffic:     stable {100 - int(status.get('canaryWeight', 0))}%   canary {status.get('canaryWeight', 0)}%"
    )
    lines.append(f"Ready:       {status.get('ready', '0/0')}")
    lines.append(
        f"Analyses:    passing in a row {status.get('passingAnalyses', 0)}   failed {status.get('failedAnalyses', 0)}"
        f"   errored {status.get('erroredAnalyses', 0)}"
    )
    requested = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
    if status.get("lastCommand") or requested:
        pending = requested and requested != status.get("lastCommand")
        lines.append(
            f"Command:     last carried out {_text(status.get('lastCommand'))}"
            + (f"   pending {requested}" if pending else "")
        )
    analysis: Obj | None = status.get("lastAnalysis")
    if analysis:
        lines += [
            "",
            f"Checks (last analysis {analysis.get('time', '?')}, step {analysis.get('stepIndex', 0)},"
            f" canary {analysis.get('canaryWeight', 0)}%):",
        ]
        results = analysis.get("results", [])
        rows = [
            (r.get("name"), r.get("verdict"), r.get("value"), r.get("threshold"), r.get("message")) for r in results
        ]
        lines += ["  " + line for line in table(["CHECK", "VERDICT", "VALUE", "THRESHOLD", "MESSAGE"], rows)]
    failed = status.get("failedChecks") or []
    if failed:
        lines += ["", "Failed checks (this rollout):"]
        rows = [(r.get("name"), r.get("verdict"), r.get("value"), r.get("threshold"), r.get("message")) for r in failed]
        lines += ["  " + line for line in table(["CHECK", "VERDICT", "VALUE", "THRESHOLD", "MESSAGE"], rows)]
    history = status.get("history") or []
    if history:
        lines += ["", "History (newest first):"]
        rows = [
            (
                h.get("revision"),
                (h.get("model") or {}).get("version"),
                h.get("outcome"),
                h.get("finishedAt"),
                h.get("reason"),
            )
            for h in history
        ]
        lines += ["  " + line for line in table(["REVISION", "VERSION", "OUTCOME", "FINISHED", "REASON"], rows)]
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["", "Conditions:"]
        rows = [
            (c.get("type"), c.get("status"), c.get("reason"), c.get("lastTransitionTime"), c.get("message"))
            for c in conditions
        ]
        lines += ["  " + line for line in table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], rows)]
    return "\n".join(lines)


# -- commands ------------------------------------------------------------------------------------------------


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value:+.1%}"


def render_experiment(obj: Obj) -> str:
    """One Experiment: phase, leader and verdict, then a row per arm and the conditions."""
    meta, spec, st = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    lines = [
        f"Experiment:  {meta.get('name', '?')}  (namespace {meta.get('namespace', '?')})",
        f"Target:      {(spec.get('target') or {}).get('name', '?')}   method {spec.get('method', 'sequential')}, "
        f"alpha {spec.get('alpha', 0.05)}, allocation {spec.get('allocation', 'fixed')}",
        f"Phase:       {st.get('phase', 'Pending')}"
        + (
            f"   leader {st['leader']} {st.get('lift') or ''} ({st.get('confidence') or '-'})"
            if st.get("leader")
            else ""
        ),
    ]
    if st.get("requiredSamples"):
        lines.append(f"Horizon:     {st['requiredSamples']} outcomes per arm")
    if st.get("verdict"):
        lines.append(f"Verdict:     {st['verdict']}")
    if st.get("message"):
        lines.append(f"Message:     {st['message']}")
    rows = []
    for v in st.get("variants") or []:
        interval = "-"
        if v.get("liftLow") is not None and v.get("liftHigh") is not None:
            interval = f"[{_percent(v['liftLow'])}, {_percent(v['liftHigh'])}]"
        rows.append(
            [
                v.get("name"),
                f"{v.get('weight', 0)}%",
                v.get("samples", 0),
                v.get("value"),
                _percent(v.get("lift")),
                interval,
                v.get("pValue"),
                v.get("probabilityBest"),
                f"stopped: {v.get('stoppedReason')}" if v.get("stopped") else "running",
            ]
        )
    if rows:
        lines += ["", *table(["ARM", "WEIGHT", "SAMPLES", "VALUE", "LIFT", "INTERVAL", "P", "P(BEST)", "STATE"], rows)]
    conditions = st.get("conditions") or []
    if conditions:
        lines += ["", *table(["CONDITION", "STATUS", "REASON", "MESSAGE"], [
            [c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in conditions
        ])]  # fmt: skip
    return "\n".join(lines)


def _captured(ref: Obj) -> str:
    """A fromStableVersion reference in one line: capturing (rows so far, since) or captured (rows, when, where)."""
    if not ref:
        return "from the stable version (not started)"
    version = ref.get("version") or "?"
    if ref.get("state") == "Captured":
        return (
            f"captured from stable version {version}: {ref.get('rows', 0)} rows at {ref.get('capturedAt') or '-'}, "
            f"ConfigMap {ref.get('configMap') or '-'}"
        )
    return f"capturing stable version {version}: {ref.get('rows', 0)} rows since {ref.get('captureStartedAt') or '-'}"


def render_drift(obj: Obj) -> str:
    """One DriftPolicy: state and score, the last action, then a row per feature and the conditions."""
    meta, spec, st = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    thresholds, action = spec.get("thresholds") or {}, spec.get("action") or {}
    lines = [
        f"DriftPolicy: {meta.get('name', '?')}  (namespace {meta.get('namespace', '?')})",
        f"Target:      {(spec.get('target') or {}).get('name', '?')}   method {spec.get('method', 'psi')}, "
        f"warning {thresholds.get('warning', 0.1)}, critical {thresholds.get('critical', 0.25)}, "
        f"window {spec.get('window', '1h')} every {spec.get('interval', '5m')}",
        f"State:       {st.get('state', 'NoData')}   score {_text(st.get('score'))}, "
        f"{st.get('driftedFeatures', 0)} drifted, {st.get('samples', 0)} rows in the window",
        f"Evaluated:   {st.get('lastEvaluated') or '-'}",
        f"Action:      {action.get('type', 'alert')} (cooldown {action.get('cooldown', '1h')}); last: "
        + (f"{st.get('lastActionType')} at {st.get('lastAction')}" if st.get("lastAction") else "none")
        + (f", Job {st['lastJob']}" if st.get("lastJob") else ""),
    ]
    reference = spec.get("reference") or {}
    if reference.get("fromStableVersion"):
        lines.append(f"Reference:   {_captured(st.get('reference') or {})}")
    elif reference.get("uri"):
        lines.append(f"Reference:   {reference['uri']}")
    if st.get("message"):
        lines.append(f"Message:     {st['message']}")
    rows = [
        [f.get("name"), f.get("method"), f.get("score"), f.get("pValue"), f.get("adjustedPValue"),
         f.get("samples", 0), f.get("state")]
        for f in st.get("features") or []
    ]  # fmt: skip
    if rows:
        lines += ["", *table(["FEATURE", "METHOD", "SCORE", "P", "ADJ. P", "SAMPLES", "STATE"], rows)]
    conditions = st.get("conditions") or []
    if conditions:
        lines += ["", *table(["CONDITION", "STATUS", "REASON", "MESSAGE"], [
            [c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in conditions
        ])]  # fmt: skip
    return "\n".join(lines)


def _drift(args: argparse.Namespace, out: TextIO) -> int:
    kubeconfig, context = getattr(args, "kubeconfig", None), getattr(args, "context", None)
    cluster = Cluster(kubeconfig, context, getattr(args, "namespace", None), plural=DRIFT_PLURAL)
    try:
        print(render_drift(cluster.get(args.name)), file=out)
        return 0
    finally:
        cluster.close()


def _experiment(args: argparse.Namespace, out: TextIO) -> int:
    cluster = Cluster(
        getattr(args, "kubeconfig", None),
        getattr(args, "context", None),
        getattr(args, "namespace", None),
        plural=EXPERIMENT_PLURAL,
    )
    try:
        if args.action == "status":
            print(render_experiment(cluster.get(args.name)), file=out)
            return 0
        value = command_value(args.action)
        cluster.annotate(args.name, COMMAND_ANNOTATION, value)
        print(f"experiment.{GROUP}/{args.name} {args.action} requested ({COMMAND_ANNOTATION}={value})", file=out)
        return 0
    finally:
        cluster.close()


def command_value(verb: str, now: datetime.datetime | None = None) -> str:
    """`<verb>:<RFC 3339 UTC time>-<random>`: unique per request, readable, ordered by time."""
    when = (now or datetime.datetime.now(tz=datetime.UTC)).astimezone(datetime.UTC)
    return f"{verb}:{when.strftime('%Y-%m-%dT%H:%M:%SZ')}-{secrets.token_hex(3)}"


def _status(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    if not args.watch:
        print(render_status(cluster.get(args.name)), file=out)
        return 0
    last_version = None
    try:
        for obj in cluster.watch(args.name, args.timeout):
            version = obj.get("metadata", {}).get("resourceVersion")
            if version == last_version:
                continue
            last_version = version
            stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%H:%M:%S")
            print(f"--- {stamp} (resourceVersion {version})", file=out)
            print(render_status(obj), file=out, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _request(cluster: Cluster, verb: str, name: str, out: TextIO) -> int:
    current = cluster.get(name)
    phase = (current.get("status") or {}).get("phase", "Pending")
    value = command_value(verb)
    cluster.annotate(name, COMMAND_ANNOTATION, value)
    print(f"modeldeployment.{GROUP}/{name} {verb} requested ({COMMAND_ANNOTATION}={value})", file=out)
    if verb in ("promote", "abort") and phase in _IDLE_PHASES:
        print(f"note: no rollout is in progress (phase {phase}); the operator will not act on {verb}", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(out)
        return 2
    if args.verb in ("experiment", "drift"):
        try:
            return _experiment(args, out) if args.verb == "experiment" else _drift(args, out)
        except PluginError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        cluster = Cluster(
            getattr(args, "kubeconfig", None), getattr(args, "context", None), getattr(args, "namespace", None)
        )
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if args.verb == "status":
            return _status(cluster, args, out)
        return _request(cluster, args.verb, args.name, out)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
