"""`python -m sluice.serving.host_standalone` as its own process, in front of a v2 server through the http backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.serving.helpers import ADMIN, ADMIN_HEADERS, MODEL, OnnxBackend, config, row, serve, v2_body
from tests.support import answers, free_port, wait_for

from sluice.serving.router import Router

URL = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def model_server(model_bytes: bytes) -> Iterator[str]:
    """A plain v2 server (the Sluice app over one ONNX backend) standing in for tritonserver."""
    cfg = config(variants=[{"name": "stable", "version": "m1", "uri": "file://m.onnx", "weight": 100}])
    with serve(Router(cfg, {"stable": OnnxBackend(model_bytes, "m1")})) as base:
        yield base


def _write_config(tmp_path: Path, endpoint: str, canary_endpoint: str | None = None) -> Path:
    cfg = {
        "model_name": MODEL,
        "request_timeout_s": 2,
        "variants": [
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 50, "endpoint": endpoint},
            {
                "name": "canary",
                "version": "v2",
                "uri": "file://v2.onnx",
                "weight": 50,
                "endpoint": canary_endpoint or endpoint,
            },
        ],
    }
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(cfg))
    return path


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sluice.serving.host_standalone", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SLUICE_ADMIN_TOKEN": str(ADMIN.token), **(env or {})},
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _wait_ready(base: str, proc: subprocess.Popen[str]) -> None:
    def live() -> bool:
        assert proc.poll() is None, f"router exited early: {proc.stdout.read() if proc.stdout else ''}"
        return answers(f"{base}/v2/health/live")

    wait_for("the router to come up", live, 30)


def test_standalone_router_serves_updates_and_stops_on_sigterm(model_server: str, tmp_path: Path) -> None:
    port = free_port()
    proc = _start(
        ["--config", str(_write_config(tmp_path, model_server)), "--port", str(port), "--variant-backend", "http"]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/v2/health/ready").json() == {"ready": True}
            seen: Counter[str] = Counter()
            for i in range(20):
                r = client.post(URL, json=v2_body(row(2, seed=i)))
                assert r.status_code == 200, r.text
                assert r.json()["model_version"] == r.headers["x-sluice-model-version"]
                seen[r.headers["x-sluice-variant"]] += 1
            assert seen == Counter({"stable": 10, "canary": 10})
            assert [o["shape"] for o in r.json()["outputs"]] == [[2], [2, 2]]

            new = json.loads((tmp_path / "serving.json").read_text())
            new["variants"][0]["weight"], new["variants"][1]["weight"] = 0, 100
            t0 = time.monotonic()
            assert client.put("/admin/config", json=new).status_code == 401  # locked without the token
            assert client.put("/admin/config", json=new, headers=ADMIN_HEADERS).status_code == 200
            assert client.post(URL, json=v2_body(row())).headers["x-sluice-variant"] == "canary"
            assert time.monotonic() - t0 < 2  # new weights serve within 2 s of the control plane's PUT
            assert all(client.post(URL, json=v2_body(row())).headers["x-sluice-variant"] == "canary" for _ in range(10))
            assert 'variant="stable",version="v1"} 0.0' in client.get("/metrics").text

            # A new variant the backend factory cannot build is refused; the running config stays.
            arm = {"name": "arm", "version": "v3", "uri": "file://v3.onnx", "weight": 0}
            r = client.put("/admin/config", json={**new, "variants": [*new["variants"], arm]}, headers=ADMIN_HEADERS)
            assert r.status_code == 400
            assert "variant 'arm': the http backend needs 'endpoint'" in r.json()["error"]
            assert client.post(URL, json=v2_body(row())).status_code == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _stop(proc)


def test_unreachable_backend_is_503_not_a_crash(model_server: str, tmp_path: Path) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{free_port()}"
    proc = _start(["--config", str(_write_config(tmp_path, model_server, dead)), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/v2/health/ready").status_code == 503
            # The override header is off by default, but a caller holding the admin token may use it.
            r = client.post(URL, json=v2_body(row()), headers={"x-sluice-variant": "canary", **ADMIN_HEADERS})
            assert r.status_code == 503
            # The backend's address never reaches the client (nor would a model URI).
            assert r.json()["error"] == "backend <uri> unreachable: ConnectionRefusedError"
            assert dead.split("//")[1] not in r.text
            stable = {"x-sluice-variant": "stable", **ADMIN_HEADERS}
            assert client.post(URL, json=v2_body(row()), headers=stable).status_code == 200
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("kind", "argument --variant-backend: invalid choice: 'nope'"),
        ("missing", "cannot read config"),
        ("invalid", "is not a valid ServingConfig"),
        ("no-endpoint", "the http backend needs 'endpoint'"),
    ],
)
def test_bad_startup_exits_2_naming_the_problem(tmp_path: Path, setup: str, message: str) -> None:
    path = _write_config(tmp_path, "http://127.0.0.1:9")
    backend = "nope" if setup == "kind" else "http"
    if setup == "missing":
        path = tmp_path / "absent.json"
    elif setup == "invalid":
        path.write_text(json.dumps({"model_name": MODEL, "variants": []}))
    elif setup == "no-endpoint":
        raw = json.loads(path.read_text())
        del raw["variants"][0]["endpoint"]
        path.write_text(json.dumps(raw))
    proc = _start(["--config", str(path), "--port", str(free_port()), "--variant-backend", backend])
    try:
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert message in out
    finally:
        _stop(proc)


def test_a_rotated_mounted_token_is_used_without_a_restart(model_server: str, tmp_path: Path) -> None:
    """As in a Triton router pod: no Secret at start (a generated token), then the operator's, then a rotation."""
    mounted = tmp_path / "admin" / "token"
    mounted.parent.mkdir()
    port = free_port()
    proc = _start(
        ["--config", str(_write_config(tmp_path, model_server)), "--port", str(port), "--variant-backend", "http"],
        env={"SLUICE_ADMIN_TOKEN": "", "SLUICE_ADMIN_TOKEN_FILE": str(mounted), "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    base = f"http://127.0.0.1:{port}"

    def swap(text: str) -> None:  # as kubelet does: a new file renamed over the old one
        new = mounted.with_name("token.new")
        new.write_text(text)
        new.replace(mounted)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    try:
        _wait_ready(base, proc)
        [generated] = tmp_path.glob("sluice-router-*.admin-token")
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/admin/config", headers=bearer(generated.read_text().strip())).status_code == 200
            swap("first-token\n")  # the operator's Secret appears
            assert client.get("/admin/config", headers=bearer("first-token")).status_code == 200
            assert not generated.exists(), "the generated token is dropped once the Secret's is there"
            swap("second-token\n")  # rotated
            assert client.get("/admin/config", headers=bearer("first-token")).status_code == 401
            assert client.get("/admin/config", headers=bearer("second-token")).status_code == 200
    finally:
        _stop(proc)
