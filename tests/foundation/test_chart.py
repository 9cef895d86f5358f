"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk), every object schema-checked."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from tests.foundation.crd_tools import REPO

CHART_DIR = REPO / "helm" / "sluice"
K8S_VERSION = "1.33"
SHARED_SCHEMAS = REPO / "tests" / "schemas"  # vendored copies of the owners' CRDs


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = chart.render(values or {}, name="sluice", namespace="sluice-system", is_install=True)
    return [d for name, text in sorted(out.items()) if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_lint_is_clean() -> None:
    for values in (
        {},
        {"watchNamespaces": ["a", "b"], "metrics": {"serviceMonitor": {"enabled": True}}},
        {"replicaCount": 2},
    ):
        report = helm.lint(CHART_DIR, values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems, report
        assert not report["errors"], report


@pytest.mark.parametrize(
    "overrides",
    [
        "",
        "watchNamespaces={team-a,team-b}",
        "metrics.serviceMonitor.enabled=true,networkPolicy.enabled=false,podDisruptionBudget.enabled=false",
        "serviceAccount.create=false,serviceAccount.name=existing,logLevel=debug,image.tag=v9",
        "replicaCount=2",
    ],
)
def test_every_rendered_object_is_valid_kubernetes(chart: helm.Chart, overrides: str) -> None:
    objects = render(chart, helm.parse_set_string(overrides) if overrides else {})
    assert by_kind(objects, "Deployment")
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # not a built-in kind: checked against prometheus-operator's CRD below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_operator_runs_under_the_restricted_profile(chart: helm.Chart) -> None:
    (deployment,) = by_kind(render(chart), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert container["command"] == ["sluice", "operator"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["SLUICE_GPU_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
    assert json.loads(env["SLUICE_GPU_NODE_SELECTOR"]) == {"sluice.dev/gpu": "true"}
    assert env["SLUICE_WATCH_NAMESPACES"] == ""


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(chart: helm.Chart) -> None:
    objects = render(chart)
    assert not by_kind(objects, "Role")
    (role,) = by_kind(objects, "ClusterRole")
    grants = _grants(role["rules"])
    assert ("sluice.dev", "modeldeployments/status", "patch") in grants
    assert ("ray.io", "rayservices", "create") in grants
    assert ("", "pods", "list") in grants  # InsufficientGPU
    assert ("batch", "jobs", "create") in grants  # DriftPolicy retrain Jobs
    assert not any(g == "coordination.k8s.io" for g, _, _ in grants), "standalone, no Lease"
    assert ("", "namespaces", "watch") in grants
    assert {v for g, r, v in grants if r == "customresourcedefinitions"} == {"get", "list", "watch"}
    assert not any("*" in t for t in grants), "wildcards are not least privilege"
    assert not any(r in ("pods/exec", "clusterroles") for _, r, _ in grants)
    # The router's admin Secret is created, never read: no get/list/watch on any Secret.
    assert {v for _, r, v in grants if r == "secrets"} == {"create"}


def test_watched_namespaces_get_roles_instead_of_a_cluster_role(chart: helm.Chart) -> None:
    objects = render(chart, helm.parse_set_string("watchNamespaces={team-a,team-b}"))
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(objects, "RoleBinding")) == ["team-a", "team-b"]
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert {r for _, r, _ in _grants(cluster_role["rules"])} == {"customresourcedefinitions"}
    assert ("apps", "deployments", "create") in _grants(roles[0]["rules"])
    (deployment,) = by_kind(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLUICE_WATCH_NAMESPACES"] == "team-a,team-b"


def test_two_replicas_elect_a_leader_over_a_lease_and_one_does_not(chart: helm.Chart) -> None:
    """replicaCount 2: the leader-election env, a Lease Role in the release namespace, RollingUpdate, spread over
    nodes. replicaCount 1 (the default): none of it, strategy Recreate."""
    objects = render(chart, {"replicaCount": 2})
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SLUICE_LEADER_ELECTION"] == "true"
    assert (env["SLUICE_LEASE_DURATION_SECONDS"], env["SLUICE_RENEW_DEADLINE_SECONDS"]) == ("15", "10")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert pod["affinity"]["podAntiAffinity"]
    (role,) = by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == "sluice-system"
    assert _grants(role["rules"]) == {
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "patch"),
    }
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]

    single = render(chart)
    (deployment,) = by_kind(single, "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "SLUICE_LEADER_ELECTION" not in names
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not by_kind(single, "Role")


def test_every_rbac_rule_is_commented() -> None:
    for template in ("_helpers.tpl", "rbac.yaml"):
        lines = (CHART_DIR / "templates" / template).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                assert lines[i - 1].strip().startswith("#"), f"{template}:{i + 1}: RBAC rule without a comment"


def test_service_monitor_matches_prometheus_operator_schema(chart: helm.Chart) -> None:
    crd_path = SHARED_SCHEMAS / "monitoring.coreos.com_servicemonitors.yaml"
    if not crd_path.is_file():
        pytest.skip(f"prometheus-operator ServiceMonitor CRD not found at {crd_path}")
    objects = render(chart, helm.parse_set_string("metrics.serviceMonitor.enabled=true"))
    (monitor,) = by_kind(objects, "ServiceMonitor")
    crd = yaml.safe_load(crd_path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == monitor["apiVersion"].split("/")[1])
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.Draft7Validator(spec_schema).validate(monitor["spec"])
    (service,) = by_kind(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert not by_kind(render(chart), "ServiceMonitor"), "ServiceMonitor must be off by default"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"logLevel": "verbose"}, "/logLevel"),
        ({"image": {"repo": "x"}}, "/image"),
        ({"metrics": {"port": 80}}, "/metrics/port"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"leaderElection": {"leaseDurationSeconds": 0}}, "/leaderElection/leaseDurationSeconds"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"unknownKey": True}, "unknownKey"),
    ],
)
def test_values_breaking_the_schema_are_refused_by_name(
    chart: helm.Chart, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(named)):
        chart.render(overrides, name="sluice", namespace="sluice-system")


def test_notes_tell_how_to_watch_a_rollout(chart: helm.Chart) -> None:
    notes = chart.render({}, name="sluice", namespace="sluice-system")["sluice/templates/NOTES.txt"]
    assert "kubectl get md -w" in notes
    assert "kubectl sluice status NAME --watch" in notes


def test_pdb_and_network_policy_select_the_operator(chart: helm.Chart) -> None:
    objects = render(chart)
    (deployment,) = by_kind(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        (obj,) = by_kind(objects, kind)
        selector = obj["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind


def _dockerfile_image(path: Path) -> str:
    match = re.search(r"^# Image: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} does not say which image it builds"
    return match.group(1)


def test_chart_images_are_the_ones_the_dockerfiles_build() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    chart_meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert values["image"]["repository"] == _dockerfile_image(REPO / "operator" / "Dockerfile")
    assert values["routerImage"]["repository"] == _dockerfile_image(REPO / "serving" / "Dockerfile")
    assert chart_meta["appVersion"] == project["version"], "image tags default to appVersion = the package version"
    for dockerfile in (REPO / "operator" / "Dockerfile", REPO / "serving" / "Dockerfile"):
        text = dockerfile.read_text()
        assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+", text, re.MULTILINE), "pin the python base image"
        assert re.search(r"^USER 10001", text, re.MULTILINE), "run as the chart's non-root uid"
        assert re.search(r"pip install \"?\.", text), "install this project, not a copy from an index"
    assert re.search(r"^ARG EXTRAS=.*ray", (REPO / "serving" / "Dockerfile").read_text(), re.MULTILINE)


def _load_render_install() -> Any:
    spec = importlib.util.spec_from_file_location("render_install", REPO / "helm" / "render_install.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_manifest_is_up_to_date_and_valid() -> None:
    text = _load_render_install().render_install()
    current = (REPO / "manifests" / "install.yaml").read_text()
    assert current == text, "manifests/install.yaml is out of date: run `python helm/render_install.py`"
    objects = list(yaml.safe_load_all(current))
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace"
    assert kinds.count("CustomResourceDefinition") == 3
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
