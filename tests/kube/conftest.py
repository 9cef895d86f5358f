"""The emulator's own tests share one session-scoped emulator."""

from tests.kube.fixtures import kube_client, kube_emulator, kubeconfig  # noqa: F401
