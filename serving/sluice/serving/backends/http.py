"""A Backend that forwards to any Open Inference Protocol REST server over a pooled keep-alive HTTP client.

Lets the standalone router front servers it does not embed (a model server, another router) and is the
backend the router-overhead benchmark measures.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.errors import BackendError, BackendTimeout, BackendUnavailable, InvalidInput
from sluice.serving.protocol.v2_codec import decode_response, encode_request
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, TensorSpec


class HttpBackend:
    """Calls `{endpoint}/v2/models/{model}[/versions/{version}]/...` of a v2 REST server."""

    def __init__(
        self, endpoint: str, model: str, *, timeout_s: float = 10.0, max_connections: int = 64, version: str = ""
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.model = model
        self._base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._client = httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._metadata: ModelMetadata | None = None

    async def _request(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        try:
            return await self._client.request(
                method, self._base + path, content=body, headers={"content-type": "application/json"}
            )
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"backend {self.endpoint} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"backend {self.endpoint} unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            message = str(resp.json().get("error", resp.text))
        except (ValueError, AttributeError):
            message = resp.text[:200]
        if resp.status_code < 500:
            raise InvalidInput(message)
        if resp.status_code in (502, 503):
            raise BackendUnavailable(f"backend answered {resp.status_code}: {message}")
        if resp.status_code == 504:
            raise BackendTimeout(f"backend answered 504: {message}")
        raise BackendError(f"backend answered {resp.status_code}: {message}")

    async def infer(self, request: InferRequest) -> InferResponse:
        body = json.dumps(encode_request(request), separators=(",", ":")).encode()
        resp = await self._request("POST", "/infer", body)
        self._raise_for(resp)
        try:
            return decode_response(resp.json())
        except (ValueError, InvalidInput) as exc:
            raise BackendError(f"backend {self.endpoint} sent an unreadable response") from exc

    async def ready(self) -> bool:
        try:
            resp = await self._request("GET", "/ready")
        except (BackendUnavailable, BackendTimeout):
            return False
        return resp.status_code == 200

    async def metadata(self) -> ModelMetadata:
        if self._metadata is None:
            resp = await self._request("GET", "")
            if resp.status_code == 404:
                raise BackendUnavailable(f"backend {self.endpoint} does not serve model {self.model!r}")
            self._raise_for(resp)
            self._metadata = _parse_metadata(resp.json())
        return self._metadata

    async def close(self) -> None:
        await self._client.aclose()


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
