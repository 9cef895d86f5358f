"""pytest fixtures around the API emulator, registered once for every test area by tests/conftest.py.

`kube_emulator` is session-scoped (one server for the whole run, always stopped), with the Sluice CRDs from
`crds/*.yaml`, KubeRay's RayService CRD (vendored in tests/schemas) and the emulator tests' CRDs (tests/kube/crds).
Tests that need a private emulator (write counts, hooks) call `start_emulator()` and stop it themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.emulator import EmulatorThread, SluiceKubeEmulator, load_crd_files

REPO_ROOT = Path(__file__).resolve().parents[2]
SLUICE_CRDS = REPO_ROOT / "crds"
RAY_CRD = REPO_ROOT / "tests" / "schemas" / "ray.io_rayservices.yaml"  # KubeRay's CRD, vendored
TEST_CRDS = REPO_ROOT / "tests" / "kube" / "crds"


def crd_files() -> list[Path]:
    return [*sorted(SLUICE_CRDS.glob("*.yaml")), *sorted(TEST_CRDS.glob("*.yaml")), RAY_CRD]


def start_emulator(*, cel_rules: bool = True) -> EmulatorThread:
    """A running emulator with every known CRD served; the caller stops it."""
    emulator = SluiceKubeEmulator(cel_rules=cel_rules)
    for crd in load_crd_files(crd_files()):
        emulator.register_crd(crd)
    thread = EmulatorThread(emulator)
    thread.start()
    return thread


@pytest.fixture(scope="session")
def kube_emulator() -> Iterator[EmulatorThread]:
    thread = start_emulator()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def kubeconfig(kube_emulator: EmulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kube_emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture(scope="session")
def kube_http(kube_emulator: EmulatorThread) -> Iterator[httpx.Client]:
    """A plain HTTP client for the emulator (what `curl` to an API server would do)."""
    with httpx.Client(base_url=kube_emulator.url, timeout=30) as session:
        yield session


@pytest.fixture(scope="session")
def kube_client(kubeconfig: Path) -> Iterator[object]:
    """An official `kubernetes.client.ApiClient` bound to the emulator (not the process-wide default)."""
    from kubernetes import config as _config

    config: Any = _config  # untyped
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()
