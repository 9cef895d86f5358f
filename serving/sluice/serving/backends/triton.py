"""A VariantBackend that forwards to a tritonserver over gRPC (`tritonclient.grpc.aio`: measured faster than HTTP).

One gRPC channel per backend, created on first use inside the running event loop and shared by every request
(HTTP/2 multiplexes them); nothing is opened per request. The model's config is read once: it carries the
Sluice version labels (see `sluice.serving.triton.repository`) and which tensors Triton reshapes, so responses
come back with the version label and exactly the shapes onnxruntime gives for the same model.

While ``max_in_flight`` calls are open to Triton, further requests queue and go as one Triton call (``coalesce``,
on unless the ServingConfig turns batching off; see `backends/coalesce.py`): under load this cuts Triton's CPU and
the router's gRPC cost per request (benchmarks/e2e_triton.py), and an idle backend still sends at once.
``parameters["batch_size"]`` of a response is the row count of the call Sluice sent (Triton may batch further on
its side). Requests larger than ``max_batch_size`` are split and rejoined.

Errors map onto `sluice.serving.errors`: unreachable / not ready -> BackendUnavailable (503), deadline ->
BackendTimeout (504), rejected input -> InvalidInput (400), unknown model or version -> ModelNotFound (404),
anything else Triton reports -> BackendError (500).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from sluice.serving.backends.coalesce import Coalescer
from sluice.serving.config import ServingConfig, VariantConfig
from sluice.serving.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidInput,
    ModelNotFound,
    ServingError,
)
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec
from sluice.serving.triton.repository import labels_from_config

_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class _ModelInfo:
    """What the backend learns once from the model config and metadata."""

    number: str  # Triton version number asked for ("" lets Triton pick the latest)
    labels: dict[str, str]  # Triton version number -> Sluice label
    max_batch_size: int  # 0: the model does not batch
    input_reshape: dict[str, tuple[int, ...]]  # tensors whose model shape differs from the client-visible one
    output_reshape: dict[str, tuple[int, ...]]
    metadata: ModelMetadata


def _map_error(exc: BaseException, what: str) -> ServingError:
    """Turn a tritonclient / gRPC failure into the data plane's error with the right HTTP status."""
    if isinstance(exc, ServingError):
        return exc
    status = ""
    message = str(exc)
    status_fn = getattr(exc, "status", None)
    if callable(status_fn):
        status = str(status_fn() or "")
        message_fn = getattr(exc, "message", None)
        message = str(message_fn() if callable(message_fn) else exc)
    text = f"triton {what}: {message}"
    if "DEADLINE_EXCEEDED" in status:
        return BackendTimeout(text)
    if "INVALID_ARGUMENT" in status:
        return InvalidInput(text)
    if "NOT_FOUND" in status:
        return ModelNotFound(text)
    lowered = message.lower()
    if "UNAVAILABLE" in status or "CANCELLED" in status or isinstance(exc, OSError):
        if "unknown model" in lowered or "is not found" in lowered:
            return ModelNotFound(text)
        return BackendUnavailable(text)
    return BackendError(text)


class TritonBackend:
    """One model version on a tritonserver, addressed by its Sluice label (or the latest when none is given)."""

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        version: str | None = None,
        timeout_s: float = 10.0,
        coalesce: bool = True,
        max_in_flight: int = 2,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if "://" in url.removeprefix("grpc://") or not url.rpartition(":")[2].isdigit():
            raise ValueError(f"triton endpoint {url!r} must be the gRPC address host:port (or grpc://host:port)")
        self.url = url.removeprefix("grpc://")
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self.coalesce = coalesce
        self.max_in_flight = max_in_flight
        self._coalescers: dict[tuple[Any, ...], Coalescer[tuple[InferRequest, int], InferResponse]] = {}
        self._client: Any = None
        self._info: _ModelInfo | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    # -- connection and model info -----------------------------------------------------------------------------
    def _get_client(self) -> Any:
        if self._closed:
            raise BackendUnavailable(f"triton backend for {self.model_name!r} is closed")
        if self._client is None:
            import tritonclient.grpc.aio as grpcclient

            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def _model_info(self) -> _ModelInfo:
        if self._info is not None:
            return self._info
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._info is None:
                self._info = await self._load_info()
        return self._info

    async def _load_info(self) -> _ModelInfo:
        client = self._get_client()
        try:
            config = (await client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout_s))[
                "config"
            ]
        except Exception as exc:
            raise _map_error(exc, f"model config of {self.model_name!r}") from exc
        labels = {str(n): label for n, label in labels_from_config(config.get("parameters", {})).items()}
        number = ""
        if self.version is not None:
            matches = [n for n, label in labels.items() if label == self.version]
            if matches:
                number = matches[0]
            elif self.version.isdigit():
                number = self.version  # a bare Triton number, for repositories Sluice did not write
            else:
                raise ModelNotFound(
                    f"model {self.model_name!r} on triton has no version labelled {self.version!r} "
                    f"(it has {sorted(labels.values())})"
                )
        try:
            meta = await client.get_model_metadata(self.model_name, number, as_json=True, client_timeout=self.timeout_s)
        except Exception as exc:
            raise _map_error(exc, f"metadata of {self.model_name!r}") from exc
        max_batch_size = int(config.get("max_batch_size", 0))
        batched = max_batch_size > 0
        input_reshape = {
            t["name"]: tuple(int(d) for d in t["reshape"].get("shape", ()))
            for t in config.get("input", ())
            if "reshape" in t
        }
        output_reshape = {
            t["name"]: tuple(int(d) for d in t["reshape"].get("shape", ()))
            for t in config.get("output", ())
            if "reshape" in t
        }
        kinds = {g.get("kind", "KIND_CPU") for g in config.get("instance_group", ())}

        def specs(tensors: list[dict[str, Any]], reshape: dict[str, tuple[int, ...]]) -> tuple[TensorSpec, ...]:
            out = []
            for t in tensors:
                shape = tuple(int(d) for d in t.get("shape", ()))
                if t["name"] in reshape and batched:
                    shape = (-1, *reshape[t["name"]])
                out.append(TensorSpec(t["name"], t["datatype"], shape))
            return tuple(out)

        served = number or max(meta.get("versions", ["0"]), key=int)
        metadata = ModelMetadata(
            name=self.model_name,
            version=labels.get(served, served),
            platform=str(meta.get("platform", "")),
            inputs=specs(meta.get("inputs", []), input_reshape),
            outputs=specs(meta.get("outputs", []), output_reshape),
            provider="CUDAExecutionProvider" if "KIND_GPU" in kinds else "CPUExecutionProvider",
        )
        return _ModelInfo(number, labels, max_batch_size, input_reshape, output_reshape, metadata)

    # -- VariantBackend protocol ---------------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        info = await self._model_info()
        limit = info.max_batch_size
        rows = {t.data.shape[0] if t.data.ndim else -1 for t in request.inputs}
        n = rows.pop() if len(rows) == 1 else -1
        if limit and n > limit:
            # Triton refuses batches above max_batch_size; other backends take any size, so split and rejoin.
            parts = [
                dataclasses.replace(
                    request, inputs=tuple(Tensor(t.name, t.data[i : i + limit]) for t in request.inputs)
                )
                for i in range(0, n, limit)
            ]
            answers = await asyncio.gather(*(self._infer_once(info, part) for part in parts))
            merged = tuple(
                Tensor(t.name, np.concatenate([a.outputs[k].data for a in answers]))
                for k, t in enumerate(answers[0].outputs)
            )
            return dataclasses.replace(answers[0], outputs=merged)
        if self.coalesce and limit and n > 0 and not request.parameters:
            return await self._enqueue(info, request, n)
        return await self._infer_once(info, request)

    # -- coalescing ----------------------------------------------------------------------------------------------
    # Requests with the same input signature share a Coalescer: while `max_in_flight` calls are open to Triton,
    # later requests queue and go together in the next call (one gRPC round trip and one Triton request instead of
    # many, which is most of the router's and the server's per-request cost). An idle backend sends at once.
    async def _enqueue(self, info: _ModelInfo, request: InferRequest, rows: int) -> InferResponse:
        key = (request.outputs, tuple((t.name, t.data.dtype.str, t.data.shape[1:]) for t in request.inputs))
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            coalescer = self._coalescers[key] = Coalescer(
                partial(self._run_group, info), max_rows=info.max_batch_size, max_in_flight=self.max_in_flight
            )
        return await coalescer.submit((request, rows), rows)

    async def _run_group(
        self, info: _ModelInfo, group: list[tuple[InferRequest, int]]
    ) -> list[InferResponse | BaseException]:
        """One Triton call for the whole group, split back per request; a rejected group is retried one by one."""
        if len(group) == 1:
            request, rows = group[0]
            answer = await self._infer_once(info, request)
            return [dataclasses.replace(answer, parameters={"batch_size": str(rows)})]
        first = group[0][0]
        merged = InferRequest(
            inputs=tuple(
                Tensor(t.name, np.concatenate([r.inputs[i].data for r, _ in group])) for i, t in enumerate(first.inputs)
            ),
            outputs=first.outputs,
        )
        try:
            answer = await self._infer_once(info, merged)
        except (InvalidInput, BackendError):
            # One request may be at fault (a value the model rejects): answer each on its own.
            singles = await asyncio.gather(*(self._infer_once(info, r) for r, _ in group), return_exceptions=True)
            return [
                s if isinstance(s, BaseException) else dataclasses.replace(s, parameters={"batch_size": str(n)})
                for s, (_, n) in zip(singles, group, strict=True)
            ]
        total = str(sum(n for _, n in group))
        results: list[InferResponse | BaseException] = []
        start = 0
        for request, rows in group:
            outputs = tuple(Tensor(t.name, t.data[start : start + rows]) for t in answer.outputs)
            start += rows
            results.append(
                dataclasses.replace(answer, outputs=outputs, id=request.id, parameters={"batch_size": total})
            )
        return results

    async def _infer_once(self, info: _ModelInfo, request: InferRequest) -> InferResponse:
        import tritonclient.grpc.aio as grpcclient

        client = self._get_client()
        batched = info.max_batch_size > 0
        inputs = []
        for tensor in request.inputs:
            data = tensor.data
            if tensor.name in info.input_reshape and batched and data.ndim == 1 + len(info.input_reshape[tensor.name]):
                data = data.reshape(data.shape[0], -1)  # the client-visible shape Triton expects
            try:
                item = grpcclient.InferInput(tensor.name, list(data.shape), tensor.datatype)
                item.set_data_from_numpy(data)
            except Exception as exc:
                raise InvalidInput(f"input {tensor.name!r}: {exc}") from exc
            inputs.append(item)
        outputs = [grpcclient.InferRequestedOutput(name) for name in request.outputs] or None
        try:
            # The gRPC deadline bounds the call (no asyncio.wait_for: it costs a task per request); a dead server
            # fails fast with UNAVAILABLE because calls do not wait for the channel to become ready.
            result = await client.infer(
                self.model_name,
                inputs,
                model_version=info.number,
                outputs=outputs,
                request_id=request.id or "",
                client_timeout=self.timeout_s,
            )
        except Exception as exc:
            raise _map_error(exc, f"inference on {self.model_name!r}") from exc
        response = result.get_response()
        tensors = []
        for output in response.outputs:
            array = result.as_numpy(output.name)
            if array is None:
                raise BackendError(f"triton returned no data for output {output.name!r}")
            shape = info.output_reshape.get(output.name)
            if shape is not None and batched:
                array = array.reshape((array.shape[0], *shape))
            tensors.append(Tensor(output.name, np.asarray(array)))
        version = str(response.model_version)
        return InferResponse(
            model_name=self.model_name,
            model_version=info.labels.get(version, version),
            outputs=tuple(tensors),
            id=request.id,
        )

    async def ready(self) -> bool:
        try:
            client = self._get_client()
            number = self._info.number if self._info is not None else ""
            if not number and self.version is not None:
                number = (await self._model_info()).number
            return bool(await client.is_model_ready(self.model_name, number, client_timeout=_PROBE_TIMEOUT_S))
        except Exception:
            return False

    async def metadata(self) -> ModelMetadata:
        return (await self._model_info()).metadata

    async def close(self) -> None:
        self._closed = True
        closed = BackendUnavailable("the triton backend was closed during the request")
        for coalescer in list(self._coalescers.values()):
            await coalescer.close(closed)
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- beyond the protocol -------------------------------------------------------------------------------------
    async def not_ready_reason(self) -> str | None:
        """Why the model is not ready (Triton's load error), or None when it is; for status and logs."""
        if await self.ready():
            return None
        try:
            index = await self._get_client().get_model_repository_index(as_json=True, client_timeout=_PROBE_TIMEOUT_S)
        except Exception as exc:
            return str(_map_error(exc, "repository index"))
        entries = [m for m in index.get("models", []) if m.get("name") == self.model_name]
        if not entries:
            return f"model {self.model_name!r} is not in triton's model repository"
        reasons = [
            f"{m.get('state', 'UNKNOWN')}: {m['reason']}" if m.get("reason") else m.get("state", "UNKNOWN")
            for m in entries
        ]
        return "; ".join(reasons)


def from_variant(variant: VariantConfig, config: ServingConfig) -> TritonBackend:
    """Registry entry: ``variant.endpoint`` is the tritonserver's gRPC address; the version label is the variant's."""
    if not variant.endpoint:
        raise ValueError(
            f"variant {variant.name!r}: the triton backend needs 'endpoint' (the tritonserver gRPC address host:port)"
        )
    return TritonBackend(
        variant.endpoint,
        config.model_name,
        version=variant.version,
        timeout_s=config.request_timeout_s,
        coalesce=config.batching.enabled,
        max_in_flight=config.batching.max_in_flight,
    )
