"""What the crash-consistency and HA tests read back from the API emulator: the routing states the children went
through, children created more than once, and the operator's Events (docs/operating/crash-consistency.md)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import yaml
from tests.support.emulator import AuditEntry, EmulatorThread
from tests.support.operator_process import ray_service_sample

Routing = tuple[tuple[str, int], ...]  # (version, weight) per variant, stable first
EVENT_SOURCE = "sluice-operator"


def variants(backend: str, child: dict[str, Any]) -> Routing | None:
    """The routing a RayService or the Triton router's ConfigMap carries (None: not a routing child)."""
    if backend == "ray":
        serve = yaml.safe_load(child["spec"]["serveConfigV2"])
        deployments = serve["applications"][0]["deployments"]
        config = next(d for d in deployments if "user_config" in d)["user_config"]["config"]
    else:
        if not child["metadata"]["name"].endswith("-router"):
            return None
        config = json.loads(child["data"]["config.json"])
    return tuple((v["version"], v["weight"]) for v in config["variants"])


def routing_states(emulator: EmulatorThread, backend: str, ns: str) -> list[Routing]:
    """Every routing state the routing child of `ns` was written with, consecutive repeats folded."""
    plural, group = ("rayservices", "ray.io") if backend == "ray" else ("configmaps", "")
    history = emulator.call(lambda: emulator.emulator.history(plural, group, ns))
    states: list[Routing] = []
    for kind, obj in history:
        if kind == "DELETED":
            continue
        routing = variants(backend, obj)
        if routing is not None and (not states or states[-1] != routing):
            states.append(routing)
    return states


def is_subsequence(part: list[Routing], whole: list[Routing]) -> bool:
    it = iter(whole)
    return all(any(state == other for other in it) for state in part)


def created_twice(writes: list[AuditEntry]) -> list[str]:
    """Children created more than once: deleted and re-created, or created again by a second actor."""
    creates = Counter(f"{e.resource}/{e.name}" for e in writes if e.verb == "create" and e.resource != "events")
    return sorted(k for k, n in creates.items() if n > 1)


def operator_events(emulator: EmulatorThread, ns: str) -> list[str]:
    """Reasons of the Events the operator posted in `ns`, in the order posted."""
    history = emulator.call(lambda: emulator.emulator.history("events", "", ns))
    return [
        obj["reason"]
        for kind, obj in history
        if kind == "ADDED" and (obj.get("source") or {}).get("component") == EVENT_SOURCE
    ]


def workloads(emulator: EmulatorThread, backend: str, ns: str) -> set[str]:
    """What serves versions in `ns`: the RayService's variants (versions), or the Triton Deployments and Services."""
    if backend == "ray":
        stored = emulator.call(lambda: emulator.emulator.stored("rayservices", "ray.io", ns))
        return {v for rs in stored for v, _ in variants(backend, rs) or ()}
    found: set[str] = set()
    for plural, group, kind in (("deployments", "apps", "Deployment"), ("services", "", "Service")):
        stored = emulator.call(lambda p=plural, g=group: emulator.emulator.stored(p, g, ns))
        found |= {f"{kind}/{o['metadata']['name']}" for o in stored}
    return found


def final_workloads(backend: str, name: str, stable: str) -> set[str]:
    """`workloads` once a rollout of ModelDeployment `name` has settled on `stable` alone."""
    if backend == "ray":
        return {stable}
    return {f"{kind}/{name}-{part}" for kind in ("Deployment", "Service") for part in ("router", stable)}


def warm(emulator: EmulatorThread) -> None:
    """Pay the first RayService write's compile of KubeRay's large schema (~10 s on 2 cores, in the emulator's one
    event loop) before any operator runs: a private emulator would otherwise stall every request behind it, Lease
    renewals included."""
    url = f"{emulator.url}/apis/ray.io/v1/namespaces/default/rayservices?dryRun=All"
    response = httpx.post(url, json=ray_service_sample(), timeout=120)
    assert response.status_code == 201, response.text
