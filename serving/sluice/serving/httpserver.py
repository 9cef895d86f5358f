"""The router's own HTTP/1.1 server: asyncio + httptools, `POST .../infer` answered without ASGI.

The standalone router and `sluice serve` spend most of their CPU per request outside the model, and uvicorn's
per-request machinery (an ASGI task, scope and message dicts, a RequestResponseCycle) is a measured part of it:
the same fixed JSON answer costs 0.099 ms of server CPU per request under uvicorn and 0.039 ms from a bare
httptools protocol (benchmarks/router_overhead.py has the router-level figures). So the infer path parses with
httptools and calls `ProtocolEndpoints.infer` directly, with the same checks as `SluiceApp._infer` (content type,
bounded body, JSON errors). Every other request goes to the Starlette app (`build_app`) through a small ASGI
bridge, so health, metadata, metrics and admin behave exactly as under uvicorn, lifespan included. Inside Ray Serve
the app still runs under Serve's own server.

It faces every client, so it bounds what each may cost (`ServerLimits`, docs/serving/security.md): URL and header
sizes counted while parsing (414/431, never quadratic: the parser is fed in read-sized chunks and a head that grows
past the limit is refused at once), header-read, body-read and keep-alive timeouts (408 or a quiet close), a
connection cap (the next client gets 503 and a close), at most `max_pipelined` queued requests per connection
(reading pauses until they are answered) with one request answered per turn of the event loop, so a pipelining
client cannot starve others, and write backpressure (a client that does not read its answers stops being read).

Deliberate limits: one request at a time per connection (pipelined requests wait their turn), response bodies of
the ASGI bridge are buffered (the router's endpoints are small; no streaming), no TLS (a pod's sidecar or ingress
terminates it), no upgrades (an `Upgrade: h2c` offer is ignored: the request is answered over HTTP/1.1, then the
connection closes). docs/serving/http-server.md says why this server and not uvicorn or granian.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from sluice.serving.admin import AdminAuth
from sluice.serving.app import SluiceApp, build_app, check_request_headers, header_map, infer_target
from sluice.serving.endpoints import UNROUTED
from sluice.serving.endpoints import dumps as _dumps
from sluice.serving.errors import PayloadTooLarge, ServingError
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


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may cost this server; every field can be set from `SLUICE_HTTP_<FIELD>` (upper case)."""

    max_url_bytes: int = 8192  # request target longer than this: 414
    max_header_bytes: int = 16384  # request line + headers (counted per read chunk): 431
    max_headers: int = 100  # more header fields: 431
    header_timeout_s: float = 10.0  # first byte of a request (or accept) to the end of its headers: 408 + close
    body_timeout_s: float = 30.0  # end of headers to the end of the body: 408 + close
    keep_alive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1000  # open connections; the next client gets 503 + close (clamped below the fd limit)
    max_pipelined: int = 16  # requests queued on one connection before reading from it pauses

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        """Defaults overridden by `SLUICE_HTTP_MAX_URL_BYTES=...` etc.; ValueError names a bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"SLUICE_HTTP_{f.name.upper()}"
            if key in env:
                kind = int if f.type in ("int", int) else float
                try:
                    values[f.name] = kind(env[key])
                except ValueError as exc:
                    raise ValueError(f"${key}: {env[key]!r} is not a number") from exc
                if values[f.name] <= 0:
                    raise ValueError(f"${key} must be positive, got {env[key]!r}")
        return cls(**values)

    def connection_cap(self) -> int:
        """`max_connections`, kept 64 below the process's soft file-descriptor limit (backends and logs need some)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - 64))


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing: the request is answered with `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.disconnected = asyncio.get_running_loop().create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self.upgrade_offered = False  # the parser stopped at an Upgrade: answer what was read, then close
        self.upgrade_held: _Request | None = None  # the offering request, waiting for its body
        self.upgrade_wanted = 0
        self.upgrade_size = 0
        self.upgrade_chunks: list[bytes] = []
        self.messages = 0  # requests begun on this connection
        self.head_bytes: int | None = None  # bytes of the head being read (None: not inside a head)
        self.head_since = 0.0  # monotonic time the current head (or the idle wait before it) began
        self.body_since: float | None = None  # monotonic time the current body began
        self._reset()

    def _reset(self) -> None:
        self.url_parts: list[bytes] = []
        self.url_size = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large: ServingError | None = None
        self.started = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.head_since = time.monotonic()
        if len(self.server.connections) >= self.server.max_connections:
            self.server.count_refusal(503)
            self._refuse(503, "too many connections; retry later")
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        self.writable.set()  # a worker waiting to write wakes up and finds the transport closing
        self.pending.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.upgrade_offered:
            self._upgrade_body(data)  # after an upgrade offer only the offering request's body is still read
            return
        seq, counting = self.messages, self.head_bytes is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is None:
                log.warning("error while reading a request: %s", exc)
                self._refuse(400, "malformed HTTP request")
            else:
                self._refuse(refused.status, refused.message)
            return
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[int(exc.args[0]) :] if exc.args else b"")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {str(exc)[:200]}")
            return
        # A head still incomplete after this chunk, begun before it: the chunk was all head. A head begun inside
        # this chunk is counted from the next one (at most one read's worth uncounted; never a false 431).
        if counting and self.head_bytes is not None and self.messages == seq:
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"request headers exceed {self.limits.max_header_bytes} bytes")

    # -- httptools callbacks -------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.messages += 1
        self.head_bytes = 0
        self.head_since = time.monotonic()
        self.started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url_size += len(url)
        if self.url_size > self.limits.max_url_bytes:
            raise _Refused(414, f"request target exceeds {self.limits.max_url_bytes} bytes")
        self.url_parts.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= self.limits.max_headers:
            raise _Refused(431, f"more than {self.limits.max_headers} header fields")
        if len(name) + len(value) > self.limits.max_header_bytes:
            raise _Refused(431, f"request headers exceed {self.limits.max_header_bytes} bytes")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.head_bytes = None
        self.body_since = time.monotonic()
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            raise _Refused(505, "only HTTP/1.0 and HTTP/1.1 are served")
        limit = self.server.body_limit()
        expect_continue = False
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                self.too_large = PayloadTooLarge(f"body of {int(value)} bytes exceeds the limit of {limit} bytes")
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if self.too_large is not None and self._idle():
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
        if self.head_bytes is not None:  # a message without headers (HTTP/0.9 style): never served
            raise _Refused(400, "request line without an HTTP version")
        self.body_since = None
        self.head_since = time.monotonic()
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        url = self.url_parts[0] if len(self.url_parts) == 1 else b"".join(self.url_parts)
        request = _Request(
            method=self.parser.get_method().decode("ascii"),
            url=url,
            headers=self.headers,
            body=body,
            keep_alive=self.parser.should_keep_alive(),
            http_version=self.parser.get_http_version(),
            error=self.too_large,
            started=self.started,
        )
        self.pending.append(request)
        if len(self.pending) >= self.limits.max_pipelined and self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())

    # -- answering -----------------------------------------------------------------------------------------------
    def _idle(self) -> bool:
        return not self.pending and (self.worker is None or self.worker.done())

    def _upgrade(self, rest: bytes) -> None:
        """An Upgrade offer (h2c, websocket) or CONNECT. The parser ends the message at its headers, so a request
        with a body (curl --http2 -d ...) is held back here until `Content-Length` bytes have arrived; it is then
        answered over HTTP/1.1 and the connection closes."""
        self.upgrade_offered = True
        self.head_bytes = None
        request = self.pending[-1] if self.pending else None
        if request is None or request.method == "CONNECT":
            self._refuse(400, "CONNECT and protocol upgrades are not supported")
            return
        length = header_map(request.headers).get("content-length", "0")
        self.upgrade_wanted = int(length) if length.isdigit() else 0
        if self.upgrade_wanted and not request.body and request.error is None:
            self.upgrade_held = self.pending.pop()
            self.body_since = time.monotonic()
            self._upgrade_body(rest)

    def _upgrade_body(self, data: bytes) -> None:
        held = self.upgrade_held
        if held is None:
            return
        self.upgrade_chunks.append(data)
        self.upgrade_size += len(data)
        if self.upgrade_size > self.server.body_limit():
            self.upgrade_held = None
            self._refuse(413, f"body exceeds the limit of {self.server.body_limit()} bytes")
        elif self.upgrade_size >= self.upgrade_wanted:
            self.upgrade_held = None
            self.body_since = None
            body = b"".join(self.upgrade_chunks)[: self.upgrade_wanted]
            self.pending.append(
                _Request(held.method, held.url, held.headers, body, False, held.http_version, None, held.started)
            )
            if self.worker is None or self.worker.done():
                self.worker = asyncio.get_running_loop().create_task(self._work())

    def _refuse(self, status: int, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = _dumps({"error": message})
            self.transport.write(_head(status, [(b"content-type", b"application/json")], len(body), False) + body)
            self.transport.close()

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweep: enforce the header, body and keep-alive timeouts."""
        if self.transport is None or self.transport.is_closing() or self.reading_paused:
            return  # paused by us: the client is waiting for answers, not slow
        lim = self.limits
        if self.body_since is not None:
            if now - self.body_since > lim.body_timeout_s:
                self._timeout(f"request body not received within {lim.body_timeout_s:g} s")
        elif self.head_bytes is not None:
            if now - self.head_since > lim.header_timeout_s:
                self._timeout(f"request headers not received within {lim.header_timeout_s:g} s")
        elif self._idle():
            idle_limit = lim.keep_alive_timeout_s if self.messages else lim.header_timeout_s
            if now - self.head_since > idle_limit:
                self.transport.close()  # an idle connection: nothing to answer

    def _timeout(self, message: str) -> None:
        if self._idle():
            self._refuse(408, message)
        elif self.transport is not None:
            self.transport.close()

    async def _work(self) -> None:
        while self.pending:
            request = self.pending.popleft()
            if self.reading_paused and len(self.pending) < self.limits.max_pipelined // 2 + 1:
                self.reading_paused = False
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.resume_reading()
            self.server.begin()
            try:
                status, headers, body = await self.server.answer(request, self)
            except Exception:
                log.exception("unhandled error on %s %r", request.method, request.url[:200])
                self.server.count_refusal(500)
                status, headers, body = 500, [(b"content-type", b"application/json")], b'{"error":"internal error"}'
            finally:
                self.server.end()
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            keep_alive = request.keep_alive and not self.server.closing and not self.upgrade_offered
            if request.method == "HEAD":
                transport.write(_head(status, headers, len(body), keep_alive))
            else:
                transport.write(_head(status, headers, len(body), keep_alive) + body)
            if not keep_alive:
                transport.close()
                return
            if not self.writable.is_set():
                await self.writable.wait()  # the client does not read: stop answering (and reading) until it does
            else:
                await asyncio.sleep(0)  # one request per turn: a pipelining client cannot starve the others
        self.head_since = time.monotonic()  # the keep-alive clock starts when the last answer is written

    def close_if_idle(self) -> None:
        if self._idle() and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Serves `app` (a `SluiceApp` from `build_app`) on host:port until `shutdown()`."""

    def __init__(
        self,
        app: SluiceApp,
        host: str,
        port: int,
        *,
        graceful_timeout_s: float = 10.0,
        limits: ServerLimits | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.graceful_timeout_s = graceful_timeout_s
        self.limits = limits if limits is not None else ServerLimits.from_env()
        self.max_connections = self.limits.connection_cap()
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._lifespan: _Lifespan | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def for_router(
        cls, router: Router, host: str, port: int, *, admin: AdminAuth | None = None, limits: ServerLimits | None = None
    ) -> HttpServer:
        """The router's server: closes the router's backends on shutdown, drains for up to the request timeout."""
        app = build_app(router, close_router_on_shutdown=True, admin=admin)
        return cls(app, host, port, graceful_timeout_s=router.config.request_timeout_s + 1, limits=limits)

    def count_refusal(self, status: int) -> None:
        """Count an answer the server gave on its own (connection cap, a bug) in `sluice_requests_total`."""
        self.app.plane.router.metrics.request(UNROUTED, UNROUTED, status, None)

    async def _sweep(self) -> None:
        """Enforce every connection's timeouts from one task (cheaper than a timer per request)."""
        lim = self.limits
        interval = max(0.05, min(1.0, lim.header_timeout_s / 4, lim.keep_alive_timeout_s / 4, lim.body_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_deadline(now)

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
        # A backlog as deep as the connection cap: a burst of clients is accepted (and told 503 past the cap)
        # instead of having its SYNs dropped and retried a second later.
        backlog = max(128, min(self.max_connections, 4096))
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=backlog)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
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
