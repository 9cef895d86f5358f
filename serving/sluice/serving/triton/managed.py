"""A local tritonserver serving every version of a `ServingConfig`, for `sluice serve/run --backend triton`.

All versions live in one Triton model (``<model>/<n>/``, python flavour), so one server process serves stable and
canary alike and the router reaches both through `TritonBackend` at the same gRPC address. Version numbers stay
fixed for the life of the server (a new label gets the next free number), so a config update that reorders
variants never makes a label point at another model file. Updates rewrite ``config.pbtxt`` with the current labels
as the version policy and ask Triton to reload the model (explicit model control): new versions load, dropped
ones unload, and a version that fails to load is reported with Triton's reason.

    triton = ManagedTriton(base_dir=yaml_dir)
    config = triton.start(config)        # variants now carry endpoint = the server's gRPC address
    ...
    config = triton.update(new_config)   # e.g. a canary version appears
    triton.stop()
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from sluice.serving.config import ServingConfig
from sluice.serving.triton.prepare import FetchError, fetch_into
from sluice.serving.triton.repository import (
    MODEL_FILE,
    Flavour,
    ModelVersion,
    RepositoryError,
    RepositorySpec,
    write_model,
)
from sluice.serving.triton.server import TritonServer, TritonServerError


class ManagedTriton:
    """Owns a model repository in a work dir and the tritonserver serving it; `stop` removes both.

    Every failure (fetch, checksum, config, server start, model load) is a `TritonServerError` naming the cause.
    """

    def __init__(
        self, *, base_dir: Path | None = None, workdir: Path | None = None, startup_timeout_s: float = 60
    ) -> None:
        self.base_dir = base_dir
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="sluice-triton-repo-")) if workdir is None else workdir
        self.repository = self.workdir / "repository"
        self.startup_timeout_s = startup_timeout_s
        self.server: TritonServer | None = None
        self.model_name: str | None = None
        self.numbers: dict[str, int] = {}  # Sluice label -> Triton version number, never reused

    @property
    def endpoint(self) -> str:
        if self.server is None:
            raise TritonServerError("the local tritonserver is not started")
        return self.server.grpc_url

    def start(self, config: ServingConfig) -> ServingConfig:
        """Write the repository, start the server; returns the config with every variant's endpoint set."""
        if self.server is not None:
            raise TritonServerError("the local tritonserver is already started")
        self.model_name = config.model_name
        try:
            self._write(config)
            self.server = TritonServer(
                self.repository,
                model_control_mode="explicit",
                load_models=(config.model_name,),
                startup_timeout_s=self.startup_timeout_s,
            ).start()
        except BaseException:
            self.stop()
            raise
        return self.with_endpoints(config)

    def update(self, config: ServingConfig) -> ServingConfig:
        """Serve the versions of ``config`` (load new ones, unload dropped ones); returns it with endpoints."""
        if self.server is None:
            raise TritonServerError("the local tritonserver is not started")
        if config.model_name != self.model_name:
            raise ValueError(f"this tritonserver serves {self.model_name!r}, not {config.model_name!r}")
        self._write(config)
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            with grpcclient.InferenceServerClient(self.server.grpc_url) as client:
                client.load_model(config.model_name)
        except InferenceServerException as exc:
            raise TritonServerError(f"tritonserver could not load the new versions: {exc.message()}") from exc
        return self.with_endpoints(config)

    def with_endpoints(self, config: ServingConfig) -> ServingConfig:
        variants = tuple(v.model_copy(update={"endpoint": self.endpoint}) for v in config.variants)
        return config.model_copy(update={"variants": variants})

    def stop(self) -> None:
        """Stop the server and remove the work dir it created; idempotent."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _write(self, config: ServingConfig) -> None:
        try:
            self._write_repository(config)
        except (FetchError, RepositoryError) as exc:
            raise TritonServerError(f"cannot prepare the model repository: {exc}") from exc

    def _write_repository(self, config: ServingConfig) -> None:
        base = RepositorySpec.from_serving_config(config, Flavour.PYTHON)
        versions = []
        files: dict[str, Path] = {}
        for version in base.versions:
            if version.label not in self.numbers:
                self.numbers[version.label] = max(self.numbers.values(), default=0) + 1
            number = self.numbers[version.label]
            target = self.repository / config.model_name / str(number) / MODEL_FILE
            if not target.exists():
                fetch_into(version.uri, target, sha256=version.sha256, base_dir=self.base_dir)
            files[version.label] = target
            versions.append(ModelVersion(version.label, version.uri, version.sha256, number))
        write_model(dataclasses.replace(base, versions=tuple(versions)), self.repository, files)
