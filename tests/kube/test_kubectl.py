"""kubectl 1.32 against the emulator through a kubeconfig the fixture writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from tests.support import wait_for
from tests.support.emulator import EmulatorThread

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="the kubectl client is not installed")

MANIFEST = """\
apiVersion: test.sluice.dev/v1
kind: Widget
metadata:
  name: {name}
  labels: {{app: kubectl-test}}
spec:
  model: {model}
"""


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_get_namespaces(kubeconfig: Path) -> None:
    names = kubectl(kubeconfig, "get", "namespaces", "-o", "name").stdout.split()
    assert "namespace/default" in names
    table = kubectl(kubeconfig, "get", "namespaces").stdout.splitlines()
    assert table[0].split() == ["NAME", "AGE"]
    assert any(line.split()[0] == "default" for line in table[1:])


def test_apply_get_and_delete_a_custom_resource(kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "w.yaml"
    manifest.write_text(MANIFEST.format(name="kc1", model="v1"))
    assert "created" in kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout
    manifest.write_text(MANIFEST.format(name="kc1", model="v2"))
    assert "configured" in kubectl(kubeconfig, "apply", "-f", str(manifest)).stdout
    obj = json.loads(kubectl(kubeconfig, "get", "wd", "kc1", "-o", "json").stdout)
    assert obj["spec"]["model"] == "v2"
    assert obj["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    listed = kubectl(kubeconfig, "get", "widgets", "-l", "app=kubectl-test").stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE"]  # server-side printing with the CRD's printer columns
    assert listed[1].split() == ["kc1", "<none>"]
    assert "widget.test.sluice.dev" in kubectl(kubeconfig, "delete", "-f", str(manifest)).stdout
    gone = kubectl(kubeconfig, "get", "wd", "kc1", check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_server_side_apply(kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "w.yaml"
    manifest.write_text(MANIFEST.format(name="kc2", model="v1"))
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest))
    manifest.write_text(MANIFEST.format(name="kc2", model="v3"))
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest))
    assert kubectl(kubeconfig, "get", "wd", "kc2", "-o", "jsonpath={.spec.model}").stdout == "v3"


def test_apply_of_an_invalid_object_names_the_field(kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        MANIFEST.format(name="kc3", model="m") + "  rollout: {canary: {steps: [{weight: 5}, {weight: 101}]}}\n"
    )
    result = kubectl(kubeconfig, "apply", "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert "spec.rollout.canary.steps[1].weight" in result.stderr


def test_explain_uses_the_crd_schema(kubeconfig: Path) -> None:
    out = kubectl(kubeconfig, "explain", "widget.spec").stdout
    assert "KIND:       Widget" in out or "KIND: Widget" in out
    assert "model\t<string> -required-" in out
    assert "maxReplicas" in out


def test_strict_field_validation_refuses_unknown_fields(kubeconfig: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(MANIFEST.format(name="kc4", model="m") + "  modle: typo\n")
    result = kubectl(kubeconfig, "apply", "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.modle"' in result.stderr
    relaxed = kubectl(kubeconfig, "apply", "--validate=false", "-f", str(manifest))
    assert "created" in relaxed.stdout  # without Strict the field is pruned, as a real server does
    assert (
        kubectl(kubeconfig, "get", "wd", "kc4", "-o", "jsonpath={.spec}").stdout
        == '{"maxReplicas":3,"minReplicas":1,"model":"m"}'
    )


def test_get_watch_prints_rows_as_objects_change(kubeconfig: Path, kube_emulator: EmulatorThread) -> None:
    import httpx

    def watches() -> int:
        return int(kube_emulator.call(lambda: kube_emulator.emulator.watching("widgets", "test.sluice.dev", "kubectl")))

    before = watches()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    command = ["kubectl", "get", "wd", "-n", "default", "-w", "-l", "app=watched"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    stdout = process.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for("kubectl's watch to open", lambda: watches() > before, 20, 0.02)
        body = {"metadata": {"name": "kw1", "labels": {"app": "watched"}}, "spec": {"model": "m"}}
        url = f"{kube_emulator.url}/apis/test.sluice.dev/v1/namespaces/default/widgets"
        assert httpx.post(url, json=body).status_code == 201
        httpx.patch(
            f"{url}/kw1/status",
            json={"status": {"phase": "Ready"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        wait_for("the Ready row", lambda: any(line.split() == ["kw1", "Ready"] for line in lines), 10)
    finally:
        process.terminate()
        process.wait(timeout=20)
        reader.join(timeout=10)
        err = process.stderr.read() if process.stderr else ""
    out = "".join(lines)
    rows = [line.split() for line in out.splitlines()]
    assert ["NAME", "PHASE"] in rows, (out, err)
    assert ["kw1", "<none>"] in rows
    assert ["kw1", "Ready"] in rows
