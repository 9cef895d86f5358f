"""The router's gRPC face: KServe v2 `GRPCInferenceService` (as Triton and KServe serve it) over `ProtocolEndpoints`.

Health, server and model metadata, model readiness and `ModelInfer` go through the same `ProtocolEndpoints` as REST, so
routing, sticky assignment (the sticky header as gRPC metadata), the override header, shadowing, fallback and the
request metrics are the ones REST has. Errors carry the gRPC code their HTTP status maps to (400 ->
INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, ...). Methods the router has no answer for (streaming,
repository and shared-memory control, statistics) answer UNIMPLEMENTED.

A grpc.aio server on the router's event loop, with bounded message sizes (the config's `max_request_bytes` plus
room for the protobuf framing: the server's limit is the one at start, each call is held to the current one), a
bounded number of concurrent calls (further calls get RESOURCE_EXHAUSTED) and idle connections closed after 5
minutes. gRPC's own HTTP/2 implementation (C-core) parses frames and headers, with
its default header-size limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from sluice.serving.endpoints import (
    REQUEST_ID_HEADER,
    SERVER_NAME,
    SERVER_VERSION,
    VARIANT_HEADER,
    VERSION_HEADER,
    ProtocolEndpoints,
)
from sluice.serving.errors import PayloadTooLarge, ServingError
from sluice.serving.protocol.grpc_codec import decode_grpc_request, encode_grpc_response, metadata_message
from sluice.serving.protocol.limits import check_request_size
from sluice.serving.router import Routed
from sluice.serving.tensors import InferRequest

log = logging.getLogger(__name__)

# HTTP status of a ServingError -> the gRPC status a v2 gRPC client expects for it.
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
DEFAULT_MAX_CONCURRENT_RPCS = 256
IDLE_CONNECTION_MS = 300_000
_FRAMING_BYTES = 64 * 1024  # protobuf field headers and the JSON-free request envelope around the tensors


def grpc_code(exc: ServingError) -> grpc.StatusCode:
    return GRPC_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """Invocation metadata as headers (gRPC keys are lower-case already); binary (-bin) entries are skipped."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def _keep(exc: ServingError) -> ServingError:
    return exc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The v2 gRPC methods over one ProtocolEndpoints (one model per router)."""

    def __init__(self, plane: ProtocolEndpoints) -> None:
        self.plane = plane

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: ServingError) -> None:
        await context.abort(grpc_code(exc), exc.message)

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=bool((await self.plane.ready())["ready"]))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        extensions = self.plane.server_metadata()["extensions"]
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=extensions)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """Ready or not, as Triton answers: an unknown model or version is not ready (no error)."""
        try:
            body = await self.plane.model_ready(request.name, request.version or None)
        except ServingError as exc:
            if exc.status_code == 404:
                return pb.ModelReadyResponse(ready=False)
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=bool(body["ready"]))

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            body = await self.plane.model_metadata(request.name, request.version or None)
        except ServingError as exc:
            await self._abort(context, exc)
        return metadata_message(body)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        """Routed as REST is; the variant, version and (with outcomes on) request id come back as initial metadata,
        as REST sends them as headers."""
        started = time.perf_counter()
        name = request.model_name
        cfg = self.plane.router.config
        sent: list[tuple[str, str]] = []

        async def decode() -> InferRequest:
            # The server's receive limit is fixed when it starts; the config's limit can change later (PUT
            # /admin/config), so the message is held to the current one here (lowering applies at once; raising
            # above the start value needs a restart).
            size = request.ByteSize()
            if size > cfg.max_request_bytes + _FRAMING_BYTES:
                raise PayloadTooLarge(f"request of {size} bytes exceeds max_request_bytes {cfg.max_request_bytes}")
            shapes = [{"name": t.name, "shape": list(t.shape)} for t in request.inputs]
            check_request_size({"inputs": shapes}, cfg.max_request_rows, cfg.max_request_elements)
            return decode_grpc_request(request)

        def encode(routed: Routed, decoded: InferRequest, request_id: str | None) -> Any:
            sent.extend([(VARIANT_HEADER, routed.variant), (VERSION_HEADER, routed.version)])
            if request_id is not None:
                sent.append((REQUEST_ID_HEADER, request_id))
            return encode_grpc_response(routed.response, decoded, name, routed.version)

        result = await self.plane.handle(
            name, request.model_version or None, _metadata(context), started, decode=decode, encode=encode, fail=_keep
        )
        if isinstance(result, ServingError):
            await self._abort(context, result)
        await context.send_initial_metadata(tuple(sent))
        return result


class GrpcServer:
    """`GRPCInferenceService` for one ProtocolEndpoints on host:port (port 0 picks a free one: see `self.port`)."""

    def __init__(
        self,
        plane: ProtocolEndpoints,
        host: str,
        port: int,
        *,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        graceful_timeout_s: float = 10.0,
    ) -> None:
        self.plane = plane
        self.host = host
        self.port = port
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.graceful_timeout_s = graceful_timeout_s
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        limit = self.plane.router.config.max_request_bytes + _FRAMING_BYTES
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                # Answers are as large as the model makes them; bounded all the same so one cannot exhaust memory.
                ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
                # An idle client's connection is closed after 5 minutes (GOAWAY): idle sockets cannot pile up.
                ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
            ],
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.plane), server)
        host = f"[{self.host}]" if ":" in self.host else self.host
        bound = server.add_insecure_port(f"{host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot serve gRPC on {self.host}:{self.port}")
        self.port = bound
        await server.start()
        self._server = server

    async def shutdown(self) -> None:
        """Stop accepting; calls in flight get up to `graceful_timeout_s` to finish."""
        if self._server is not None:
            await self._server.stop(self.graceful_timeout_s)
            self._server = None
