"""The router's HTTP face: a Starlette app serving the Open Inference Protocol, plain predict, metrics, admin.

Served by `sluice.serving.httpserver` in the standalone router and `sluice serve` (which answers infer itself and
hands everything else to this app) and by Ray Serve in the ingress deployment. The app holds no routing logic:
it reads bodies (bounded), headers and path parameters and hands them to `ProtocolEndpoints`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from sluice.serving import admin as admin_auth
from sluice.serving.admin import AdminAuth
from sluice.serving.config import ServingConfig
from sluice.serving.endpoints import ProtocolEndpoints, Reply, dumps, parse_json
from sluice.serving.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServingError,
    Unauthorized,
    UnsupportedMediaType,
)
from sluice.serving.metrics import CONTENT_TYPE_LATEST
from sluice.serving.router import Router

log = logging.getLogger(__name__)

# application/octet-stream: tritonclient.http.aio labels its (JSON) bodies so; the body must still parse as JSON.
_JSON_TYPES = ("application/json", "text/json", "application/octet-stream")


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def _error(exc: ServingError) -> Response:
    return _Json(exc.to_json(), status_code=exc.status_code)


def _check_content_type(request: Request) -> None:
    check_request_headers(request.headers)


def header_map(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased raw headers as a dict; the first of repeated headers wins, as in Starlette."""
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in reversed(raw)}


def check_request_headers(headers: Mapping[str, str]) -> None:
    """Refuse bodies the v2 endpoints cannot read (415); shared with `httpserver`'s infer path. JSON, or the binary
    extension's JSON header + tensors (`Inference-Header-Content-Length`, sent as octet-stream by tritonclient)."""
    ctype = headers.get("content-type")
    if ctype is None:
        return  # tritonclient sends none; the body must still parse as JSON
    base = ctype.split(";", 1)[0].strip().lower()
    if base not in _JSON_TYPES and not base.endswith("+json"):
        raise UnsupportedMediaType(f"content type {base!r} is not supported; send application/json")


def _check_length(declared: str | None, limit: int) -> None:
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing with 413 as soon as it is known to exceed `limit` (header first, then while streaming)."""
    _check_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reply(reply: Reply) -> Response:
    if reply.payload is not None:
        return Response(reply.payload, status_code=reply.status, headers=reply.headers, media_type=reply.content_type)
    return _Json(reply.body, status_code=reply.status, headers=reply.headers)


Handler = Callable[[Request], Awaitable[Response]]


def _guard(fn: Handler) -> Handler:
    """Any ServingError becomes its JSON error; anything else a logged 500 (never a crash, never the payload)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await fn(request)
        except ServingError as exc:
            return _error(exc)
        except Exception:
            log.exception("unhandled error on %s", request.url.path)
            return _Json({"error": "internal error"}, status_code=500)

    return wrapped


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


def _route_path(scope: Scope) -> str:
    """The path below the mount point (Ray Serve sets root_path to the route prefix), as Starlette routes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(name, version) of `/v2/models/{name}[/versions/{version}]/infer`, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[11:-6].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


async def _receive_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_JSON_HEADER = (b"content-type", b"application/json")


async def _send_json(send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
    await _send(send, status, dumps(body), _JSON_HEADER, headers)


async def _send(
    send: Send, status: int, content: bytes, ctype: tuple[bytes, bytes], headers: Mapping[str, str] | None
) -> None:
    raw = [(b"content-length", str(len(content)).encode()), ctype]
    if headers:
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    start: Message = {"type": "http.response.start", "status": status, "headers": raw}
    await send(start)
    await send({"type": "http.response.body", "body": content})


class SluiceApp(Starlette):
    """Starlette, with `POST .../infer` served straight from ASGI: the hot path skips routing, Request/Response
    objects and middleware (measured ~0.1 ms of the router's CPU per request); everything else is plain Starlette.
    Behaviour is the same as the routed handler: bounded body, content-type checks, JSON errors, a 500 on a bug."""

    plane: ProtocolEndpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = infer_target(_route_path(scope))
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await super().__call__(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        t0 = time.perf_counter()
        headers = header_map(scope["headers"])
        plane = self.plane
        try:
            check_request_headers(headers)
            limit = plane.router.config.max_request_bytes
            _check_length(headers.get("content-length"), limit)
            raw = await _receive_body(receive, limit)
            reply = await plane.infer(name, version, raw, headers, t0)
        except _Disconnected:
            return
        except ServingError as exc:
            await _send_json(send, exc.status_code, exc.to_json())
            return
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            await _send_json(send, 500, {"error": "internal error"})
            return
        ctype = _JSON_HEADER if reply.payload is None else (b"content-type", reply.content_type.encode())
        await _send(send, reply.status, reply.content(), ctype, reply.headers)


def build_app(router: Router, *, close_router_on_shutdown: bool = False, admin: AdminAuth | None = None) -> SluiceApp:
    """The ASGI app over `router`; `app.state.endpoints.router` may be swapped to re-point it.

    `admin` guards `/admin/*` and the override header; by default it is what the environment configures
    (`sluice.serving.admin.from_env`), and without a token there the admin API answers 403.
    """
    auth = admin if admin is not None else admin_auth.from_env()
    plane = ProtocolEndpoints(router, is_admin=auth.allows)

    def dp() -> ProtocolEndpoints:
        return plane

    async def live(_: Request) -> Response:
        return _Json(ProtocolEndpoints.live())

    async def ready(_: Request) -> Response:
        body = await dp().ready()
        return _Json(body, status_code=200 if body["ready"] else 503)

    async def server_meta(_: Request) -> Response:
        return _Json(dp().server_metadata())

    async def model_meta(request: Request) -> Response:
        p = request.path_params
        return _Json(await dp().model_metadata(p["name"], p.get("version")))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        body = await dp().model_ready(p["name"], p.get("version"))
        return _Json(body, status_code=200 if body["ready"] else 503)

    async def infer(request: Request) -> Response:
        t0 = time.perf_counter()
        _check_content_type(request)
        raw = await read_body(request, dp().router.config.max_request_bytes)
        p = request.path_params
        return _reply(await dp().infer(p["name"], p.get("version"), raw, request.headers, t0))

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        _check_content_type(request)
        raw = await read_body(request, dp().router.config.max_request_bytes)
        return _reply(await dp().predict(request.path_params["name"], raw, request.headers, t0))

    async def outcomes(request: Request) -> Response:
        _check_content_type(request)
        cfg = dp().router.outcomes.config
        raw = await read_body(request, cfg.max_body_bytes if cfg else 1024 * 1024)
        return _reply(dp().outcomes(request.path_params["name"], raw))

    async def metrics(_: Request) -> Response:
        return Response(dp().router.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def drift_sample(request: Request) -> Response:
        """A capturing DriftPolicy's sample: for the capture's token (in its config) or the admin token."""
        policy = request.path_params["policy"]
        captures = dp().router.captures
        if policy not in captures.reservoirs:
            raise NotFound(f"no drift capture for policy {policy[:100]!r} on this router")
        if not (captures.allows(policy, request.headers) or auth.allows(request.headers)):
            raise Unauthorized("the drift sample needs 'Authorization: Bearer <the capture token>'")
        with_values = request.query_params.get("values", "true").lower() not in ("false", "0", "no")
        return _Json(captures.sample(policy, with_values))

    async def get_config(request: Request) -> Response:
        auth.require(request.headers)
        return _Json(dp().router.config.model_dump(mode="json"))

    async def put_config(request: Request) -> Response:
        auth.require(request.headers)
        _check_content_type(request)
        raw = await read_body(request, 1024 * 1024)
        try:
            config = ServingConfig.model_validate(parse_json(raw))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise InvalidInput(f"invalid ServingConfig: {problems}") from exc
        try:
            # New variants: allowed URI schemes only, and their model must load before the answer is 200.
            await dp().router.apply(config, verify=True, uri_schemes=auth.uri_schemes)
        except (ValueError, ImportError) as exc:  # the backend factory refused a variant (e.g. no endpoint)
            raise InvalidInput(f"cannot build backends for this config: {exc}") from exc
        log.info("applied config: %s", {v.name: v.weight for v in config.variants})
        return _Json({"applied": True, "weights": {v.name: v.weight for v in config.variants}})

    routes = [
        Route("/v2/health/live", _guard(live), methods=["GET"]),
        Route("/v2/health/ready", _guard(ready), methods=["GET"]),
        Route("/v2", _guard(server_meta), methods=["GET"]),
        Route("/v2/models/{name}", _guard(model_meta), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", _guard(model_meta), methods=["GET"]),
        Route("/v2/models/{name}/ready", _guard(model_ready), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", _guard(model_ready), methods=["GET"]),
        Route("/v2/models/{name}/infer", _guard(infer), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", _guard(infer), methods=["POST"]),
        Route("/v1/models/{name}:predict", _guard(predict), methods=["POST"]),
        Route("/v2/models/{name}/outcomes", _guard(outcomes), methods=["POST"]),
        Route("/metrics", _guard(metrics), methods=["GET"]),
        Route("/v2/drift/{policy}/sample", _guard(drift_sample), methods=["GET"]),
        Route("/admin/config", _guard(get_config), methods=["GET"]),
        Route("/admin/config", _guard(put_config), methods=["PUT"]),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await router.ready()  # fills the model-loaded gauge before the first scrape
        try:
            yield
        finally:
            # Shadow tasks live on this loop: finish them (each bounded by request_timeout_s) before it stops.
            await router.drain_shadows()
            if close_router_on_shutdown:
                await router.close()

    app = SluiceApp(routes=routes, lifespan=lifespan)
    app.plane = plane
    app.state.endpoints = plane
    return app
