"""End-to-end scenarios against a real kind cluster; skipped, with the reason, when none is reachable.

A cluster counts when SLUICE_E2E_KUBECONFIG names a kubeconfig, or the current kubectl context is a kind one
(`kind create cluster --config kind-config.yaml` makes `kind-sluice`) and `kubectl cluster-info` answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Kube:
    """kubectl bound to one cluster."""

    env: dict[str, str]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def ok(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = self.run(*args, stdin=stdin, timeout=timeout)
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr}"
        return result.stdout


def _reachable_cluster() -> tuple[Kube | None, str]:
    if shutil.which("kubectl") is None:
        return None, "kubectl is not installed"
    env = dict(os.environ)
    explicit = os.environ.get("SLUICE_E2E_KUBECONFIG")
    if explicit:
        env["KUBECONFIG"] = explicit
    kube = Kube(env)
    try:
        context = kube.run("config", "current-context", timeout=10).stdout.strip()
        if not explicit and not context.startswith("kind-"):
            return None, f"current kubectl context {context or '(none)'!r} is not a kind cluster"
        info = kube.run("cluster-info", "--request-timeout=5s", timeout=15)
    except subprocess.TimeoutExpired:
        return None, "kubectl cluster-info timed out"
    if info.returncode != 0:
        return None, f"kubectl cluster-info failed: {info.stderr.strip()[:200]}"
    return kube, ""


@pytest.fixture(scope="session")
def kube() -> Kube:
    found, reason = _reachable_cluster()
    if found is None:
        pytest.skip(f"no kind cluster reachable: {reason}")
    return found


@pytest.fixture(scope="session")
def installed(kube: Kube) -> Iterator[Kube]:
    """manifests/install.yaml applied (server-side: the CRDs are too large for client-side apply), then removed."""
    install = str(REPO / "manifests" / "install.yaml")
    try:
        kube.ok("apply", "--server-side", "--force-conflicts", "-f", install, timeout=180)
        yield kube
    finally:
        kube.run("delete", "--ignore-not-found", "--wait=false", "-f", install, timeout=180)


@pytest.fixture(scope="session")
def namespace(installed: Kube) -> Iterator[str]:
    name = f"sluice-e2e-{uuid.uuid4().hex[:6]}"
    installed.ok("create", "namespace", name)
    try:
        yield name
    finally:
        installed.run("delete", "namespace", name, "--wait=false")
