"""The local tritonserver launcher: clear errors, the log on failure, nothing left running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sluice.serving.triton.repository import ModelVersion, RepositorySpec, TensorSignature, write_model
from sluice.serving.triton.server import TritonNotInstalledError, TritonServer, TritonServerError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_missing_wheel_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytriton", None)  # import now fails as if the wheel were absent
    with pytest.raises(TritonNotInstalledError, match=r"pip install 'sluice\[triton-local\]'"):
        TritonServer(tmp_path).start()


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match="not a directory"):
        TritonServer(tmp_path / "nope")


@pytest.mark.triton
@pytest.mark.timeout(120)
def test_failed_start_surfaces_the_log_and_leaves_nothing(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    spec = RepositorySpec(model_name="broken", versions=(ModelVersion("v1", "file:garbage.onnx"),))
    write_model(
        spec,
        tmp_path / "repo",
        {"v1": garbage},
        inputs=(TensorSignature("X", "TYPE_FP32", (4,)),),
        outputs=(TensorSignature("y", "TYPE_FP32", (1,)),),
    )
    server = TritonServer(tmp_path / "repo", startup_timeout_s=90)
    with pytest.raises(TritonServerError, match=r"exited with code \d+ while starting:(.|\n)*broken"):
        server.start()
    assert not server.running()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.triton
@pytest.mark.timeout(120)
def test_a_taken_port_is_retried_and_stop_leaves_no_process(
    triton: TritonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt gets the session server's (taken) ports, as if another process grabbed them in between;
    the retry must pick fresh ones, and stop() must take the server and its python stubs down."""
    import sluice.serving.triton.server as server_module

    session_ports = {triton.http_port, triton.grpc_port, triton.metrics_port}
    taken = iter(sorted(session_ports))
    real = server_module.free_port
    monkeypatch.setattr(server_module, "free_port", lambda: next(taken, None) or real())
    second = TritonServer(triton.model_repository, model_control_mode="explicit", load_models=("lr",))
    with second:
        pid = second.pid
        assert pid is not None
        assert second.running()
        assert {second.http_port, second.grpc_port, second.metrics_port}.isdisjoint(session_ports)
        stubs = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid and int(p) != pid]
        assert stubs, "the python backend stubs run in the server's process group"
    assert not _alive(pid)
    assert not [p for p in stubs if _alive(int(p))]
    second.stop()  # idempotent
    assert triton.running()  # the session server was not disturbed


@pytest.mark.triton
@pytest.mark.timeout(120)
def test_command_line_serves_until_sigterm(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    import signal
    import subprocess
    import urllib.request

    write_model(RepositorySpec(model_name="lr", versions=(ModelVersion("v1", "u"),)), tmp_path, onnx_models)
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice.serving.triton.server", "--repository", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "ready http=... grpc=... metrics=..."
        assert line.startswith("ready http="), (line, process.stderr.read() if process.poll() is not None else "")
        http = line.split()[1].removeprefix("http=")
        with urllib.request.urlopen(f"http://{http}/v2/models/lr/ready", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{http}/v2/health/live", timeout=2)
