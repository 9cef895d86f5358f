"""Helpers for the router tests: real ONNX models (skl2onnx), in-test Backends, HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnxruntime as ort
import uvicorn
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from sluice.serving.admin import AdminAuth
from sluice.serving.app import build_app
from sluice.serving.config import ServingConfig
from sluice.serving.errors import BackendUnavailable
from sluice.serving.httpserver import HttpServer, ServerLimits
from sluice.serving.router import Router
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

MODEL = "fraud"
# The admin credential of every test server (`serve`): admin endpoints need it (tests use ADMIN_HEADERS).
ADMIN = AdminAuth("test-admin-token")
ADMIN_HEADERS = {"authorization": "Bearer test-admin-token"}
_ORT_TO_V2 = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64"}


def train(flip: bool) -> bytes:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    if flip:
        y = 1 - y
    clf = LogisticRegression().fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    return bytes(onx.SerializeToString())


class OnnxBackend:
    """Minimal in-test VariantBackend over a real onnxruntime session (the real one: test_runtime.py)."""

    def __init__(self, model: bytes, version: str, *, delay_s: float = 0.0, batch_size: int | None = None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.version = version
        self.delay_s = delay_s
        self.batch_size = batch_size
        self.calls = 0
        self.closed = False

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        feeds = {t.name: t.data for t in request.inputs}
        names = [o.name for o in self.session.get_outputs()]
        results = self.session.run(names, feeds)
        params = {"batch_size": str(self.batch_size)} if self.batch_size else {}
        return InferResponse(
            MODEL,
            self.version,
            tuple(Tensor(n, np.asarray(r)) for n, r in zip(names, results, strict=True)),
            parameters=params,
        )

    async def ready(self) -> bool:
        return True

    async def metadata(self) -> ModelMetadata:
        def spec(a: ort.NodeArg) -> TensorSpec:
            return TensorSpec(a.name, _ORT_TO_V2[a.type], tuple(d if isinstance(d, int) else -1 for d in a.shape))

        return ModelMetadata(
            MODEL,
            self.version,
            "onnxruntime_onnx",
            tuple(spec(a) for a in self.session.get_inputs()),
            tuple(spec(a) for a in self.session.get_outputs()),
        )

    async def close(self) -> None:
        self.closed = True


class FailingBackend(OnnxBackend):
    """Answers metadata like the real model but every inference raises (a crashed model server)."""

    def __init__(self, model: bytes, version: str, exc: Exception | None = None) -> None:
        super().__init__(model, version)
        self.exc = exc or RuntimeError("model exploded")

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls += 1
        raise type(self.exc)(*self.exc.args)  # a fresh exception: re-raising one instance grows its traceback


class NotReadyBackend(OnnxBackend):
    async def ready(self) -> bool:
        return False

    async def infer(self, request: InferRequest) -> InferResponse:
        raise BackendUnavailable("model not loaded")


class EchoBytes:
    """A backend whose model echoes a BYTES input reversed element-wise (BYTES in, BYTES out)."""

    async def infer(self, request: InferRequest) -> InferResponse:
        data = request.inputs[0].data
        out = np.array([bytes(reversed(b)) for b in data.reshape(-1)], dtype=object).reshape(data.shape)
        return InferResponse("words", "v1", (Tensor("reversed", out),))

    async def ready(self) -> bool:
        return True

    async def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            "words", "v1", "test", (TensorSpec("text", "BYTES", (-1,)),), (TensorSpec("reversed", "BYTES", (-1,)),)
        )

    async def close(self) -> None:
        return None


def config(**kw: object) -> ServingConfig:
    """stable v1 / canary v2 config with overrides (the override header off, as by default: a test that sends it
    passes `override_enabled=True`)."""
    base: dict[str, object] = {
        "model_name": MODEL,
        "variants": [
            {"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 90},
            {"name": "canary", "version": "v2", "uri": "file://v2.onnx", "weight": 10},
        ],
    }
    base.update(kw)
    return ServingConfig.model_validate(base)


def free_socket() -> socket.socket:
    """A bound, not yet listening socket on a free port, handed to a server in this process (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


# Which HTTP server `serve` runs: the router's own (`HttpServer`, what the standalone router and `sluice serve` use)
# unless a test module asks for both through the `both_servers` fixture (uvicorn runs the plain ASGI app, as Ray
# Serve does inside the ingress replica).
SERVER = {"kind": "sluice"}


@contextmanager
def serve(router: Router, limits: ServerLimits | None = None) -> Iterator[str]:
    """Serve build_app(router) in a thread on 127.0.0.1:<free port>; always stopped (`limits`: HttpServer only)."""
    if SERVER["kind"] == "uvicorn":
        with _serve_uvicorn(router) as url:
            yield url
        return
    loop = asyncio.new_event_loop()
    server = HttpServer(build_app(router, admin=ADMIN), "127.0.0.1", 0, graceful_timeout_s=5, limits=limits)
    stop = asyncio.Event()
    started = threading.Event()

    def run() -> None:
        async def main() -> None:
            await server.start()
            started.set()
            try:
                await stop.wait()
            finally:
                await server.shutdown()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        if not started.wait(10):
            raise RuntimeError("test server did not start")
        yield f"http://127.0.0.1:{server.port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def _serve_uvicorn(router: Router) -> Iterator[str]:
    sock = free_socket()
    port = sock.getsockname()[1]
    app = build_app(router, admin=ADMIN)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def row(n: int = 1, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, 4)).round(4).tolist()


def v2_body(rows: list[list[float]], **extra: object) -> dict[str, object]:
    return {
        "inputs": [{"name": "X", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}],
        **extra,
    }
