"""`sluice serve`: config from ModelDeployment documents, and the real process lifecycle (SIGTERM leaves nothing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support import free_port, wait_for

from sluice.api import ModelDeployment
from sluice.cli.serve import load_deployments, serving_config

MODELS = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "models"

ONE = """
apiVersion: sluice.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud}
spec:
  model: {name: fraud, uri: "file:fraud-v1.onnx", version: v1}
  batching: {maxBatchSize: 8, maxWaitMs: 5}
"""
CANARY = """
---
apiVersion: sluice.dev/v1alpha1
kind: ModelDeployment
metadata: {name: fraud}
spec:
  model: {name: fraud, uri: "file:fraud-v2.onnx", version: v2}
  rollout:
    strategy: canary
    canary: {steps: [{weight: 20}, {weight: 50}]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    for f in ("fraud-v1.onnx", "fraud-v2.onnx"):
        shutil.copy(MODELS / f, tmp_path / f)
    path = tmp_path / "fraud.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_one_document_is_stable_at_100(tmp_path: Path) -> None:
    config = serving_config(load_deployments(_write(tmp_path, ONE)))
    assert [(v.name, v.version, v.weight) for v in config.variants] == [("stable", "v1", 100)]
    assert config.batching.max_batch_size == 8


def test_last_document_is_the_canary_at_its_first_step(tmp_path: Path) -> None:
    config = serving_config(load_deployments(_write(tmp_path, ONE + CANARY)))
    assert [(v.name, v.version, v.weight) for v in config.variants] == [("stable", "v1", 80), ("canary", "v2", 20)]


def test_shadow_strategy_mirrors_instead_of_splitting(tmp_path: Path) -> None:
    text = ONE + CANARY.replace("strategy: canary", "strategy: shadow\n    shadow: {mirrorPercent: 50}").replace(
        "    canary: {steps: [{weight: 20}, {weight: 50}]}\n", ""
    )
    config = serving_config(load_deployments(_write(tmp_path, text)))
    assert [v.weight for v in config.variants] == [100, 0]
    assert config.mirror is not None
    assert (config.mirror.variant, config.mirror.percent) == ("canary", 50)


def test_mixed_names_and_invalid_yaml_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="same ModelDeployment"):
        serving_config(
            [
                *load_deployments(_write(tmp_path, ONE)),
                ModelDeployment.model_validate(
                    {
                        "metadata": {"name": "other"},
                        "spec": {"model": {"name": "fraud", "uri": "file:x", "version": "2"}},
                    }
                ),
            ]
        )
    with pytest.raises(ValueError, match="invalid YAML"):
        load_deployments(_write(tmp_path, ONE.replace("version: v1", "version: '-bad-'")))


def test_cli_reports_bad_file_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sluice.cli.main", "serve", "-f", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr


def _psutil() -> Any:
    """psutil ships inside Ray (ray/thirdparty_files), which `import ray` puts on sys.path."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


@pytest.mark.ray
@pytest.mark.slow
def test_serve_on_ray_and_sigterm_leaves_no_process(tmp_path: Path) -> None:
    psutil = _psutil()
    path = _write(tmp_path, ONE + CANARY)
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli.main", "serve", "-f", str(path), "--backend", "ray", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    tree: list[Any] = []
    try:

        def up() -> bool:
            text = (tmp_path / "serve.log").read_text()
            assert proc.poll() is None, text[-3000:]
            return "Ctrl-C or SIGTERM" in text

        wait_for("sluice serve to come up", up, 240, 0.5)
        out = (tmp_path / "serve.log").read_text()
        assert f"http://127.0.0.1:{port}" in out
        assert "curl -s" in out
        body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/fraud/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        parent = psutil.Process(proc.pid)
        tree = [parent, *parent.children(recursive=True)]
        assert any("raylet" in " ".join(p.cmdline()) for p in tree[1:]), "expected Ray processes under sluice serve"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        _gone, alive = psutil.wait_procs(tree, timeout=30)
        # A zombie holds nothing but its exit status (orphans wait for PID 1 to reap them): it counts as gone.
        running = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert running == [], [(p.pid, p.name()) for p in running]
        assert "shutting down" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:  # a failed assertion above: still shut Ray down cleanly, SIGKILL only as a last resort
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for p in tree:
            if p.is_running():
                p.kill()
        log.close()


def test_serve_onnx_answers_tritonclient_http_and_grpc_with_their_defaults(tmp_path: Path) -> None:
    """`sluice serve --backend onnx`: the HTTP port and the gRPC port next to it (Triton's pair), both spoken to by
    the official clients with their defaults (binary tensors over HTTP, raw contents over gRPC); SIGTERM exits 0."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tests.support import free_port, wait_for

    path = _write(tmp_path, ONE)
    port = free_port()
    grpc_port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    cmd = [sys.executable, "-m", "sluice.cli.main", "serve", "-f", str(path), "--backend", "onnx",
           "--port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for("sluice serve to come up", lambda: "Ctrl-C" in (tmp_path / "serve.log").read_text() or proc.poll(), 60)
        out = (tmp_path / "serve.log").read_text()
        assert f"gRPC (KServe v2 GRPCInferenceService) at 127.0.0.1:{grpc_port}" in out, out
        x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
        answers = []
        for client_mod, url in ((httpclient, f"127.0.0.1:{port}"), (grpcclient, f"127.0.0.1:{grpc_port}")):
            with client_mod.InferenceServerClient(url) as client:
                assert client.is_model_ready("fraud")
                item = client_mod.InferInput("features", list(x.shape), "FP32")
                item.set_data_from_numpy(x)
                answers.append(client.infer("fraud", [item]).as_numpy("probabilities"))
        np.testing.assert_array_equal(answers[0], answers[1])
        assert answers[0].shape == (3, 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_serve_locks_the_admin_api_with_a_token_it_prints(tmp_path: Path) -> None:
    """`sluice serve` (onnx: the router in-process) writes a 0600 token file, prints its path, removes it at exit."""
    path = _write(tmp_path, ONE + CANARY)
    port = free_port()
    out_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_ADMIN")}
    args = ["serve", "-f", str(path), "--backend", "onnx", "--port", str(port), "--no-grpc"]
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli.main", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)},
        )
    try:

        def up() -> bool:
            text = out_path.read_text()
            assert proc.poll() is None, text[-3000:]
            return "Ctrl-C or SIGTERM" in text

        wait_for("sluice serve to come up", up, 60, 0.2)
        line = next(x for x in out_path.read_text().splitlines() if x.startswith("admin API token"))
        token_file = Path(line.rsplit(" ", 1)[1])
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in out_path.read_text()  # the path is printed, never the token
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/admin/config", timeout=10).status_code == 401
        r = httpx.get(f"{base}/admin/config", headers={"authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
        assert r.json()["override_enabled"] is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not token_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_bad_http_limit_is_a_clear_error(tmp_path: Path) -> None:
    args = ["serve", "-f", str(_write(tmp_path, ONE)), "--backend", "onnx", "--port", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "sluice.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SLUICE_HTTP_MAX_CONNECTIONS": "lots", "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "$SLUICE_HTTP_MAX_CONNECTIONS: 'lots' is not a number" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.admin-token"))
