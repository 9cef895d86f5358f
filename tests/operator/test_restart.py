"""Restart safety: SIGKILL the operator right after its N-th write, start it again, and the rollout still ends as an
uninterrupted one does — one child, no duplicate history, weights only through the configured steps.

The kill is deterministic: the API emulator runs the kill in its own loop after applying the N-th write by the
operator (its own client or Kopf's) and before answering it, so the dead process never learns that write landed —
the worst moment for an operator that keeps state in memory. N sweeps the whole run: the first child create, the
first status writes, canary weight patches, promotion and its status write (the baseline run prints which write is
which). A fast subset runs by default; the full sweep is marked slow.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support import wait_for
from tests.support.emulator import AuditEntry, EmulatorThread
from tests.support.kube import start_emulator
from tests.support.operator_process import (
    GROUP_VERSION,
    OPERATOR_AGENTS,
    TEST_AGENT,
    OperatorProcess,
    iter_statuses,
    model_deployment,
)
from tests.support.router_metrics import SyntheticRouterMetrics
from tests.support.simulator import ClusterSimulator

STEPS = [20, 50]
ALLOWED_WEIGHTS = {0, *STEPS, 100}
TERMINAL = {"Succeeded", "RolledBack", "Aborted", "Failed"}
WRITES = {"create", "update", "patch", "delete"}
# In the reference run (printed by the baseline fixture with -s): 1 Kopf's finalizer patch, 2 the router's admin
# Secret create, 3 the RayService create, 5 the first status write, 8 v2 added to the RayService, 13 a status write
# mid-canary, 14 a weight patch, 17 the promotion's weight patch, 23 the final status write (Succeeded).
FAST_KILL_POINTS = [2, 3, 13]
SLOW_KILL_POINTS = [1, 5, 8, 14, 17, 23]


@dataclass
class Outcome:
    phase: str
    history: list[dict[str, Any]]
    weights: list[int]
    operator_writes: list[AuditEntry]
    starts: int


@dataclass
class World:
    emulator: EmulatorThread
    kubeconfig: Path
    metrics: SyntheticRouterMetrics
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A private emulator (the write counts must see this module's operators only) with KubeRay and metrics."""
    emulator = start_emulator()
    try:
        tmp = tmp_path_factory.mktemp("restart")
        kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig")
        with SyntheticRouterMetrics() as metrics, ClusterSimulator(emulator.url):
            yield World(emulator, kubeconfig, metrics, tmp)
    finally:
        emulator.stop()


def _md_path(ns: str, name: str = "") -> str:
    return f"/apis/{GROUP_VERSION}/namespaces/{ns}/modeldeployments" + (f"/{name}" if name else "")


def run_rollout(world: World, ns: str, kill_after: int | None) -> Outcome:
    """v1 → Stable → v2 canary through STEPS → terminal, with the operator SIGKILLed after its `kill_after`-th write."""
    emulator = world.emulator
    logs = world.tmp / ns
    logs.mkdir()
    operator = OperatorProcess(
        world.kubeconfig, logs, {"SLUICE_ROUTER_METRICS_URL": world.metrics.url_format, "SLUICE_WATCH_NAMESPACES": ns}
    )
    killed = threading.Event()

    def kill(_: AuditEntry) -> None:
        operator.kill()  # in the emulator's loop: the write is stored, its answer not yet sent
        killed.set()

    if kill_after is not None:
        emulator.call(lambda: emulator.emulator.on_write(OPERATOR_AGENTS, kill_after, kill))
    before = len(emulator.call(lambda: emulator.emulator.audit))
    http = httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=30)

    def restart() -> None:
        if killed.wait(120):
            operator.start()

    restarter = threading.Thread(target=restart, daemon=True)
    try:
        assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        operator.start()
        restarter.start()
        assert http.post(_md_path(ns), json=model_deployment("m", "v1", STEPS)).status_code == 201

        def status() -> dict[str, Any]:
            return http.get(_md_path(ns, "m")).json().get("status") or {}

        wait_for("v1 Stable", lambda: status().get("phase") == "Stable", 60)
        change = {"spec": {"model": {"version": "v2", "uri": "s3://models/m/v2.onnx"}}}
        headers = {"Content-Type": "application/merge-patch+json"}
        assert http.patch(_md_path(ns, "m"), content=json.dumps(change), headers=headers).status_code == 200
        final = wait_for("a terminal phase", lambda: (s := status()).get("phase") in TERMINAL and s, 90)
        if kill_after is not None:
            assert killed.is_set(), f"the run ended before the operator's write {kill_after}: kill point unused"
            restarter.join(timeout=30)
        wait_for("the operator to settle (answering /healthz)", operator.healthy, 30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{operator.logs()[-6000:]}") from None
    finally:
        exit_code = operator.stop()
        http.close()
        emulator.call(emulator.emulator.clear_write_hooks)
    assert exit_code == 0, operator.logs()[-4000:]
    assert "Traceback" not in operator.logs(), operator.logs()[-6000:]
    audit = emulator.call(lambda: emulator.emulator.audit[before:])
    writes = [e for e in audit if e.user_agent.startswith(OPERATOR_AGENTS) and e.verb in WRITES and e.code < 300]
    history = emulator.call(lambda: emulator.emulator.history("modeldeployments", "sluice.dev", ns))
    weights = [s.get("canaryWeight", 0) for s in iter_statuses(history, ns, "m")]
    return Outcome(final["phase"], final.get("history", []), weights, writes, operator.starts)


def check_children(world: World, ns: str) -> None:
    """Exactly one RayService and one admin Secret, named after the MD and owned by it (controller), nothing else."""
    emulator = world.emulator

    def stored(plural: str, group: str) -> list[dict[str, Any]]:
        return list(emulator.call(lambda: emulator.emulator.stored(plural, group, ns)))

    (md,) = stored("modeldeployments", "sluice.dev")
    rayservices = stored("rayservices", "ray.io")
    assert [r["metadata"]["name"] for r in rayservices] == ["m"]
    (owner,) = rayservices[0]["metadata"]["ownerReferences"]
    assert owner["uid"] == md["metadata"]["uid"]
    assert owner["controller"] is True
    (secret,) = stored("secrets", "")  # created once: a restart after its create meets 409 and keeps it
    assert secret["metadata"]["name"] == "m-router-admin"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    for plural, group in (("deployments", "apps"), ("services", ""), ("configmaps", "")):
        assert not stored(plural, group), f"a ray ModelDeployment has no {plural}"
    config = yaml.safe_load(rayservices[0]["spec"]["serveConfigV2"])
    variants = config["applications"][0]["deployments"][0]["user_config"]["config"]["variants"]
    assert [(v["version"], v["weight"]) for v in variants if v["weight"]] == [("v2", 100)]


def check_outcome(outcome: Outcome, baseline: Outcome) -> None:
    assert outcome.phase == baseline.phase
    entries = [(h["revision"], h["outcome"], h["model"]["version"]) for h in outcome.history]
    assert len(entries) == len(set(entries)), f"duplicate history entries: {entries}"
    assert entries == [(h["revision"], h["outcome"], h["model"]["version"]) for h in baseline.history]
    assert set(outcome.weights) <= ALLOWED_WEIGHTS, outcome.weights
    rising = [w for w in outcome.weights if w]  # 0 before the canary is ready and after promotion
    assert rising == sorted(rising), f"canary weight went back: {outcome.weights}"


@pytest.fixture(scope="module")
def baseline(world: World) -> Outcome:
    outcome = run_rollout(world, "restart-baseline", None)
    assert outcome.phase == "Succeeded"
    assert outcome.starts == 1
    check_children(world, "restart-baseline")
    # Which write is which, for choosing kill points (shown with -s).
    for i, e in enumerate(outcome.operator_writes, 1):
        print(
            f"write {i:2}: {e.user_agent.split('/')[0]:15} {e.verb:6} {e.group or 'core'}/{e.resource}/{e.subresource}"
        )
    return outcome


def test_uninterrupted_rollout_is_the_reference(world: World, baseline: Outcome) -> None:
    check_outcome(baseline, baseline)
    assert set(baseline.weights) >= set(STEPS), "the reference walks every step"
    assert len(baseline.operator_writes) >= max(FAST_KILL_POINTS + SLOW_KILL_POINTS), "kill points past the run's end"


def _scenario(world: World, baseline: Outcome, n: int) -> None:
    ns = f"restart-after-{n}"
    outcome = run_rollout(world, ns, n)
    assert outcome.starts == 2
    check_outcome(outcome, baseline)
    check_children(world, ns)


@pytest.mark.parametrize("n", FAST_KILL_POINTS)
def test_sigkill_after_write_n_resumes_the_rollout(world: World, baseline: Outcome, n: int) -> None:
    _scenario(world, baseline, n)


@pytest.mark.slow
@pytest.mark.parametrize("n", SLOW_KILL_POINTS)
def test_sigkill_sweep(world: World, baseline: Outcome, n: int) -> None:
    _scenario(world, baseline, n)
