"""What each Open Inference Protocol endpoint answers, given a Router, free of any transport.

Hosts (the Starlette app, a Ray ingress) only read bodies and headers and write what this returns, so the
protocol semantics and the request metrics live in one place.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson

from sluice.serving.errors import (
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
    clip,
)
from sluice.serving.outcomes import parse_outcomes
from sluice.serving.protocol.limits import MAX_ID_LENGTH, check_request_size, is_printable_id
from sluice.serving.protocol.v2_codec import (
    BINARY_TYPE,
    HEADER_LENGTH,
    JSON_OUTPUTS,
    OutputEncoding,
    decode_infer_request,
    encode_binary_response,
    encode_infer_response,
    output_encoding,
    split_body,
)
from sluice.serving.router import Routed, Router
from sluice.serving.tensors import V2_TO_NUMPY, InferRequest, ModelMetadata, Tensor

SERVER_NAME = "sluice"
SERVER_VERSION = "0.1.0"
# Response header: the variant (arm) that served the request. The request header of the same default name
# (`ServingConfig.override_header`) asks for a variant; the response header always says which one answered.
VARIANT_HEADER = "x-sluice-variant"
VERSION_HEADER = "x-sluice-model-version"
# Response header, when outcomes are configured: the id to report outcomes against (the request's own v2 `id`, or
# one the router made up when the client sent none: 96 random bits per request, so an id cannot be guessed from
# another and outcomes cannot be posted against requests one did not send).
REQUEST_ID_HEADER = "x-sluice-request-id"
UNROUTED = ""  # variant/version label of requests rejected before a variant was chosen
T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer for the transport: status, JSON body and extra headers.

    `payload` set: the body is these bytes (a binary-extension answer: JSON header then tensors, with
    `Inference-Header-Content-Length` in `headers`), sent as `content_type`, and `body` is only its JSON header.
    """

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    payload: bytes | None = None

    @property
    def content_type(self) -> str:
        return BINARY_TYPE if self.payload is not None else "application/json"

    def content(self) -> bytes:
        """The bytes of the body as sent."""
        return self.payload if self.payload is not None else dumps(self.body)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON; anything else (bad UTF-8, NaN literals, 64-bit overflow) is the client's 400."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc


def dumps(body: Any) -> bytes:
    """Compact JSON for every answer (orjson: several times faster than `json` on these bodies, which the router
    pays per request). NaN and infinities, which JSON cannot spell, come out as null: a model that emits one
    still gets its answer through instead of a 500."""
    return orjson.dumps(body)


def _tensor_meta(specs: Any) -> list[dict[str, Any]]:
    return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]


def metadata_body(meta: ModelMetadata, name: str, versions: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "versions": versions,
        "platform": meta.platform,
        "inputs": _tensor_meta(meta.inputs),
        "outputs": _tensor_meta(meta.outputs),
    }


def _error_reply(exc: ServingError) -> Reply:
    reply = Reply(exc.status_code, exc.to_json())
    if exc.variant is not None and exc.version is not None:
        reply.headers.update({VARIANT_HEADER: exc.variant, VERSION_HEADER: exc.version})
    return reply


class ProtocolEndpoints:
    """Endpoint semantics over one Router (one model per router)."""

    def __init__(self, router: Router, is_admin: Callable[[Mapping[str, str]], bool] | None = None) -> None:
        self.router = router
        # Whether a request carries the admin credential (which may always use the override header).
        self.is_admin = is_admin

    def _check_model(self, name: str) -> None:
        if name != self.router.config.model_name:
            raise ModelNotFound(f"unknown model {clip(name)!r}; this server serves {self.router.config.model_name!r}")

    def _override(self, headers: Mapping[str, str]) -> str | None:
        """The override header's value when this request may use it (enabled in the config, or an admin caller)."""
        cfg = self.router.config
        value = headers.get(cfg.override_header.lower())
        if value is None or cfg.override_enabled or (self.is_admin is not None and self.is_admin(headers)):
            return value
        return None

    @staticmethod
    def live() -> dict[str, Any]:
        return {"live": True}

    async def ready(self) -> dict[str, Any]:
        return {"ready": await self.router.ready()}

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}

    async def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        self._check_model(name)
        _, meta = await self.router.metadata(version)
        return metadata_body(meta, name, self.versions(version))

    async def model_ready(self, name: str, version: str | None = None) -> dict[str, Any]:
        self._check_model(name)
        return {"name": name, "ready": await self.router.ready(version)}

    def versions(self, version: str | None = None) -> list[str]:
        """The versions a metadata answer lists: the one asked for, else every served one."""
        return [version] if version else sorted({v.version for v in self.router.config.variants})

    async def infer(
        self, name: str, version: str | None, raw: bytes, headers: Mapping[str, str], started: float | None = None
    ) -> Reply:
        """Decode a v2 infer body, route it, encode the answer; counts the request whatever happens."""
        return await self._serve(name, version, raw, headers, started, plain=False)

    async def predict(self, name: str, raw: bytes, headers: Mapping[str, str], started: float | None = None) -> Reply:
        """Plain JSON for humans: {"instances": [[...], ...]} -> {"predictions": [...]}."""
        return await self._serve(name, None, raw, headers, started, plain=True)

    async def handle(
        self,
        name: str,
        version: str | None,
        headers: Mapping[str, str],
        started: float | None,
        *,
        decode: Callable[[], Awaitable[InferRequest]],
        encode: Callable[[Routed, InferRequest, str | None], T],
        fail: Callable[[ServingError], T],
    ) -> T:
        """The one infer path of every transport (REST, gRPC): decode, route (sticky key and override from
        `headers`, lower-cased names), record the arm for outcomes, encode (with the request id to report outcomes
        against, when outcomes are on); a ServingError becomes `fail(exc)`, a bug `fail` of a 500. Counts the
        request whatever happens, against the variant that served or failed it, with its HTTP status."""
        t0 = started if started is not None else time.perf_counter()
        cfg = self.router.config
        variant, model_version = UNROUTED, UNROUTED
        status = 200
        try:
            self._check_model(name)
            request = await decode()
            sticky = (headers.get(cfg.sticky_header.lower()) or None) if cfg.sticky_header else None  # "" = none
            if sticky is not None and not is_printable_id(sticky):
                # The unit key is a store key like a request id: bounded the same way (a 400, never truncated or
                # hashed, so two units can never share an entry without the client knowing).
                raise InvalidInput(
                    f"header {cfg.sticky_header!r} must be 1 to {MAX_ID_LENGTH} printable ASCII characters"
                )
            routed = await self.router.infer(
                request, sticky_key=sticky, override=self._override(headers), version=version
            )
            variant, model_version = routed.variant, routed.version
            request_id = None
            if self.router.outcomes.enabled:
                request_id = request.id or secrets.token_hex(12)
                if routed.enrolled:
                    self.router.outcomes.record(request_id, sticky, variant, model_version)
            result = encode(routed, request, request_id)
        except ServingError as exc:
            status = exc.status_code
            if exc.variant is not None and exc.version is not None:
                variant, model_version = exc.variant, exc.version
            result = fail(exc)
        except Exception:
            # A bug, not the client's fault: still answered and counted (every 5xx shows in the metrics).
            log.exception("unhandled error serving %s", clip(name))
            status = 500
            result = fail(ServingError("internal error"))
        self.router.metrics.request(model_version, variant, status, time.perf_counter() - t0)
        return result

    async def _serve(
        self,
        name: str,
        version: str | None,
        raw: bytes,
        headers: Mapping[str, str],
        started: float | None,
        *,
        plain: bool,
    ) -> Reply:
        encoding = JSON_OUTPUTS

        async def decode() -> InferRequest:
            nonlocal encoding
            if plain:
                if HEADER_LENGTH in headers:
                    raise UnsupportedMediaType("the binary tensor data extension is for /v2/models/NAME/infer")
                return await self._plain_request(parse_json(raw))
            header, binary = split_body(raw, headers.get(HEADER_LENGTH))
            body = parse_json(header)
            cfg = self.router.config
            check_request_size(body, cfg.max_request_rows, cfg.max_request_elements)
            request = decode_infer_request(body, raw if binary is None else None, binary)
            encoding = output_encoding(body)
            return request

        def encode(routed: Routed, request: InferRequest, request_id: str | None) -> Reply:
            reply = self._plain_reply(routed) if plain else self._v2_reply(routed, request, encoding)
            if request_id is not None:
                reply.headers[REQUEST_ID_HEADER] = request_id
            return reply

        return await self.handle(name, version, headers, started, decode=decode, encode=encode, fail=_error_reply)

    def outcomes(self, name: str, raw: bytes) -> Reply:
        """Join reported outcomes to the arms that served them: 202 with counts (unknown ids are not an error of
        the batch; they are counted in `sluice_outcomes_unmatched_total` and listed, the first 100)."""
        self._check_model(name)
        outcomes = self.router.outcomes
        if outcomes.config is None:
            raise ModelNotFound(f"model {name!r} takes no outcomes: no experiment configures outcome metrics")
        items = parse_outcomes(parse_json(raw), outcomes.config)
        matched, missed = outcomes.report(items)
        return Reply(202, {"accepted": matched, "unmatched": len(missed), "unmatched_ids": missed[:100]})

    @staticmethod
    def _headers(routed: Routed) -> dict[str, str]:
        return {VARIANT_HEADER: routed.variant, VERSION_HEADER: routed.version}

    def _v2_reply(self, routed: Routed, request: InferRequest, encoding: OutputEncoding) -> Reply:
        body = encode_infer_response(routed.response, request.outputs)
        body["model_version"] = routed.version
        if request.id is not None:
            body["id"] = request.id
        headers = self._headers(routed)
        if not encoding.any:
            return Reply(200, body, headers)
        payload, header_length = encode_binary_response(body, encoding, routed.response.outputs)
        headers[HEADER_LENGTH] = str(header_length)
        return Reply(200, body, headers, payload)

    async def _plain_request(self, body: Any) -> InferRequest:
        """Instances become the model's single input, cast to its datatype."""
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            raise InvalidInput('body must be {"instances": [[...], ...]} with at least one instance')
        limit = self.router.config.max_request_rows
        if len(body["instances"]) > limit:
            raise PayloadTooLarge(f"{len(body['instances'])} instances exceed the limit of {limit} rows per request")
        _, meta = await self.router.metadata()
        if len(meta.inputs) != 1:
            raise InvalidInput(f"plain predict needs a single-input model; this one has {len(meta.inputs)} inputs")
        spec = meta.inputs[0]
        dtype = V2_TO_NUMPY[spec.datatype]
        try:
            array = np.asarray(body["instances"])
        except ValueError as exc:
            raise InvalidInput("'instances' is ragged: every instance must have the same shape") from exc
        if array.dtype.kind not in "biuf" or dtype.kind not in "biuf":
            raise InvalidInput(f"'instances' must be numbers for input {spec.name!r} ({spec.datatype})")
        return InferRequest(inputs=(Tensor(spec.name, array.astype(dtype)),))

    def _plain_reply(self, routed: Routed) -> Reply:
        outputs = routed.response.outputs
        probs = next((t for t in outputs if t.data.dtype.kind == "f" and t.data.ndim == 2), None)
        first = outputs[0].data.tolist() if outputs else []
        body: dict[str, Any] = {"predictions": first, "model_version": routed.version}
        if probs is not None and probs is not outputs[0]:
            body["probabilities"] = probs.data.tolist()
        return Reply(200, body, self._headers(routed))
