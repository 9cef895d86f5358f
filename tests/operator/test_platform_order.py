"""The order of KubePlatform's writes, which makes a kill anywhere safe (docs/operating/crash-consistency.md):
readiness only reads; carrying out a routing action writes no child; saving writes the status before any child;
an Event decided again from the same saved status is posted once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import TEST_AGENT

from sluice.api.base import API_VERSION
from sluice.api.model_deployment import ModelDeploymentSpec
from sluice.api.status import ModelDeploymentStatus, VersionRef
from sluice.operator.config import OperatorConfig
from sluice.operator.kube import USER_AGENT, KubeClient
from sluice.operator.platform import KubePlatform, StatusWriter
from sluice.operator.render import Owner
from sluice.rollout.actions import DeployVersion, EmitEvent, SetTraffic

WRITES = {"create", "update", "patch", "delete"}


def spec(version: str) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "backend": "ray",
            "model": {"name": "m", "uri": f"s3://models/m/{version}.onnx", "version": version},
            "resources": {"cpu": "100m", "memory": "128Mi"},
        }
    )


@pytest.fixture
async def setup(kube_emulator: EmulatorThread) -> AsyncIterator[tuple[EmulatorThread, KubeClient, Owner]]:
    ns = f"order-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=kube_emulator.url, headers={"User-Agent": TEST_AGENT}) as http:
        assert (await http.post("/api/v1/namespaces", json={"metadata": {"name": ns}})).status_code == 201
        body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": "m"}}
        body["spec"] = spec("v1").model_dump(mode="json", by_alias=True, exclude_none=True)
        created = await http.post(f"/apis/{API_VERSION}/namespaces/{ns}/modeldeployments", json=body)
        assert created.status_code == 201, created.text
    owner = Owner(name="m", namespace=ns, uid=created.json()["metadata"]["uid"])
    client = KubeClient(httpx.AsyncClient(base_url=kube_emulator.url, headers={"User-Agent": USER_AGENT}))
    try:
        yield kube_emulator, client, owner
    finally:
        await client.close()


def writes(emulator: EmulatorThread, ns: str) -> list[str]:
    audit = emulator.call(lambda: list(emulator.emulator.audit))
    return [
        f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''}"
        for e in audit
        if e.namespace == ns and e.verb in WRITES and e.code < 300 and e.user_agent.startswith(USER_AGENT)
    ]


async def test_readiness_reads_and_save_writes_the_status_before_the_children(
    setup: tuple[EmulatorThread, KubeClient, Owner],
) -> None:
    emulator, client, owner = setup
    v1 = VersionRef(version="v1", uri="s3://models/m/v1.onnx")
    status = ModelDeploymentStatus(stable=v1)
    platform = KubePlatform(
        client, owner, spec("v1"), OperatorConfig(), status=status, writer=StatusWriter(client, owner)
    )
    ready = await platform.readiness()  # the RayService does not exist: not ready, and nothing created
    assert (ready.stable, ready.canary) == (False, False)
    assert writes(emulator, owner.namespace) == []

    await platform.save(status)
    first = ["patch modeldeployments/status", "create secrets", "create rayservices"]  # the admin token Secret too
    assert writes(emulator, owner.namespace) == first

    v2 = VersionRef(version="v2", uri="s3://models/m/v2.onnx")
    await platform.carry_out(DeployVersion("canary", v2))
    await platform.carry_out(SetTraffic(canary_weight=20, mirror_percent=0))
    await platform.readiness()
    assert writes(emulator, owner.namespace) == first

    ahead = status.model_copy(update={"canary": v2, "canary_weight": 20})
    await platform.save(ahead)
    assert writes(emulator, owner.namespace)[len(first) :] == ["patch modeldeployments/status", "patch rayservices"]


async def test_an_event_decided_again_from_the_same_status_is_posted_once(
    setup: tuple[EmulatorThread, KubeClient, Owner],
) -> None:
    emulator, client, owner = setup
    status = ModelDeploymentStatus()
    event = EmitEvent("Normal", "Initializing", "deploying v1")
    for _ in range(2):  # two operator lives deciding the same transition from the same saved status
        platform = KubePlatform(
            client, owner, spec("v1"), OperatorConfig(), status=status, writer=StatusWriter(client, owner)
        )
        await platform.carry_out(event)
    stored = emulator.call(lambda: emulator.emulator.stored("events"))
    mine = [e for e in stored if e["metadata"]["namespace"] == owner.namespace]
    assert [e["reason"] for e in mine] == ["Initializing"]
    audit = emulator.call(lambda: list(emulator.emulator.audit))
    creates = [e.code for e in audit if e.namespace == owner.namespace and e.resource == "events"]
    assert creates == [201, 409]  # the second life's post met AlreadyExists


async def test_a_different_saved_status_names_a_new_event(setup: tuple[EmulatorThread, KubeClient, Owner]) -> None:
    emulator, client, owner = setup
    writer = StatusWriter(client, owner)
    platform = KubePlatform(client, owner, spec("v1"), OperatorConfig(), status=ModelDeploymentStatus(), writer=writer)
    event = EmitEvent("Warning", "AnalysisFailed", "error rate too high")
    await platform.carry_out(event)
    v1 = VersionRef(version="v1", uri="s3://models/m/v1.onnx")
    await platform.save(ModelDeploymentStatus(stable=v1, failed_analyses=1))
    await platform.carry_out(event)  # the same reason after a real transition: a second Event
    stored = emulator.call(lambda: emulator.emulator.stored("events"))
    assert [e["reason"] for e in stored if e["metadata"]["namespace"] == owner.namespace] == ["AnalysisFailed"] * 2
