"""High availability: two `sluice operator` replicas with leader election over a coordination.k8s.io Lease.

One holds the Lease and acts; the other stands by (answering /healthz, writing nothing but Lease reads). SIGKILL the
active one in the middle of a canary and the standby takes over within a lease duration plus a retry period and
Kopf's start; the rollout ends as it would have, with nothing done twice: no child created twice, no Event posted
twice, no step of traffic back, no write by the standby before it held the Lease. A clean stop (SIGTERM) releases
the Lease, so the other replica takes over within a retry period. The chart's RBAC for the Lease is what the
replicas use, no more.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import pytest
import yaml
from tests.operator.crash_checks import created_twice, operator_events, routing_states, warm
from tests.support import wait_for
from tests.support.emulator import AuditEntry, EmulatorThread
from tests.support.kube import start_emulator
from tests.support.operator_process import OPERATOR_AGENTS, TEST_AGENT, OperatorProcess
from tests.support.router_metrics import SyntheticRouterMetrics
from tests.support.simulator import ClusterSimulator

from sluice.api.base import API_VERSION

CHART = Path(__file__).resolve().parents[2] / "helm" / "sluice"
LEASE_NS, LEASE = "sluice-system", "sluice"
NS = "ha"
LEASE_S, RENEW_S, RETRY_S = 6.0, 4.0, 1.0  # the chart's defaults are 15 / 10 / 2 s
WRITES = {"create", "update", "patch", "delete"}


@dataclass
class Cluster:
    emulator: EmulatorThread
    kubeconfig: Path
    http: httpx.Client
    tmp: Path
    metrics_env: dict[str, str]

    def replica(self, name: str) -> OperatorProcess:
        env = {
            "SLUICE_WATCH_NAMESPACES": NS,
            "SLUICE_POLL_SECONDS": "0.2",
            "SLUICE_LEADER_ELECTION": "true",
            "SLUICE_LEASE_NAME": LEASE,
            "SLUICE_LEASE_DURATION_SECONDS": str(LEASE_S),
            "SLUICE_RENEW_DEADLINE_SECONDS": str(RENEW_S),
            "SLUICE_RETRY_PERIOD_SECONDS": str(RETRY_S),
            "POD_NAMESPACE": LEASE_NS,
            "POD_NAME": name,
        }
        logs = self.tmp / name
        logs.mkdir(exist_ok=True)
        return OperatorProcess(self.kubeconfig, logs, {**self.metrics_env, **env})

    def holder(self) -> str:
        lease = self.http.get(f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases/{LEASE}")
        if lease.status_code != 200:
            return ""
        return str((lease.json().get("spec") or {}).get("holderIdentity") or "")

    def status(self, name: str) -> dict[str, Any]:
        path = f"/apis/{API_VERSION}/namespaces/{NS}/modeldeployments/{name}"
        return self.http.get(path).json().get("status") or {}

    def audit(self) -> list[AuditEntry]:
        return list(self.emulator.call(lambda: list(self.emulator.emulator.audit)))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    emulator = start_emulator(cel_rules=False)
    tmp = tmp_path_factory.mktemp("ha")
    try:
        kubeconfig = emulator.write_kubeconfig(tmp / "kubeconfig")
        warm(emulator)
        with (
            SyntheticRouterMetrics() as metrics,
            httpx.Client(base_url=emulator.url, headers={"User-Agent": TEST_AGENT}, timeout=30) as http,
        ):
            for ns in (LEASE_NS, NS):
                assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
            simulator = ClusterSimulator(emulator.url, NS).start()
            try:
                yield Cluster(emulator, kubeconfig, http, tmp, {"SLUICE_ROUTER_METRICS_URL": metrics.url_format})
            finally:
                simulator.stop()
    finally:
        emulator.stop()


def model_deployment(version: str) -> dict[str, Any]:
    """A ray canary slow enough (1 s per step) to kill its operator in the middle."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {
            "backend": "ray",
            "model": {"name": "m", "uri": f"s3://models/m/{version}.onnx", "version": version},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "rollout": {
                "strategy": "canary",
                "canary": {"steps": [{"weight": w, "pause": {"duration": "1s"}} for w in (20, 50, 80)]},
            },
            "analysis": {"interval": "500ms", "failureThreshold": 1, "minRequests": 10},
        },
    }


def writes_by(entries: list[AuditEntry], identity: str) -> list[int]:
    """Positions in the audit log of the successful writes of one replica's own client (its User-Agent names it)."""
    return [
        i
        for i, e in enumerate(entries)
        if f"({identity})" in e.user_agent and e.verb in WRITES and e.code < 300 and e.namespace == NS
    ]


@dataclass
class Failover:
    to_lease_s: float  # kill -> the standby holds the Lease
    to_first_write_s: float  # kill -> the standby's first write in the watched namespace


RESULTS: dict[str, Any] = {}


def test_standby_takes_over_when_the_active_replica_is_killed(cluster: Cluster) -> None:
    a, b = cluster.replica("op-a"), cluster.replica("op-b")
    try:
        a.start()
        wait_for("op-a to hold the Lease", lambda: cluster.holder() == "op-a", 30)
        b.start()
        wait_for("op-b to answer /healthz as a standby", b.healthy, 30)
        path = f"/apis/{API_VERSION}/namespaces/{NS}/modeldeployments"
        assert cluster.http.post(path, json=model_deployment("v1")).status_code == 201
        wait_for("v1 Stable", lambda: cluster.status("m").get("phase") == "Stable", 60)
        change = {"spec": {"model": {"version": "v2", "uri": "s3://models/m/v2.onnx"}}}
        merge = {"Content-Type": "application/merge-patch+json"}
        assert cluster.http.patch(f"{path}/m", content=json.dumps(change), headers=merge).status_code == 200
        wait_for("the canary at 20%", lambda: cluster.status("m").get("canaryWeight") == 20, 60)
        assert cluster.holder() == "op-a", _election_log(a, b)
        assert not writes_by(cluster.audit(), "op-b"), "the standby wrote while the active replica held the Lease"

        killed_at = len(cluster.audit())
        a.kill()
        t_kill = time.monotonic()
        wait_for("op-b to hold the Lease", lambda: cluster.holder() == "op-b", 30, 0.02)
        to_lease = time.monotonic() - t_kill
        wait_for("op-b's first write", lambda: writes_by(cluster.audit(), "op-b"), 30, 0.02)
        failover = Failover(to_lease, time.monotonic() - t_kill)
        final = wait_for("Succeeded", lambda: (s := cluster.status("m")).get("phase") == "Succeeded" and s, 60)
        wait_for(
            "the children to serve v2 alone",
            lambda: (s := routing_states(cluster.emulator, "ray", NS)) and s[-1] == (("v2", 100),),
            30,
        )
        assert "Traceback" not in b.logs(), b.logs()[-4000:]
    finally:
        a.kill()
        exit_b = b.stop()
    assert exit_b == 0, b.logs()[-4000:]

    audit = cluster.audit()
    # The dead replica wrote nothing after its kill; the standby nothing before the kill.
    assert not [i for i in writes_by(audit, "op-a") if i >= killed_at]
    assert all(i >= killed_at for i in writes_by(audit, "op-b"))
    # Nothing done twice across the handover.
    ours = [e for e in audit if e.namespace == NS and e.user_agent.startswith(OPERATOR_AGENTS) and e.code < 300]
    assert not created_twice([e for e in ours if e.verb in WRITES])
    reasons = operator_events(cluster.emulator, NS)
    assert reasons.count("Promoted") == 1, reasons
    assert len(reasons) == len(set(reasons)) or _only_step_repeats(reasons), reasons
    weights = [dict(r).get("v2", 0) for r in routing_states(cluster.emulator, "ray", NS)]
    assert weights == sorted(weights), f"traffic stepped back during the handover: {weights}"
    entries = [(h["revision"], h["outcome"]) for h in final.get("history", [])]
    assert len(entries) == len(set(entries)), entries
    RESULTS["kill"] = failover
    print(f"\nfailover after SIGKILL: Lease {failover.to_lease_s:.2f} s, first write {failover.to_first_write_s:.2f} s")
    assert failover.to_lease_s <= LEASE_S + 2 * RETRY_S + 1.0
    assert failover.to_first_write_s <= LEASE_S + RETRY_S + 15.0


def _election_log(*replicas: OperatorProcess) -> str:
    """The leader-election lines of each replica's log (why a Lease changed hands)."""
    return "\n".join(
        line for r in replicas for line in r.logs().splitlines() if "leader" in line or "Lease" in line or "---" in line
    )


def _only_step_repeats(reasons: list[str]) -> bool:
    """StepAdvanced is posted once per step; every other reason once per rollout."""
    counts = {r: reasons.count(r) for r in reasons}
    return all(n == 1 for r, n in counts.items() if r != "StepAdvanced")


def test_a_clean_stop_releases_the_lease(cluster: Cluster) -> None:
    a, b = cluster.replica("op-c"), cluster.replica("op-d")
    try:
        a.start()
        wait_for("op-c to hold the Lease", lambda: cluster.holder() == "op-c", 30)
        b.start()
        wait_for("op-d to answer /healthz as a standby", b.healthy, 30)
        assert cluster.holder() == "op-c"
        wait_for("op-c past start-up", a.healthy, 30)
        t_stop = time.monotonic()
        assert a.stop() == 0, a.logs()[-4000:]
        wait_for("op-d to hold the Lease", lambda: cluster.holder() == "op-d", 30, 0.02)
        handover = time.monotonic() - t_stop
    finally:
        a.stop()
        b.stop()
    RESULTS["release"] = handover
    print(f"\nhandover after SIGTERM: {handover:.2f} s (includes op-c's shutdown)")


def lease_grants(values: dict[str, Any]) -> set[tuple[str, str, str]]:
    rendered = helm.Chart.load(CHART).render(values, name="sluice", namespace=LEASE_NS, is_install=True)
    docs = [d for n, text in rendered.items() if n.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == LEASE_NS]
    return {
        (g, r, v)
        for role in roles
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
        if g == "coordination.k8s.io"
    }


def test_the_charts_lease_rbac_is_what_the_replicas_use(cluster: Cluster) -> None:
    """replicaCount 2 grants exactly the Lease verbs the replicas used; replicaCount 1 grants none."""
    used = {
        (e.group, e.resource, e.verb)
        for e in cluster.audit()
        if e.group == "coordination.k8s.io" and e.user_agent.startswith(OPERATOR_AGENTS)
    }
    assert used, "the HA runs above made no Lease requests"
    assert all(e.name in ("", LEASE) for e in cluster.audit() if e.group == "coordination.k8s.io" and e.name)
    assert used == lease_grants({"replicaCount": 2})
    assert lease_grants({}) == set()
