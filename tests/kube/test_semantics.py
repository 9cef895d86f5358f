"""Real-server semantics of the emulator, over real HTTP with the official client and raw HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from tests.kube.helpers import WIDGETS, unique, watch_events, widget
from tests.support import wait_for
from tests.support.emulator import EmulatorThread

GROUP, VERSION, PLURAL = "test.sluice.dev", "v1", "widgets"


@pytest.fixture
def ns(kube_client: client.ApiClient) -> Iterator[str]:
    name = unique("ns")
    core = client.CoreV1Api(kube_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def custom(kube_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_client)


def create(custom: client.CustomObjectsApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    return result


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status"
    return body


def test_discovery_serves_kopf_backbone_builtins_and_crds(kube_http: httpx.Client) -> None:
    core = {r["name"]: r for r in kube_http.get("/api/v1").json()["resources"]}
    for name in ("namespaces", "events", "configmaps", "services"):
        assert name in core
    assert core["namespaces"]["namespaced"] is False
    groups = {g["name"] for g in kube_http.get("/apis").json()["groups"]}
    assert {"apiextensions.k8s.io", "apps", "batch", "test.sluice.dev"} <= groups
    widgets = {r["name"]: r for r in kube_http.get("/apis/test.sluice.dev/v1").json()["resources"]}
    assert widgets["widgets"]["kind"] == "Widget"
    assert "widgets/status" in widgets
    assert kube_http.get("/apis/nope.example.com/v1").status_code == 404


def test_rayservice_crd_is_served(kube_http: httpx.Client) -> None:
    from tests.support.kube import RAY_CRD

    assert RAY_CRD.is_file(), f"KubeRay's RayService CRD is committed at {RAY_CRD}"
    resources = {r["name"] for r in kube_http.get("/apis/ray.io/v1").json()["resources"]}
    assert {"rayservices", "rayservices/status"} <= resources


def test_sluice_crds_are_served(kube_http: httpx.Client) -> None:
    from tests.support.kube import SLUICE_CRDS

    assert sorted(SLUICE_CRDS.glob("*.yaml")), f"no generated CRDs in {SLUICE_CRDS}"
    groups = {g["name"] for g in kube_http.get("/apis").json()["groups"]}
    assert "sluice.dev" in groups
    kinds = {r["kind"] for r in kube_http.get(f"/apis/sluice.dev/{_first_version(kube_http)}").json()["resources"]}
    assert "ModelDeployment" in kinds


def _first_version(kube_http: httpx.Client) -> str:
    group = next(g for g in kube_http.get("/apis").json()["groups"] if g["name"] == "sluice.dev")
    version: str = group["preferredVersion"]["version"]
    return version


def test_namespaces_list(kube_client: client.ApiClient, ns: str) -> None:
    names = {n.metadata.name for n in client.CoreV1Api(kube_client).list_namespace().items}
    assert {"default", ns} <= names


def test_create_bookkeeping_and_defaulting(kube_http: httpx.Client, ns: str) -> None:
    response = kube_http.post(WIDGETS.format(ns=ns), json={"metadata": {"name": "a"}, "spec": {"model": "m"}})
    assert response.status_code == 201
    obj = response.json()
    meta = obj["metadata"]
    assert obj["apiVersion"] == "test.sluice.dev/v1"
    assert obj["kind"] == "Widget"
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert obj["spec"]["minReplicas"] == 1
    assert obj["spec"]["maxReplicas"] == 3


def test_generate_name(custom: client.CustomObjectsApi, ns: str) -> None:
    body = widget("")
    body["metadata"] = {"generateName": "gen-"}
    first, second = create(custom, ns, body), create(custom, ns, body)
    assert first["metadata"]["name"].startswith("gen-")
    assert first["metadata"]["name"] != second["metadata"]["name"]


def test_duplicate_create_is_409_already_exists(custom: client.CustomObjectsApi, ns: str) -> None:
    create(custom, ns, widget("dup"))
    with pytest.raises(ApiException) as err:
        create(custom, ns, widget("dup"))
    assert err.value.status == 409
    assert status_of(err.value)["reason"] == "AlreadyExists"


def test_missing_object_is_404_status(custom: client.CustomObjectsApi, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "ghost")
    body = status_of(err.value)
    assert err.value.status == 404
    assert body["reason"] == "NotFound"
    assert "ghost" in body["message"]


def test_create_in_missing_namespace_is_refused(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as err:
        create(custom, "no-such-ns", widget("x"))
    assert err.value.status == 404
    assert "no-such-ns" in status_of(err.value)["message"]


def test_resource_version_is_monotonic_cluster_wide(kube_client: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(kube_client)
    versions = []
    for index in range(3):
        cm = core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm{index}"}, "data": {"k": "v"}})
        versions.append(int(cm.metadata.resource_version))
        patched = core.patch_namespaced_config_map(f"cm{index}", ns, {"data": {"k": str(index)}})
        versions.append(int(patched.metadata.resource_version))
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    listed = core.list_namespaced_config_map(ns)
    assert int(listed.metadata.resource_version) >= versions[-1]


def test_generation_bumps_only_on_spec_changes(custom: client.CustomObjectsApi, ns: str) -> None:
    obj = create(custom, ns, widget("gen"))
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "gen", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "gen", {"status": {"phase": "Up"}}
    )
    assert status["metadata"]["generation"] == 1
    assert status["status"]["phase"] == "Up"
    changed = custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gen", {"spec": {"model": "n"}})
    assert changed["metadata"]["generation"] == 2


def test_status_subresource_separates_spec_and_status(custom: client.CustomObjectsApi, ns: str) -> None:
    body = widget("st")
    body["status"] = {"phase": "Injected"}
    created = create(custom, ns, body)
    assert "status" not in created  # status is ignored on create
    via_main = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "st", {"spec": {"model": "n"}, "status": {"phase": "Sneaky"}}
    )
    assert via_main["spec"]["model"] == "n"
    assert "status" not in via_main
    via_status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "st", {"spec": {"model": "ignored"}, "status": {"phase": "Up"}}
    )
    assert via_status["status"]["phase"] == "Up"
    assert via_status["spec"]["model"] == "n"


def test_put_replace_with_conflict_detection(custom: client.CustomObjectsApi, ns: str) -> None:
    obj = create(custom, ns, widget("put"))
    obj["spec"]["model"] = "replaced"
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "put", obj)
    assert replaced["spec"]["model"] == "replaced"
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as err:  # obj still carries the old resourceVersion
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "put", obj)
    assert err.value.status == 409
    assert status_of(err.value)["reason"] == "Conflict"


def test_stale_resource_version_in_merge_patch_is_409(custom: client.CustomObjectsApi, ns: str) -> None:
    obj = create(custom, ns, widget("stale"))
    old_rv = obj["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "stale", {"spec": {"model": "b"}})
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "stale", {"metadata": {"resourceVersion": old_rv}, "spec": {"model": "c"}}
        )
    assert err.value.status == 409


def test_json_patch_test_failure_is_422(kube_http: httpx.Client, ns: str) -> None:
    kube_http.post(WIDGETS.format(ns=ns), json=widget("jp"))
    url = WIDGETS.format(ns=ns) + "/jp"
    headers = {"Content-Type": "application/json-patch+json"}
    bad = [
        {"op": "test", "path": "/spec/model", "value": "other"},
        {"op": "replace", "path": "/spec/model", "value": "x"},
    ]
    response = kube_http.patch(url, content=json.dumps(bad), headers=headers)
    assert response.status_code == 422
    assert response.json()["kind"] == "Status"
    assert kube_http.get(url).json()["spec"]["model"] == "m"
    good = [
        {"op": "test", "path": "/spec/model", "value": "m"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
    ]
    assert kube_http.patch(url, content=json.dumps(good), headers=headers).json()["metadata"]["finalizers"] == ["f"]


def test_dry_run_does_not_mutate(kube_http: httpx.Client, ns: str) -> None:
    url = WIDGETS.format(ns=ns)
    response = kube_http.post(url, params={"dryRun": "All"}, json=widget("dry"))
    assert response.status_code == 201
    assert response.json()["metadata"]["name"] == "dry"
    assert kube_http.get(f"{url}/dry").status_code == 404
    kube_http.post(url, json=widget("dry"))
    patched = kube_http.patch(
        f"{url}/dry",
        params={"dryRun": "All"},
        json={"spec": {"model": "z"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.json()["spec"]["model"] == "z"
    assert kube_http.get(f"{url}/dry").json()["spec"]["model"] == "m"
    assert kube_http.delete(f"{url}/dry", params={"dryRun": "All"}).status_code == 200
    assert kube_http.get(f"{url}/dry").status_code == 200


def test_schema_validation_names_the_field(custom: client.CustomObjectsApi, ns: str) -> None:
    body = widget("bad", rollout={"canary": {"steps": [{"weight": 10}, {"weight": 150}]}})
    with pytest.raises(ApiException) as err:
        create(custom, ns, body)
    status = status_of(err.value)
    assert err.value.status == 422
    assert status["reason"] == "Invalid"
    assert "spec.rollout.canary.steps[1].weight" in status["message"]
    assert status["details"]["causes"][0]["field"] == "spec.rollout.canary.steps[1].weight"
    create(custom, ns, widget("good"))
    for patch in ({"spec": {"minReplicas": -1}}, {"spec": {"model": 5}}, {"spec": {"port": 1.5}}):
        with pytest.raises(ApiException) as err:
            custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "good", patch)
        assert err.value.status == 422, patch
    with pytest.raises(ApiException) as err:  # required field, on replace
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "good", {**widget("good"), "spec": {}})
    assert "spec.model" in status_of(err.value)["message"] or "model" in status_of(err.value)["message"]


def test_cel_rules_are_evaluated(custom: client.CustomObjectsApi, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        create(custom, ns, widget("cel", minReplicas=5, maxReplicas=2))
    assert err.value.status == 422
    assert "spec: Invalid value" in status_of(err.value)["message"]
    assert "minReplicas must not exceed maxReplicas" in status_of(err.value)["message"]
    assert create(custom, ns, widget("cel", minReplicas=2, maxReplicas=2))["spec"]["minReplicas"] == 2


def test_unknown_fields_are_pruned_unless_preserved(custom: client.CustomObjectsApi, ns: str) -> None:
    obj = create(custom, ns, widget("prune", junk=1, extra={"anything": {"goes": True}}, port="http"))
    assert "junk" not in obj["spec"]
    assert obj["spec"]["extra"] == {"anything": {"goes": True}}
    assert obj["spec"]["port"] == "http"  # int-or-string


def test_label_and_field_selectors(kube_client: client.ApiClient, ns: str) -> None:
    core = client.CoreV1Api(kube_client)
    for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "x"}), ("c", {"app": "y"})):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> set[str]:
        return {cm.metadata.name for cm in core.list_namespaced_config_map(ns, **kwargs).items}

    assert names(label_selector="app=x") == {"a", "b"}
    assert names(label_selector="app=x,tier") == {"a"}
    assert names(label_selector="app!=x") == {"c"}
    assert names(label_selector="app in (x, y),!tier") == {"b", "c"}
    assert names(field_selector="metadata.name=b") == {"b"}
    assert names(field_selector="metadata.name!=b") == {"a", "c"}


def test_watch_honours_resource_version_and_timeout(
    kube_http: httpx.Client, kube_emulator: EmulatorThread, ns: str
) -> None:
    url = WIDGETS.format(ns=ns)
    first = kube_http.post(url, json=widget("w1")).json()
    since = first["metadata"]["resourceVersion"]
    kube_http.patch(
        f"{url}/w1", json={"spec": {"model": "n"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    kube_http.post(url, json=widget("w2"))
    kube_http.delete(f"{url}/w1")
    events = watch_events(kube_emulator.url, url, resourceVersion=since, timeoutSeconds="1", allowWatchBookmarks="true")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "w1"),
        ("ADDED", "w2"),
        ("DELETED", "w1"),
    ]
    snapshot = watch_events(kube_emulator.url, url, timeoutSeconds="1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in snapshot] == [("ADDED", "w2")]


def test_watch_is_race_free_under_concurrent_writes(kube_emulator: EmulatorThread, ns: str) -> None:
    url = WIDGETS.format(ns=ns)
    writers_done = threading.Event()

    def write() -> None:
        with httpx.Client(base_url=kube_emulator.url) as session:
            for index in range(40):
                session.post(url, json=widget(f"r{index}"))
        writers_done.set()

    thread = threading.Thread(target=write)
    thread.start()
    events = watch_events(kube_emulator.url, url, timeoutSeconds="3")
    thread.join()
    assert writers_done.is_set()
    names = [e["object"]["metadata"]["name"] for e in events]
    assert sorted(names) == sorted(f"r{i}" for i in range(40))  # each exactly once, none lost
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions[len(versions) - len(set(versions)) :] == sorted(versions[len(versions) - len(set(versions)) :])


def test_finalizers_delay_deletion(custom: client.CustomObjectsApi, ns: str) -> None:
    body = widget("fin")
    body["metadata"]["finalizers"] = ["test.sluice.dev/a", "test.sluice.dev/b"]
    create(custom, ns, body)
    deleting = custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fin")
    assert deleting["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "fin", {"metadata": {"finalizers": ["test.sluice.dev/b"]}}
    )
    assert custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fin")["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fin", {"metadata": {"finalizers": []}})
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fin")
    assert err.value.status == 404


def test_owner_references_are_garbage_collected(
    kube_client: client.ApiClient, custom: client.CustomObjectsApi, ns: str
) -> None:

    owner = create(custom, ns, widget("owner"))
    ref = {"apiVersion": "test.sluice.dev/v1", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"]}
    core, apps = client.CoreV1Api(kube_client), client.AppsV1Api(kube_client)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "bystander"}})
    deployment = {
        "metadata": {"name": "child", "ownerReferences": [ref]},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}},
    }
    apps.create_namespaced_deployment(ns, deployment)
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "owner")
    gone = core.list_namespaced_config_map
    wait_for("the child's collection", lambda: not gone(ns, field_selector="metadata.name=child").items, 5, 0.05)
    assert [cm.metadata.name for cm in core.list_namespaced_config_map(ns).items] == ["bystander"]
    assert apps.list_namespaced_deployment(ns).items == []


def test_builtin_kinds_round_trip(kube_client: client.ApiClient, ns: str) -> None:
    core, batch = client.CoreV1Api(kube_client), client.BatchV1Api(kube_client)
    svc = core.create_namespaced_service(ns, {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
    assert svc.spec.ports[0].port == 80
    job = batch.create_namespaced_job(
        ns, {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [], "restartPolicy": "Never"}}}}
    )
    assert job.metadata.uid
    event = core.create_namespaced_event(
        ns, {"metadata": {"name": "e"}, "involvedObject": {"name": "s"}, "reason": "R", "message": "m"}
    )
    assert event.reason == "R"


def test_bad_requests_get_clear_errors(kube_http: httpx.Client, ns: str) -> None:
    url = WIDGETS.format(ns=ns)
    not_json = kube_http.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert "not valid" in not_json.json()["message"]
    wrong_kind = kube_http.post(url, json={"kind": "Gadget", "metadata": {"name": "x"}, "spec": {"model": "m"}})
    assert wrong_kind.status_code == 400
    assert "Gadget" in wrong_kind.json()["message"]
    bad_name = kube_http.post(url, json=widget("Not_Valid"))
    assert bad_name.status_code == 422
    assert "metadata.name" in bad_name.json()["message"]
    no_name = kube_http.post(url, json={"spec": {"model": "m"}})
    assert no_name.status_code == 422
    assert kube_http.get("/apis/test.sluice.dev/v1/namespaces/x/nothings").status_code == 404
    assert (
        kube_http.get(
            "/api/v1/namespaces/default/configmaps", params={"watch": "true", "resourceVersion": "abc"}
        ).status_code
        == 400
    )


def test_orphan_policy_keeps_dependents_and_namespace_delete_cascades(kube_http: httpx.Client) -> None:
    import time

    ns = unique("gc")
    assert kube_http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
    owner = kube_http.post(WIDGETS.format(ns=ns), json=widget("owner")).json()
    ref = {"apiVersion": "test.sluice.dev/v1", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"]}
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    kube_http.post(cms, json={"metadata": {"name": "kept", "ownerReferences": [ref]}})
    kube_http.delete(f"{WIDGETS.format(ns=ns)}/owner", params={"propagationPolicy": "Orphan"})
    time.sleep(0.2)
    assert kube_http.get(f"{cms}/kept").status_code == 200
    kube_http.delete(f"/api/v1/namespaces/{ns}")
    wait_for("the namespace's objects to go", lambda: kube_http.get(f"{cms}/kept").status_code == 404, 5, 0.05)


def test_a_crd_created_through_the_api_is_served(kube_http: httpx.Client) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.dyn.sluice.dev"},
        "spec": {
            "group": "dyn.sluice.dev",
            "scope": "Namespaced",
            "names": {"plural": "gizmos", "kind": "Gizmo"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}},
                }
            ],
        },
    }
    assert kube_http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd).status_code == 201
    url = "/apis/dyn.sluice.dev/v1/namespaces/default/gizmos"
    assert kube_http.post(url, json={"metadata": {"name": "g"}, "spec": {}}).status_code == 201
    assert kube_http.get(url).json()["kind"] == "GizmoList"
    kube_http.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.dyn.sluice.dev")
    assert kube_http.get(url).status_code == 404
    assert kube_http.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd).status_code == 201
    assert kube_http.get(url).json()["items"] == []  # the objects went with the CRD
    kube_http.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.dyn.sluice.dev")
