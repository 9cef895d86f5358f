"""A real Kopf operator (subprocess, `kopf run`) against the emulator: each handler runs exactly once."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.kube.helpers import WIDGETS, widget
from tests.support import wait_for
from tests.support.emulator import EmulatorThread

OPERATOR = Path(__file__).with_name("kopf_widget_operator.py")


def test_kopf_operator_handles_lifecycle_once(kube_emulator: EmulatorThread, kubeconfig: Path, tmp_path: Path) -> None:
    http = httpx.Client(base_url=kube_emulator.url, timeout=10)
    ns = "kopf-lifecycle"
    assert http.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
    log = tmp_path / "widget.log"
    log.touch()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "WIDGET_LOG": str(log)}
    # A namespace pattern makes Kopf list and watch /api/v1/namespaces, as a namespaced install does.
    command = [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", "kopf-*", str(OPERATOR)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = WIDGETS.format(ns=ns)

    def lines() -> collections.Counter[str]:
        return collections.Counter(log.read_text().splitlines())

    try:
        assert http.post(url, json=widget("w")).status_code == 201
        wait_for("the create handler", lambda: lines()["create w"] == 1)
        wait_for("the daemon and the timer", lambda: lines()["daemon-start w"] == 1 and lines()["timer w"] >= 2)
        obj = http.get(f"{url}/w").json()
        assert "test.sluice.dev/kopf-finalizer" in obj["metadata"]["finalizers"]
        wait_for("status", lambda: http.get(f"{url}/w").json().get("status", {}).get("created") == {"seen": "yes"})
        patch = {"spec": {"model": "v2"}}
        http.patch(f"{url}/w", json=patch, headers={"Content-Type": "application/merge-patch+json"})
        wait_for("the update handler", lambda: lines()["update:v2 w"] == 1)
        assert http.delete(f"{url}/w").status_code == 200
        wait_for("the finalizer to be released", lambda: http.get(f"{url}/w").status_code == 404)
        time.sleep(1.5)  # long enough for any retry or repeat to show up
        seen = lines()
        for line in ("create w", "update:v2 w", "delete w", "daemon-start w", "daemon-stop w"):
            assert seen[line] == 1, (line, seen)
        ticks = seen["timer w"]
        time.sleep(0.8)
        assert lines()["timer w"] == ticks  # the timer stopped with its object
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        print(output)  # shown by pytest when the test fails
        http.delete(f"/api/v1/namespaces/{ns}")
        http.close()
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    assert "will be retried" not in output.lower(), output
