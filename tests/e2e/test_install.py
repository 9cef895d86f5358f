"""Install Sluice into kind and check what the API server makes of the CRDs, the examples and the chart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.e2e.conftest import REPO, Kube

pytestmark = pytest.mark.e2e

EXAMPLES = REPO / "manifests" / "examples"
CRDS = ("modeldeployments.sluice.dev", "experiments.sluice.dev", "driftpolicies.sluice.dev")


def _into(path: Path, namespace: str) -> str:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return yaml.safe_dump_all(docs)


def test_crds_become_established(installed: Kube) -> None:
    for crd in CRDS:
        installed.ok("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", timeout=90)


def test_kubectl_explain_teaches_the_api(installed: Kube) -> None:
    out = installed.ok("explain", "modeldeployment.spec.rollout")
    assert "canary" in out
    assert "How a new model version reaches production" in out
    assert "strictly increasing" in installed.ok("explain", "md.spec.rollout.canary.steps")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_accepted(installed: Kube, namespace: str, path: Path) -> None:
    installed.ok("apply", "-f", "-", stdin=_into(path, namespace))


@pytest.mark.parametrize("path", sorted((EXAMPLES / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_example_is_refused_naming_the_field(installed: Kube, namespace: str, path: Path) -> None:
    field = next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines() if "expect-field:" in line)
    result = installed.run("apply", "--dry-run=server", "-f", "-", stdin=_into(path, namespace))
    assert result.returncode != 0, f"the API server accepted {path.name}"
    assert field in result.stderr, f"API server said {result.stderr!r}; expected the field {field}"


def test_printer_columns_and_category(installed: Kube, namespace: str) -> None:
    installed.ok("apply", "-f", "-", stdin=_into(EXAMPLES / "10-canary-ray.yaml", namespace))
    header = installed.ok("get", "md", "-n", namespace).splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STABLE", "CANARY", "WEIGHT", "READY", "AGE"]
    assert "modeldeployment.sluice.dev/fraud" in installed.ok("get", "sluice", "-n", namespace, "-o", "name")


def test_operator_pod_is_admitted_under_restricted_pod_security(installed: Kube) -> None:
    """The namespace enforces the restricted profile: a pod existing at all proves the chart's securityContext."""
    installed.ok(
        "wait", "--for=jsonpath={.status.replicas}=1", "deployment/sluice", "-n", "sluice-system", "--timeout=60s"
    )
    events = installed.ok("get", "events", "-n", "sluice-system", "-o", "jsonpath={.items[*].message}")
    assert "violates PodSecurity" not in events


def test_chart_installs_with_the_helm_engine(installed: Kube, namespace: str) -> None:
    """The chart itself (not the pre-rendered manifest), namespaced mode: the API server accepts every object."""
    import helm_python as helm

    config = helm.Config(kubeconfig_path=installed.env.get("KUBECONFIG"), namespace=namespace)
    release = "sluice-helm"
    try:
        config.install(
            REPO / "helm" / "sluice", release, {"watchNamespaces": [namespace]}, namespace=namespace, timeout=120
        )
        roles = installed.ok("get", "role", "-n", namespace, "-o", "name")
        assert f"role.rbac.authorization.k8s.io/{release}" in roles
        installed.ok("get", "deployment", release, "-n", namespace)
    finally:
        config.uninstall(release, ignore_not_found=True)
