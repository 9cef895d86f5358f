"""Start and stop the real tritonserver that ships in the nvidia-pytriton wheel (the `triton-local` extra).

That build has only the python backend, so models are served through the python flavour of
`sluice.serving.triton.repository`. What it needs to run at all (measured with nvidia-pytriton 0.7):

* a backend directory holding ``python/{libtriton_python.so, triton_python_backend_utils.py,
  triton_python_backend_stub}`` — the stub matching the running interpreter's Python version;
* ``LD_LIBRARY_PATH`` = the wheel's ``nvidia_pytriton.libs`` + this interpreter's libdir, else the stub loads the
  system libpython and fails or hangs;
* the stub's Python must find onnxruntime: it ignores ``PYTHONPATH``, so this interpreter's ``sys.path`` goes into
  ``SLUICE_TRITON_PYTHONPATH``, which the generated ``model.py`` prepends to its own.

The server runs in its own process group; `stop` sends SIGTERM, then SIGKILLs the group, so no stub outlives it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sluice.serving.ports import free_port

# Read by the generated model.py: the stub's embedded interpreter ignores PYTHONPATH.
PYTHONPATH_VAR = "SLUICE_TRITON_PYTHONPATH"
_PORT_IN_USE = ("already in use", "failed to bind", "address in use")  # another process took a port


class TritonServerError(RuntimeError):
    """The local tritonserver could not be started (the message carries the tail of its log)."""


class TritonNotInstalledError(TritonServerError):
    """The nvidia-pytriton wheel (which carries the tritonserver binary) is not installed."""


@dataclass(frozen=True, slots=True)
class TritonInstall:
    """Where the wheel keeps the binary, the python backend, its stubs and its bundled shared libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonInstall:
        try:
            import pytriton
        except ImportError as exc:
            raise TritonNotInstalledError(
                "the local tritonserver comes from the nvidia-pytriton wheel, which is not installed: "
                "pip install 'sluice[triton-local]'"
            ) from exc
        root = Path(pytriton.__file__).parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (install.binary, install.python_backend, install.stub, install.libs):
            if not path.exists():
                raise TritonNotInstalledError(f"the nvidia-pytriton wheel is incomplete: {path} is missing")
        return install


class TritonServer:
    """A tritonserver process on 127.0.0.1 serving one model repository; use as a context manager.

    ``model_control_mode="explicit"`` with ``load_models`` starts only those models, so a model that fails to load
    later (through the repository API) does not take the server down; ``"none"`` loads everything and, with
    ``exit_on_error``, refuses to start when any model fails.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        startup_timeout_s: float = 60.0,
        model_control_mode: str = "none",
        load_models: tuple[str, ...] = (),
        exit_on_error: bool = True,
        log_verbose: int = 0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(f"model_control_mode must be none, explicit or poll, got {model_control_mode!r}")
        if not Path(model_repository).is_dir():
            raise TritonServerError(f"model repository {model_repository} is not a directory")
        self.model_repository = Path(model_repository)
        self.startup_timeout_s = startup_timeout_s
        self.model_control_mode = model_control_mode
        self.load_models = load_models
        self.exit_on_error = exit_on_error
        self.log_verbose = log_verbose
        self.extra_args = extra_args
        self.http_port = self.grpc_port = self.metrics_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None

    # -- addresses ------------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """Everything the server has written so far (stdout and stderr)."""
        if self._workdir is None or not (self._workdir / "tritonserver.log").exists():
            return ""
        return (self._workdir / "tritonserver.log").read_text(errors="replace")

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> TritonServer:
        """Start and wait until ``/v2/health/ready``; retries with fresh ports if one was taken meanwhile."""
        if self._process is not None:
            raise TritonServerError("this TritonServer is already started")
        install = TritonInstall.find()
        for attempt in range(attempts):
            self._launch(install)
            try:
                self._wait_ready()
                return self
            except TritonServerError as exc:
                log = self.log().lower()
                self.stop()
                if attempt + 1 < attempts and any(s in log for s in _PORT_IN_USE):
                    continue
                raise exc
        raise AssertionError("unreachable")

    def _launch(self, install: TritonInstall) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="sluice-triton-"))
        backend = self._workdir / "backends" / "python"
        backend.mkdir(parents=True)
        for source in (*install.python_backend.iterdir(), install.stub):
            if source.is_file():
                shutil.copy2(source, backend / source.name)
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.grpc_port, self.metrics_port = sorted(ports)
        args = [
            str(install.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={self._workdir / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            f"--exit-on-error={'true' if self.exit_on_error else 'false'}",
            f"--model-control-mode={self.model_control_mode}",
            f"--log-verbose={self.log_verbose}",
            *(f"--load-model={name}" for name in self.load_models),
            *self.extra_args,
        ]
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.libs), libdir) if p)
        env[PYTHONPATH_VAR] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
        with (self._workdir / "tritonserver.log").open("wb") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._workdir,
                start_new_session=True,  # own process group: stop() can take the python stubs down with it
            )
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {self._process.returncode} while starting:\n{self._tail()}"
                )
            # Only trust /v2/health/ready once *this* process says it listens on all three ports: a port taken
            # by another server in between would otherwise answer for us until our process fails to bind.
            if self._listening():
                try:
                    with urllib.request.urlopen(url, timeout=1.0) as response:
                        if response.status == 200:
                            return
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
            time.sleep(0.1)
        raise TritonServerError(f"tritonserver not ready after {self.startup_timeout_s} s:\n{self._tail()}")

    def _listening(self) -> bool:
        log = self.log()
        return all(
            f'Started {service} at 127.0.0.1:{port}"' in log  # the quote ends the port number
            for service, port in (
                ("GRPCInferenceService", self.grpc_port),
                ("HTTPService", self.http_port),
                ("Metrics Service", self.metrics_port),
            )
        )

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group; removes the work dir. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=timeout_s)
            # The stubs share the group; anything left (a kill fallback, a stuck stub) goes now.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the server and its stubs without cleanup (to test how clients see a server dying)."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m sluice.serving.triton.server --repository DIR``: serve a python-flavour repository until stopped."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sluice.serving.triton.server", description=main.__doc__)
    parser.add_argument("--repository", required=True, type=Path, help="model repository directory")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = TritonServer(args.repository, startup_timeout_s=args.startup_timeout).start()
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"ready http={server.http_url} grpc={server.grpc_url} metrics={server.metrics_url}", flush=True)
        while not stop and server.running():
            time.sleep(0.2)
        if not stop:
            print(f"error: tritonserver exited:\n{server._tail()}", file=sys.stderr)
            return 1
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
