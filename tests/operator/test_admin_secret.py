"""The router's admin-token Secret against the API emulator: created once, never rewritten (restart, re-render, spec
change), a platform team's own kept, a deleted one made again, gone with its ModelDeployment, mounted by the pods.

The create-only component is driven in process (its clock is ours, so "a minute later" takes no minute); the whole
operator runs as a subprocess for the rest.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support import wait_for
from tests.support.emulator import EmulatorThread
from tests.support.operator_process import Cluster, OperatorProcess, example

from sluice.operator.admin_secret import RECHECK_S, AdminSecret
from sluice.operator.kube import KubeClient
from sluice.operator.render import Owner
from sluice.operator.render.admin import ADMIN_DIR, ADMIN_TOKEN_FILE_ENV

SECRETS = "/api/v1/namespaces/{ns}/secrets"
Obj = dict[str, Any]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def namespace(kube_emulator: EmulatorThread) -> Iterator[str]:
    ns = f"as-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=kube_emulator.url, timeout=30) as http:
        assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        yield ns
        http.delete(f"/api/v1/namespaces/{ns}")


@pytest.fixture
async def client(kube_emulator: EmulatorThread) -> AsyncIterator[KubeClient]:
    kube = KubeClient(httpx.AsyncClient(base_url=kube_emulator.url, timeout=30))
    try:
        yield kube
    finally:
        await kube.close()


def token_of(secret: Obj) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


async def read(client: KubeClient, ns: str, name: str) -> Obj | None:
    return await client.get("v1", "Secret", ns, name)


async def test_created_once_and_never_rewritten(client: KubeClient, namespace: str) -> None:
    owner = Owner("fraud", namespace, "uid-1")
    clock = Clock()
    first = AdminSecret(client, owner, clock=clock)
    assert await first.ensure() is True
    secret = await read(client, namespace, "fraud-router-admin")
    assert secret is not None
    assert secret["type"] == "Opaque"
    token = token_of(secret)
    assert len(token) >= 43  # token_urlsafe(32): 32 random bytes
    [ref] = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ModelDeployment", "fraud", "uid-1", True)
    assert secret["metadata"]["labels"]["sluice.dev/model-deployment"] == "fraud"

    writes = client.writes
    clock.now += RECHECK_S - 1
    assert await first.ensure() is False
    assert client.writes == writes, "within the recheck interval nothing is sent"
    clock.now += 1
    assert await first.ensure() is False  # one create, answered 409: the Secret is there and kept
    assert client.writes == writes + 1

    restarted = AdminSecret(client, owner)  # an operator restart: a new process knows nothing
    assert await restarted.ensure() is False
    again = await read(client, namespace, "fraud-router-admin")
    assert again is not None
    assert token_of(again) == token
    assert again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"], "never written again"


async def test_a_platform_teams_secret_is_kept(client: KubeClient, namespace: str) -> None:
    ours = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "fraud-router-admin", "namespace": namespace},
        "data": {"token": base64.b64encode(b"chosen-by-the-platform-team").decode()},
    }
    await client.create(ours)
    assert await AdminSecret(client, Owner("fraud", namespace, "uid-1")).ensure() is False
    kept = await read(client, namespace, "fraud-router-admin")
    assert kept is not None
    assert token_of(kept) == "chosen-by-the-platform-team"
    assert "ownerReferences" not in kept["metadata"], "not adopted either: it is theirs"


async def test_a_deleted_secret_is_made_again_with_a_new_token(client: KubeClient, namespace: str) -> None:
    clock = Clock()
    admin = AdminSecret(client, Owner("fraud", namespace, "uid-1"), clock=clock)
    assert await admin.ensure() is True
    old = await read(client, namespace, "fraud-router-admin")
    assert old is not None
    assert await client.delete("v1", "Secret", namespace, "fraud-router-admin")
    assert await admin.ensure() is False, "not before the recheck interval"
    clock.now += RECHECK_S
    assert await admin.ensure() is True
    new = await read(client, namespace, "fraud-router-admin")
    assert new is not None
    assert token_of(new) != token_of(old)


async def test_a_refused_create_is_logged_once_and_not_raised(
    client: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    admin = AdminSecret(client, Owner("fraud", f"absent-{uuid.uuid4().hex[:6]}", "uid-1"), clock=clock)
    assert await admin.ensure() is False  # the namespace does not exist: 404, as a missing RBAC rule would be 403
    clock.now += RECHECK_S
    assert await admin.ensure() is False
    assert caplog.text.count("could not create the admin Secret fraud-router-admin") == 1


def secret_volume(pod: Obj) -> Obj:
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    return dict(volume["secret"])


def test_the_operator_creates_it_keeps_it_across_restart_and_spec_change_and_it_goes_with_the_md(
    cluster: Cluster, operator: OperatorProcess, simulator: Any, tmp_path: Path
) -> None:
    doc = example("01-canary-good.yaml")[0]
    cluster.apply_md(doc)
    path = SECRETS + "/fraud-router-admin"
    secret = wait_for("the admin Secret", lambda: cluster.get(path))
    token = token_of(secret)
    md = cluster.md("fraud")
    assert md is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]

    rs = wait_for("the RayService", lambda: cluster.rayservice("fraud"))
    cluster_spec = rs["spec"]["rayClusterConfig"]
    pods = [cluster_spec["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster_spec["workerGroupSpecs"]]
    for pod in pods:
        assert secret_volume(pod) == {"secretName": "fraud-router-admin", "optional": True}
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env[ADMIN_TOKEN_FILE_ENV] == f"{ADMIN_DIR}/token"
    wait_for("Stable", lambda: cluster.status("fraud").get("phase") == "Stable", 60)

    operator.stop()
    operator.start()
    wait_for("the restarted operator", operator.healthy, 30)
    changed = {**doc, "spec": {**doc["spec"], "model": {**doc["spec"]["model"], "version": "v2"}}}
    cluster.apply_md(changed)  # a spec change: a canary, a re-render of every child
    wait_for("v2 in the RayService", lambda: "v2" in cluster.weights("fraud"), 60)
    after = cluster.get(path)
    assert after is not None
    assert token_of(after) == token
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]
    serve = yaml.safe_load(cluster.rayservice("fraud")["spec"]["serveConfigV2"])  # type: ignore[index]
    assert token not in yaml.safe_dump(serve), "the token never travels in a child's spec"

    cluster.delete_md("fraud")
    wait_for("the ModelDeployment gone", lambda: cluster.md("fraud") is None, 30)
    wait_for("the admin Secret garbage-collected", lambda: cluster.get(path) is None, 30)
