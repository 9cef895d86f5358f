"""The real router process following its ConfigMap through the (emulated) Kubernetes API: weights arrive within 2 s,
garbage never replaces a good config, closed watches resume and an expired resourceVersion re-lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.serving.helpers import ADMIN, ADMIN_HEADERS
from tests.support import answers, free_port, wait_for
from tests.support.emulator import WATCH_HISTORY, EmulatorThread
from tests.support.kube import start_emulator

from sluice.serving.configsource import ConfigError, KubeApi, parse_config, parse_target

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"
NAMESPACE = "default"
ROWS = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}


def _config(canary_weight: int) -> dict[str, Any]:
    v1, v2 = (MODELS / "fraud-v1.onnx").as_uri(), (MODELS / "fraud-v2.onnx").as_uri()
    return {
        "model_name": "fraud",
        "request_timeout_s": 5,
        "variants": [
            {"name": "stable", "version": "v1", "uri": v1, "weight": 100 - canary_weight},
            {"name": "canary", "version": "v2", "uri": v2, "weight": canary_weight},
        ],
    }


class Router:
    """One `python -m sluice.serving.host_standalone --watch-configmap` process and its ConfigMap."""

    def __init__(self, api: str, name: str, proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.api, self.name, self.proc, self.base, self.log = api, name, proc, base, log
        self.http = httpx.Client(base_url=base, timeout=10, headers=ADMIN_HEADERS)

    @property
    def cm_url(self) -> str:
        return f"{self.api}/api/v1/namespaces/{NAMESPACE}/configmaps/{self.name}"

    def write(self, text: str | None) -> None:
        r = httpx.patch(
            self.cm_url,
            content=json.dumps({"data": {"config.json": text}}),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text

    def weights(self) -> dict[str, int]:
        return {v["name"]: v["weight"] for v in self.http.get("/admin/config").json()["variants"]}

    def wait_weights(self, expected: dict[str, int], limit_s: float) -> float:
        """Seconds until GET /admin/config shows `expected`; fails after `limit_s`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            if self.weights() == expected:
                return time.monotonic() - t0
            time.sleep(0.005)
        raise AssertionError(f"router still serves {self.weights()} after {limit_s} s, wanted {expected}")

    def infer(self) -> httpx.Response:
        return self.http.post("/v2/models/fraud/infer", json=ROWS)


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Any]:
    routers: list[Router] = []

    def start(api: str, *, watch_timeout_s: float = 300) -> Router:
        name = f"router-{uuid.uuid4().hex[:8]}"
        text = json.dumps(_config(0))
        body = {"metadata": {"name": name}, "data": {"config.json": text}}
        r = httpx.post(f"{api}/api/v1/namespaces/{NAMESPACE}/configmaps", json=body)
        assert r.status_code == 201, r.text
        path = tmp_path / f"{name}.json"
        path.write_text(text)  # the mounted start-up copy
        port = free_port()
        log = tmp_path / f"{name}.log"
        args = ["--config", str(path), "--variant-backend", "onnx", "--port", str(port), "--kube-api", api]
        args += ["--watch-configmap", f"{NAMESPACE}/{name}", "--watch-timeout", str(watch_timeout_s)]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sluice.serving.host_standalone", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SLUICE_ADMIN_TOKEN": str(ADMIN.token)},
            )
        router = Router(api, name, proc, f"http://127.0.0.1:{port}", log)
        routers.append(router)

        def ready() -> bool:
            assert proc.poll() is None, f"router exited: {log.read_text()}"
            return answers(f"{router.base}/v2/health/ready")

        wait_for("the router to be ready", ready, 30)
        return router

    try:
        yield start
    finally:
        for router in routers:
            router.http.close()
            if router.proc.poll() is None:
                router.proc.terminate()
                try:
                    router.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    router.proc.kill()
                    router.proc.wait(timeout=10)


def test_weights_reach_the_router_within_2s_and_garbage_keeps_the_last_good_config(
    kube_emulator: EmulatorThread,
    start_router: Any,
) -> None:
    # Watches end after 1 s, as a real API server ends them after timeoutSeconds: the source must resume each time.
    router = start_router(kube_emulator.url, watch_timeout_s=1)
    assert router.weights() == {"stable": 100, "canary": 0}
    latencies = []
    for weight in (30, 100, 0, 30):
        router.write(json.dumps(_config(weight)))
        latencies.append(router.wait_weights({"stable": 100 - weight, "canary": weight}, limit_s=2.0))
    print(f"\nConfigMap patch -> router serves the weights: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert max(latencies) < 2.0

    router.write(json.dumps(_config(100)))
    router.wait_weights({"stable": 0, "canary": 100}, limit_s=2.0)
    replies = [router.infer() for _ in range(10)]
    assert {r.status_code for r in replies} == {200}
    assert {r.headers["x-sluice-variant"] for r in replies} == {"canary"}

    # Garbage (not JSON; JSON that is no valid ServingConfig; the key removed) never replaces the good config.
    bad_weights = _config(50)
    bad_weights["variants"][0]["weight"] = 10
    for refused, garbage in enumerate(("{not json", json.dumps(bad_weights), None), start=1):
        router.write(garbage)
        wait_for(
            "the router to refuse it", lambda n=refused: router.log.read_text().count("keeping the running config") == n
        )
        assert router.weights() == {"stable": 0, "canary": 100}
        assert all(router.infer().status_code == 200 for _ in range(5))
    log = router.log.read_text()
    assert log.count("keeping the running config") == 3
    assert "not a valid ServingConfig" in log
    assert "weights must sum to 100" in log
    assert "{not json" not in log
    assert '"variants"' not in log

    # Past several closed watches, the source still follows the ConfigMap.
    def watches() -> int:
        audit = kube_emulator.call(kube_emulator.emulator.audited)
        return sum(1 for e in audit if e.verb == "watch" and e.resource == "configmaps" and e.namespace == NAMESPACE)

    opened = watches()
    wait_for("two more watches (each ends after 1 s)", lambda: watches() >= opened + 2, 10)
    router.write(json.dumps(_config(50)))
    assert router.wait_weights({"stable": 50, "canary": 50}, limit_s=2.0) < 2.0
    assert router.proc.poll() is None


def test_an_expired_resource_version_re_lists_and_continues(start_router: Any) -> None:
    """410 Gone: the history the watch would resume from was compacted (other ConfigMaps changed meanwhile)."""
    emulator = start_emulator(cel_rules=False)
    try:
        router = start_router(emulator.url, watch_timeout_s=1)
        em = emulator.emulator
        rt = next(t for t in em.resource_types if t.group == "" and t.plural == "configmaps")

        def flood() -> None:  # other ConfigMaps' events push the router's resourceVersion out of the history
            for i in range(WATCH_HISTORY + 10):
                em._create(rt, NAMESPACE, {"metadata": {"name": f"flood-{i}"}, "data": {"i": str(i)}})

        emulator.call(flood)
        wait_for("a re-list after 410", lambda: "listing again" in router.log.read_text(), 10)
        router.write(json.dumps(_config(25)))
        assert router.wait_weights({"stable": 75, "canary": 25}, limit_s=2.0) < 2.0
        assert router.infer().status_code == 200
    finally:
        emulator.stop()


def test_parse_config_names_the_problem_without_the_payload() -> None:
    with pytest.raises(ConfigError, match=r"no key 'config\.json'"):
        parse_config({"other": "{}"})
    with pytest.raises(ConfigError, match="not JSON") as err:
        parse_config({"config.json": '{"secret-ish": '})
    assert "secret-ish" not in str(err.value)
    bad = _config(10)
    bad["variants"][0]["weight"] = 5
    with pytest.raises(ConfigError, match="weights must sum to 100") as err:
        parse_config({"config.json": json.dumps(bad)})
    assert "fraud-v1" not in str(err.value)
    assert parse_config({"config.json": json.dumps(_config(10))}).variant("canary").weight == 10


def test_in_cluster_api_and_target_parsing(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0\n")
    api = KubeApi.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}, tmp_path)
    assert api.base_url == "https://10.0.0.1:6443"
    assert api.headers() == {"Authorization": "Bearer t0"}
    (tmp_path / "token").write_text("t1\n")  # kubelet rotated the token: the next request uses the new one
    assert api.headers() == {"Authorization": "Bearer t1"}
    assert KubeApi.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path).base_url == "https://[fd00::1]:443"
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST"):
        KubeApi.in_cluster({}, tmp_path)
    assert parse_target("ns/cm") == ("ns", "cm")
    for bad in ("cm", "/cm", "ns/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_target(bad)
