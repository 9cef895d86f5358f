"""Operator tests run against the shared API emulator (tests/kube)."""

from tests.kube.fixtures import kube_client, kube_emulator, kubeconfig  # noqa: F401
from tests.operator.harness import cluster, operator, simulator, warm_emulator  # noqa: F401
