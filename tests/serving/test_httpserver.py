"""The router's own HTTP/1.1 server, spoken to over raw sockets: framing, keep-alive, limits, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tests.serving.helpers import OnnxBackend, row, serve, v2_body
from tests.support import wait_for

from sluice.serving.app import build_app
from sluice.serving.config import ServingConfig
from sluice.serving.httpserver import HttpServer, ServerLimits
from sluice.serving.router import Router
from sluice.serving.tensors import InferRequest, InferResponse, Tensor


def one_variant(**kw: object) -> ServingConfig:
    base: dict[str, object] = {
        "model_name": "fraud",
        "variants": [{"name": "stable", "version": "v1", "uri": "file://v1.onnx", "weight": 100}],
    }
    base.update(kw)
    return ServingConfig.model_validate(base)


@pytest.fixture
def url(model_bytes: bytes) -> Iterator[str]:
    router = Router(one_variant(max_request_bytes=4096), {"stable": OnnxBackend(model_bytes, "v1")})
    with serve(router) as base:
        yield base


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from `sock` (Content-Length framing); leftover bytes stay in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def infer_request(body: bytes, *, extra: str = "") -> bytes:
    return (
        f"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_many_requests_on_one_keep_alive_connection_including_pipelined_ones(url: str) -> None:
    body = json.dumps(v2_body(row(1))).encode()
    with connect(url) as sock:
        buffer = bytearray()
        for _ in range(50):
            sock.sendall(infer_request(body))
            status, headers, payload = read_response(sock, buffer)
            assert status == 200
            assert headers["x-sluice-model-version"] == "v1"
            assert json.loads(payload)["model_version"] == "v1"
        sock.sendall(infer_request(body) * 5)  # pipelined: answered in order, none lost
        answers = [read_response(sock, buffer) for _ in range(5)]
        assert [a[0] for a in answers] == [200] * 5
        assert not buffer


def test_declared_oversize_body_is_refused_at_once_with_413_and_the_connection_closed(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(
            b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )  # no body sent: the answer must not wait for it
        status, _, payload = read_response(sock, bytearray())
        assert status == 413
        assert "100000 bytes exceeds the limit of 4096" in json.loads(payload)["error"]
        assert closed_by_peer(sock)


def test_chunked_body_over_the_limit_is_413_and_under_it_is_served(url: str) -> None:
    def chunked(data: bytes) -> bytes:
        head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)

    with connect(url) as sock:
        buffer = bytearray()
        sock.sendall(chunked(json.dumps(v2_body(row(2))).encode()))
        status, _, payload = read_response(sock, buffer)
        assert status == 200
        assert len(json.loads(payload)["outputs"][0]["data"]) == 2
        sock.sendall(chunked(b" " * 5000))
        status, _, payload = read_response(sock, buffer)
        assert status == 413
        assert "exceeds the limit of 4096" in json.loads(payload)["error"]


def test_expect_continue_gets_100_before_the_body(url: str) -> None:
    body = json.dumps(v2_body(row(1))).encode()
    with connect(url) as sock:
        head, _, _ = infer_request(body, extra="Expect: 100-continue\r\n").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        status, _, _ = read_response(sock, bytearray())
        assert status == 200


def test_malformed_http_is_a_json_400_and_closes(url: str) -> None:
    with connect(url) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, payload = read_response(sock, bytearray())
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert "malformed HTTP request" in json.loads(payload)["error"]
        assert closed_by_peer(sock)


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(url: str) -> None:
    for request in (
        b"GET /v2/health/live HTTP/1.0\r\n\r\n",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        with connect(url) as sock:
            sock.sendall(request)
            status, headers, payload = read_response(sock, bytearray())
            assert status == 200
            assert json.loads(payload) == {"live": True}
            assert headers["connection"] == "close"
            assert closed_by_peer(sock)


def test_non_infer_paths_go_through_the_asgi_app(url: str) -> None:
    with connect(url) as sock:
        buffer = bytearray()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, payload = read_response(sock, buffer)
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert b"sluice_model_loaded" in payload
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response_head_only(sock, buffer)
        assert status == 200
        sock.sendall(b"GET /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\n\r\n")  # wrong method
        status, _, _ = read_response(sock, buffer)
        assert status == 405
        sock.sendall(b"POST /v2/models/other/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        status, _, payload = read_response(sock, buffer)
        assert status == 404
        assert "other" in json.loads(payload)["error"]


def read_response_head_only(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """A HEAD answer: headers (with the GET's Content-Length) and no body."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, b""


def test_shutdown_lets_the_request_in_flight_finish_and_runs_lifespan_shutdown(model_bytes: bytes) -> None:
    backend = OnnxBackend(model_bytes, "v1", delay_s=0.5)
    router = Router(one_variant(), {"stable": backend})
    server = HttpServer(build_app(router, close_router_on_shutdown=True), "127.0.0.1", 0, graceful_timeout_s=5)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    results: dict[str, object] = {}

    async def main() -> None:
        await server.start()
        started.set()
        await stop.wait()
        t0 = time.monotonic()
        await server.shutdown()
        results["shutdown_s"] = time.monotonic() - t0

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        with connect(f"http://127.0.0.1:{server.port}") as sock:
            sock.sendall(infer_request(json.dumps(v2_body(row(1))).encode()))
            wait_for("the request inside the backend's 0.5 s delay", lambda: backend.calls == 1, 5, 0.005)
            loop.call_soon_threadsafe(stop.set)
            status, headers, _ = read_response(sock, bytearray())
            assert status == 200  # answered, not dropped
            assert headers["connection"] == "close"  # and told the connection ends
        thread.join(10)
        assert 0.2 < float(results["shutdown_s"]) < 5  # type: ignore[arg-type]
        assert backend.closed  # lifespan shutdown closed the router's backends
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


class NanBackend(OnnxBackend):
    """The real model, with its probabilities replaced by NaN (a broken model version)."""

    async def infer(self, request: InferRequest) -> InferResponse:
        answer = await super().infer(request)
        outputs = tuple(
            Tensor(t.name, np.full_like(t.data, np.nan)) if t.data.dtype.kind == "f" else t for t in answer.outputs
        )
        return dataclasses.replace(answer, outputs=outputs)


@pytest.mark.usefixtures("both_servers")
def test_nan_outputs_come_back_as_null_and_nan_inputs_are_a_400(model_bytes: bytes) -> None:
    router = Router(one_variant(), {"stable": NanBackend(model_bytes, "v1")})
    with serve(router) as base, httpx.Client(base_url=base) as client:
        answer = client.post("/v2/models/fraud/infer", json=v2_body(row(2)))
        assert answer.status_code == 200, answer.text
        probabilities = next(o for o in answer.json()["outputs"] if o["datatype"] == "FP32")
        assert probabilities["data"] == [None] * 4  # JSON has no NaN: null, and the answer still arrives
        bad = client.post(
            "/v2/models/fraud/infer",
            content=b'{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}',
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("body is not valid JSON")


def test_server_limits_from_the_environment() -> None:
    limits = ServerLimits.from_env({"SLUICE_HTTP_MAX_URL_BYTES": "4096", "SLUICE_HTTP_HEADER_TIMEOUT_S": "2.5"})
    assert (limits.max_url_bytes, limits.header_timeout_s) == (4096, 2.5)
    assert limits.keep_alive_timeout_s == ServerLimits().keep_alive_timeout_s
    with pytest.raises(ValueError, match=r"\$SLUICE_HTTP_MAX_HEADERS: '1e3x' is not a number"):
        ServerLimits.from_env({"SLUICE_HTTP_MAX_HEADERS": "1e3x"})
    with pytest.raises(ValueError, match=r"\$SLUICE_HTTP_BODY_TIMEOUT_S must be positive"):
        ServerLimits.from_env({"SLUICE_HTTP_BODY_TIMEOUT_S": "0"})


def test_connection_cap_stays_below_the_file_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no file-descriptor limit in this process to stay below")
    assert ServerLimits(max_connections=10**9).connection_cap() == max(1, soft - 64)
    assert ServerLimits(max_connections=50).connection_cap() == min(50, max(1, soft - 64))
