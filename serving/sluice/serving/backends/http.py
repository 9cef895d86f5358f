"""A VariantBackend that forwards to any Open Inference Protocol REST server over pooled keep-alive HTTP/1.1
connections.

Lets the standalone router front servers it does not embed (a model server, another router) and is the
backend the router-overhead benchmark measures. The client is a small asyncio protocol over httptools (already
installed with uvicorn[standard]) rather than aiohttp or httpx: measured against the same model server, an aiohttp
request costs ~500 us of CPU and this one ~80 us (httpx is slower still), which was most of the router's overhead.
It does only what a backend call needs: one request per connection at a time, the whole request in one write,
Content-Length or chunked responses, a bounded pool of kept-alive connections.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidInput
from sluice.serving.protocol.v2_codec import decode_response, encode_request, raw_body
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, TensorSpec


class _StaleConnection(ConnectionError):
    """The peer closed a kept-alive connection before sending any byte of the answer (safe to resend)."""


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; parses responses with httptools and hands each to the waiting request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.status = 0
        self.got_bytes = False
        self.keep_alive = True
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BackendError(f"unreadable HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.got_bytes:
            self._fail(ConnectionError("backend closed the connection mid-response"))
        else:
            self._fail(_StaleConnection("backend closed the connection"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        body = b"".join(self.chunks)
        self.chunks = []
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.status, body))

    # use
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.got_bytes = False
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Up to `limit` connections to one host on one event loop; idle ones are reused newest first."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limit: int) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(limit)
        self.idle: deque[_Conn] = deque()
        self.all: set[_Conn] = set()

    async def _connect(self) -> _Conn:
        _, conn = await self.loop.create_connection(
            _Conn, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
        )
        self.all.add(conn)
        return conn

    async def request(self, data: bytes) -> tuple[int, bytes]:
        async with self.slots:
            conn = None
            reused = True
            while self.idle:
                candidate = self.idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
                self.all.discard(candidate)
            if conn is None:
                conn, reused = await self._connect(), False
            try:
                try:
                    answer = await conn.send(data)
                except _StaleConnection:
                    if not reused:
                        raise
                    # A server may close an idle keep-alive connection just as a request goes out; nothing of the
                    # answer arrived, so the request goes once more on a fresh connection (inference is pure).
                    self.all.discard(conn)
                    conn = await self._connect()
                    answer = await conn.send(data)
            except BaseException:
                # Timed out, cancelled or broken: a response may still be in flight on it, so never reuse it.
                conn.close()
                self.all.discard(conn)
                raise
            if conn.keep_alive and not conn.closed:
                self.idle.append(conn)
            else:
                conn.close()
                self.all.discard(conn)
            return answer

    def close(self) -> None:
        for conn in list(self.all):
            conn.close()
        self.all.clear()
        self.idle.clear()


class HttpBackend:
    """Calls `{endpoint}/v2/models/{model}[/versions/{version}]/...` of a v2 REST server."""

    def __init__(
        self, endpoint: str, model: str, *, timeout_s: float = 10.0, max_connections: int = 64, version: str = ""
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"backend endpoint {endpoint!r} must be an http:// or https:// URL")
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        self._base = f"{url.path.rstrip('/')}/v2/models/{model}" + (f"/versions/{version}" if version else "")
        host_header = url.netloc.rpartition("@")[2]
        self._head = f"HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n".encode()
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._pool: _Pool | None = None
        self._metadata: ModelMetadata | None = None

    def _client(self) -> _Pool:
        """Created on first use: connections belong to the running loop, which may not exist at construction."""
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool.loop is not loop:
            if self._pool is not None:
                self._pool.close()
            self._pool = _Pool(self._host, self._port, self._tls, self._max_connections)
        return self._pool

    async def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {self._base}{path} ".encode() + self._head
        data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body or b""), body or b"")
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._client().request(data)
        except TimeoutError as exc:
            raise BackendTimeout(f"backend {self.endpoint} timed out") from exc
        except BackendError:
            raise
        except OSError as exc:  # ConnectionError and refused/unreachable connects
            raise BackendUnavailable(f"backend {self.endpoint} unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _raise_for(status: int, content: bytes) -> None:
        if status < 400:
            return
        try:
            message = str(json.loads(content).get("error", content[:200].decode(errors="replace")))
        except (ValueError, AttributeError):
            message = content[:200].decode(errors="replace")
        if status < 500:
            raise InvalidInput(message)
        if status in (502, 503):
            raise BackendUnavailable(f"backend answered {status}: {message}")
        if status == 504:
            raise BackendTimeout(f"backend answered 504: {message}")
        raise BackendError(f"backend answered {status}: {message}")

    async def infer(self, request: InferRequest) -> InferResponse:
        # The client's own JSON when the request is unchanged since it was decoded: re-encoding it is pure cost.
        body = raw_body(request)
        if body is None:
            body = orjson.dumps(encode_request(request))
        status, content = await self._request("POST", "/infer", body)
        self._raise_for(status, content)
        try:
            return decode_response(orjson.loads(content))
        except (ValueError, InvalidInput) as exc:
            raise BackendError(f"backend {self.endpoint} sent an unreadable response") from exc

    async def ready(self) -> bool:
        try:
            status, _ = await self._request("GET", "/ready")
        except (BackendUnavailable, BackendTimeout, BackendError):
            return False
        return status == 200

    async def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            status, content = await self._request("GET", "")
            if status == 404:
                raise BackendUnavailable(f"backend {self.endpoint} does not serve model {self.model!r}")
            self._raise_for(status, content)
            try:
                self._metadata = _parse_metadata(json.loads(content))
            except ValueError as exc:
                raise BackendUnavailable(f"backend {self.endpoint} sent unreadable model metadata") from exc
        return self._metadata

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
            await asyncio.sleep(0)  # let the transports finish closing their sockets


def _specs(raw: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in raw)


def _parse_metadata(body: Any) -> ModelMetadata:
    try:
        versions = body.get("versions") or [""]
        return ModelMetadata(
            name=str(body["name"]),
            version=str(versions[0]),
            platform=str(body.get("platform", "")),
            inputs=_specs(body["inputs"]),
            outputs=_specs(body["outputs"]),
            provider=str(body.get("parameters", {}).get("provider", "remote")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BackendUnavailable("backend sent unreadable model metadata") from exc


def from_variant(variant: VariantConfig, config: ServingConfig) -> HttpBackend:
    """Registry entry: the variant's `endpoint` is the server's base URL; the model name is the config's."""
    if not variant.endpoint:
        raise ValueError(f"variant {variant.name!r}: the http backend needs 'endpoint' (base URL of a v2 server)")
    return HttpBackend(variant.endpoint, config.model_name, timeout_s=config.request_timeout_s)
