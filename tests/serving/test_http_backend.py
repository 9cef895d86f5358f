"""The http backend's own keep-alive client against real sockets: a Sluice v2 server and scripted raw HTTP servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from tests.serving.helpers import MODEL, OnnxBackend, config, row, serve, v2_body

from sluice.serving.backends.http import HttpBackend
from sluice.serving.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidInput
from sluice.serving.protocol.v2_codec import decode_infer_request, raw_body
from sluice.serving.router import Router

META = {
    "name": MODEL,
    "versions": ["1"],
    "platform": "x",
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "p", "datatype": "FP32", "shape": [-1, 2]}],
}
ANSWER = json.dumps(
    {
        "model_name": MODEL,
        "model_version": "1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
).encode()

# A scripted server: gets (method, path, body) and the writer, answers however the test wants.
Script = Callable[[str, str, bytes, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A plain asyncio HTTP/1.1 server on 127.0.0.1 that records requests and lets a script answer them."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[tuple[str, str, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((method, path, body))
                await self.script(method, path, body, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Script], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(script: Script) -> RawServer:
        srv = RawServer(script)
        srv.server = await asyncio.start_server(srv._handle, "127.0.0.1", 0)
        servers.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in servers:
            assert srv.server is not None
            srv.server.close()


def _reply(status: int, body: bytes, *, close: bool = False) -> bytes:
    extra = b"connection: close\r\n" if close else b""
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def _metadata_then(answer: Callable[[], bytes], method: str, writer: asyncio.StreamWriter) -> None:
    writer.write(_reply(200, json.dumps(META).encode()) if method == "GET" else answer())
    await writer.drain()


async def test_round_trip_against_a_sluice_server_reuses_one_connection(model_bytes: bytes) -> None:
    cfg = config(variants=[{"name": "stable", "version": "m1", "uri": "file://m.onnx", "weight": 100}])
    direct = OnnxBackend(model_bytes, "m1")
    with serve(Router(cfg, {"stable": OnnxBackend(model_bytes, "m1")})) as base:
        backend = HttpBackend(base, MODEL)
        try:
            assert await backend.ready()
            assert [s.name for s in (await backend.metadata()).inputs] == ["X"]
            for seed in range(5):
                body = v2_body(row(3, seed))
                request = decode_infer_request(body, json.dumps(body).encode())
                got = await backend.infer(request)
                want = await direct.infer(request)
                assert [t.name for t in got.outputs] == [t.name for t in want.outputs]
                for g, w in zip(got.outputs, want.outputs, strict=True):
                    np.testing.assert_allclose(g.data.astype(np.float64), w.data.astype(np.float64), rtol=1e-6)
            assert backend._pool is not None
            assert len(backend._pool.all) == 1  # keep-alive: one connection for all
        finally:
            await backend.close()


async def test_forwards_the_client_body_unless_the_request_was_changed(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    srv = await raw_server(lambda m, p, b, w: _metadata_then(lambda: _reply(200, ANSWER), m, w))
    backend = HttpBackend(srv.url, MODEL)
    try:
        # Ints for an FP32 input and extra spacing: forwarded byte for byte, not re-encoded.
        raw = b'{"inputs": [ {"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]} ], "id": "r1"}'
        request = decode_infer_request(json.loads(raw), raw)
        assert raw_body(request) == raw
        answer = await backend.infer(request)
        assert answer.outputs[0].data.tolist() == [[0.25, 0.75]]
        assert srv.requests[-1] == ("POST", f"/v2/models/{MODEL}/infer", raw)
        # A copy with other inputs must not carry the old body along.
        changed = dataclasses.replace(
            request, inputs=(dataclasses.replace(request.inputs[0], data=np.zeros((1, 4), np.float32)),)
        )
        assert raw_body(changed) is None
        await backend.infer(changed)
        sent = json.loads(srv.requests[-1][2])
        assert sent["inputs"][0]["data"] == [0.0, 0.0, 0.0, 0.0]
        assert sent["id"] == "r1"
        assert raw_body(decode_infer_request(json.loads(raw))) is None  # decoded without its bytes: re-encoded
    finally:
        await backend.close()


async def test_a_connection_the_server_closed_is_replaced(raw_server: Callable[..., Awaitable[RawServer]]) -> None:
    async def script(method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        # Answers, then drops the kept-alive connection without saying so (as an idle timeout does).
        writer.write(_reply(200, ANSWER))
        await writer.drain()
        writer.close()

    srv = await raw_server(script)
    backend = HttpBackend(srv.url, MODEL)
    try:
        for _ in range(3):
            assert (await backend._request("POST", "/infer", b"{}"))[0] == 200
            await asyncio.sleep(0.05)
        assert srv.connections == 3
        # Closed right as the request goes out (no time to notice): resent once on a fresh connection.
        assert (await backend._request("POST", "/infer", b"{}"))[0] == 200
        assert (await backend._request("POST", "/infer", b"{}"))[0] == 200
        assert len(srv.requests) == 5
    finally:
        await backend.close()


async def test_chunked_answers_are_read_whole(raw_server: Callable[..., Awaitable[RawServer]]) -> None:
    async def script(method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        half = len(ANSWER) // 2
        chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, ANSWER[:half], len(ANSWER) - half, ANSWER[half:])
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks)
        await writer.drain()

    srv = await raw_server(script)
    backend = HttpBackend(srv.url, MODEL)
    try:
        for _ in range(2):
            assert await backend._request("POST", "/infer", b"{}") == (200, ANSWER)
        assert srv.connections == 1
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInput), (500, BackendError), (503, BackendUnavailable), (504, BackendTimeout)],
)
async def test_error_statuses_map_to_serving_errors(
    raw_server: Callable[..., Awaitable[RawServer]], status: int, error: type[Exception]
) -> None:
    srv = await raw_server(
        lambda m, p, b, w: _metadata_then(lambda: _reply(status, b'{"error":"input X is bad"}'), m, w)
    )
    backend = HttpBackend(srv.url, MODEL)
    try:
        with pytest.raises(error, match="input X is bad"):
            await backend.infer(decode_infer_request(v2_body(row())))
    finally:
        await backend.close()


async def test_slow_server_times_out_and_the_connection_is_not_reused(
    raw_server: Callable[..., Awaitable[RawServer]],
) -> None:
    slow = {"on": True}

    async def script(method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if slow["on"]:
            await asyncio.sleep(1.0)
        writer.write(_reply(200, b"late" if slow["on"] else ANSWER))
        await writer.drain()

    srv = await raw_server(script)
    backend = HttpBackend(srv.url, MODEL, timeout_s=0.2)
    try:
        with pytest.raises(BackendTimeout):
            await backend._request("POST", "/infer", b"{}")
        slow["on"] = False
        # The late answer to the first request must never be taken for the second one's.
        assert await backend._request("POST", "/infer", b"{}") == (200, ANSWER)
        assert srv.connections == 2
    finally:
        await backend.close()


async def test_unreachable_server_is_unavailable_and_not_ready() -> None:
    from tests.serving.helpers import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    backend = HttpBackend(f"http://127.0.0.1:{port}", MODEL)
    try:
        assert not await backend.ready()
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await backend.infer(decode_infer_request(v2_body(row())))
    finally:
        await backend.close()


def test_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpBackend("127.0.0.1:8000", MODEL)
