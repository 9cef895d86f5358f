"""The router's own HTTP/1.1 server: asyncio + httptools, `POST .../infer` answered without ASGI.

The standalone router and `sluice serve` spend most of their CPU per request outside the model, and uvicorn's
per-request machinery (an ASGI task, scope and message dicts, a RequestResponseCycle) is a measured part of it:
the same fixed JSON answer costs 0.099 ms of server CPU per request under uvicorn and 0.039 ms from a bare
httptools protocol (benchmarks/router_overhead.py has the router-level figures). So the infer path parses with
httptools and calls `ProtocolEndpoints.infer` directly, with the same checks as `SluiceApp._infer` (content type,
bounded body, JSON errors). Every other request goes to the Starlette app (`build_app`) through a small ASGI
bridge, so health, metadata, metrics and admin behave exactly as under uvicorn, lifespan included. Inside Ray Serve
the app still runs under Serve's own server.

Deliberate limits: one request at a time per connection (pipelined requests wait their turn), response bodies of
the ASGI bridge are buffered (the router's endpoints are small; no streaming), no TLS (a pod's sidecar or ingress
terminates it), no upgrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from sluice.serving.app import SluiceApp, build_app, check_request_headers, header_map, infer_target
from sluice.serving.errors import PayloadTooLarge, ServingError
from sluice.serving.protocol.endpoints import dumps as _dumps
from sluice.serving.router import Router

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON_TYPE = b"content-type: application/json\r\n"


def _head(status: int, headers: list[tuple[bytes, bytes]], length: int, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    lines += [b"%s: %s\r\n" % (k, v) for k, v in headers]
    lines.append(b"content-length: %d\r\n" % length)
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


@dataclass(slots=True)
class _Request:
    method: str
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http_version: str
    error: ServingError | None  # refused while reading (too large): answered without running anything
    started: float  # perf_counter at the first byte of the request


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, keeps the connection alive when allowed."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.disconnected = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large: ServingError | None = None
        self.started = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks -------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        limit = self.server.body_limit()
        expect_continue = False
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                self.too_large = PayloadTooLarge(f"body of {int(value)} bytes exceeds the limit of {limit} bytes")
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        idle = not self.pending and (self.worker is None or self.worker.done())
        if self.too_large is not None and idle:
            # Answer now and close rather than read a body we would drop (in order only when nothing is queued).
            self._refuse(413, self.too_large.message)
        elif expect_continue and self.too_large is None and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large is not None:
            return  # read and dropped: the answer is already decided
        self.size += len(body)
        limit = self.server.body_limit()
        if self.size > limit:
            self.too_large = PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            self.chunks = []
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        request = _Request(
            method=self.parser.get_method().decode("ascii"),
            url=self.url,
            headers=self.headers,
            body=body,
            keep_alive=self.parser.should_keep_alive(),
            http_version=self.parser.get_http_version(),
            error=self.too_large,
            started=self.started,
        )
        self.pending.append(request)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())

    # -- answering -----------------------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = _dumps({"error": message})
            self.transport.write(_head(status, [(b"content-type", b"application/json")], len(body), False) + body)
            self.transport.close()

    async def _work(self) -> None:
        while self.pending:
            request = self.pending.popleft()
            self.server.begin()
            try:
                status, headers, body = await self.server.answer(request, self)
            except Exception:
                log.exception("unhandled error on %s %r", request.method, request.url[:200])
                status, headers, body = 500, [(b"content-type", b"application/json")], b'{"error":"internal error"}'
            finally:
                self.server.end()
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            keep_alive = request.keep_alive and not self.server.closing
            if request.method == "HEAD":
                transport.write(_head(status, headers, len(body), keep_alive))
            else:
                transport.write(_head(status, headers, len(body), keep_alive) + body)
            if not keep_alive:
                transport.close()
                return

    def close_if_idle(self) -> None:
        if not self.pending and (self.worker is None or self.worker.done()) and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Serves `app` (a `SluiceApp` from `build_app`) on host:port until `shutdown()`."""

    def __init__(self, app: SluiceApp, host: str, port: int, *, graceful_timeout_s: float = 10.0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.graceful_timeout_s = graceful_timeout_s
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._lifespan: _Lifespan | None = None

    @classmethod
    def for_router(cls, router: Router, host: str, port: int) -> HttpServer:
        """The router's server: closes the router's backends on shutdown, drains for up to the request timeout."""
        app = build_app(router, close_router_on_shutdown=True)
        return cls(app, host, port, graceful_timeout_s=router.config.request_timeout_s + 1)

    def begin(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def end(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    def body_limit(self) -> int:
        return self.app.plane.router.config.max_request_bytes

    async def start(self) -> None:
        """Run the app's lifespan startup, then listen (port 0 picks a free one: see `self.port`)."""
        self._lifespan = _Lifespan(self.app)
        await self._lifespan.startup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def serve(self, stop: asyncio.Event) -> None:
        """start(), serve until `stop` is set, then shut down gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), close connections, run lifespan shutdown."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.graceful_timeout_s)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._lifespan is not None:
            await self._lifespan.shutdown()
            self._lifespan = None

    async def answer(self, request: _Request, conn: _Connection) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) for one request: infer handled here, everything else by the ASGI app."""
        if request.error is not None:
            return request.error.status_code, [(b"content-type", b"application/json")], _dumps(request.error.to_json())
        raw_path, _, query = request.url.partition(b"?")
        path = unquote(raw_path.decode("latin-1"))
        if request.method == "POST":
            target = infer_target(path)
            if target is not None:
                return await self._infer(request, *target)
        return await self._asgi(request, path, raw_path, query, conn)

    async def _infer(
        self, request: _Request, name: str, version: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = header_map(request.headers)
        try:
            check_request_headers(headers)
            reply = await self.app.plane.infer(name, version, request.body, headers, request.started)
        except ServingError as exc:
            return exc.status_code, [(b"content-type", b"application/json")], _dumps(exc.to_json())
        out = [(b"content-type", reply.content_type.encode())]
        out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        return reply.status, out, reply.content()

    async def _asgi(
        self, request: _Request, path: str, raw_path: bytes, query: bytes, conn: _Connection
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run one request through the ASGI app with the body already read; the answer is buffered."""
        transport = conn.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        sock = transport.get_extra_info("sockname") if transport is not None else None
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version,
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": tuple(peer[:2]) if peer else None,
            "server": tuple(sock[:2]) if sock else (self.host, self.port),
            "state": dict(self._lifespan.state) if self._lifespan else {},
        }
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await asyncio.shield(conn.disconnected)
            return {"type": "http.disconnect"}

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: Mapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, send)
        body = b"".join(chunks)
        return status, [(k, v) for k, v in headers if k not in (b"content-length", b"connection")], body


class _Lifespan:
    """Drives the ASGI lifespan protocol of the app (startup before listening, shutdown after the last request)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._started, self._stopped = loop.create_future(), loop.create_future()
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def shutdown(self) -> None:
        if self._task is None or self._stopped is None:
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped
        await self._task

    async def _run(self) -> None:
        started, stopped = self._started, self._stopped
        if started is None or stopped is None:
            raise RuntimeError("lifespan run before startup()")
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}

        async def send(message: Mapping[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                started.set_result(None)
            elif kind == "lifespan.startup.failed":
                started.set_exception(RuntimeError(f"app startup failed: {message.get('message', '')}"))
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if kind == "lifespan.shutdown.failed":
                    log.error("app shutdown failed: %s", message.get("message", ""))
                stopped.set_result(None)

        try:
            await self.app(scope, self._inbox.get, send)
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                log.exception("app lifespan failed")
        finally:
            for fut in (started, stopped):
                if not fut.done():
                    fut.set_result(None)
