"""The router core: picks a variant per request, calls its backend, mirrors shadows, falls back, counts.

Transport-free (hosts feed it decoded requests and header values) so the Ray ingress and the standalone
router share it. The live configuration is one immutable `_State`; `update()` swaps the reference atomically and
every request keeps the state it started with, so a weight change never fails or drops an in-flight request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sluice.serving.backends.base import VariantBackend
from sluice.serving.capture import Captures
from sluice.serving.config import STABLE, DriftProfileConfig, ServingConfig, VariantConfig
from sluice.serving.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigRejected,
    InvalidInput,
    ModelNotFound,
    ServingError,
    clip,
    hide_uris,
)
from sluice.serving.features import FeatureCounts
from sluice.serving.metrics import RouterMetrics
from sluice.serving.outcomes import Outcomes
from sluice.serving.scores import Scored, compare, score_outputs
from sluice.serving.split import EveryNth, SmoothWeighted, sticky_pick
from sluice.serving.tensors import InferRequest, InferResponse, ModelMetadata
from sluice.serving.validation import validate_request

log = logging.getLogger(__name__)
FEATURE_ERROR_LOG_INTERVAL_S = 60.0  # a failing feature counter logs its traceback at most this often

VariantBackendFactory = Callable[[VariantConfig, ServingConfig], VariantBackend]

# Errors after which a canary request is retried on stable when `fallback_to_stable` is on (5xx-class only).
_FALLBACK_ERRORS = (BackendError, BackendUnavailable, BackendTimeout)


def _backend_key(v: VariantConfig) -> tuple[str, str, str, str | None, str | None]:
    """Two variant configs with the same key can share one backend (weights do not matter)."""
    return (v.name, v.version, v.uri, v.sha256, v.endpoint)


@dataclass(frozen=True, slots=True)
class Routed:
    """A primary response and who served it."""

    response: InferResponse
    variant: str
    version: str
    fell_back_from: str | None = None
    enrolled: bool = False  # the router chose the arm (split or unit hash), so its outcomes are arm samples


@dataclass(eq=False)
class _State:
    config: ServingConfig
    backends: dict[str, VariantBackend]
    splitter: SmoothWeighted
    mirror: EveryNth | None
    names: tuple[str, ...]
    weights: tuple[int, ...]
    metadata: dict[str, ModelMetadata] = field(default_factory=dict)
    inflight: int = 0


def _make_state(config: ServingConfig, backends: Mapping[str, VariantBackend]) -> _State:
    missing = [v.name for v in config.variants if v.name not in backends]
    if missing:
        raise InvalidInput(f"no backend for variant(s) {missing}")
    names = tuple(v.name for v in config.variants)
    weights = tuple(v.weight for v in config.variants)
    mirror = EveryNth(config.mirror.percent) if config.mirror and config.mirror.percent > 0 else None
    return _State(
        config=config,
        backends={n: backends[n] for n in names},
        splitter=SmoothWeighted(names, weights),
        mirror=mirror,
        names=names,
        weights=weights,
    )


def _binned(config: ServingConfig) -> tuple[DriftProfileConfig, ...]:
    """The drift profiles counted on bins (a capturing policy has no bins yet: `Captures` samples it)."""
    return tuple(p for p in config.drift if p.capture is None)


class Router:
    """Routes requests of one model across its variants (stable, canary, experiment arms, shadow)."""

    def __init__(
        self,
        config: ServingConfig,
        backends: Mapping[str, VariantBackend],
        *,
        factory: VariantBackendFactory | None = None,
        metrics: RouterMetrics | None = None,
        max_shadow_in_flight: int = 64,
    ) -> None:
        self._state = _make_state(config, backends)
        self._factory = factory
        self.metrics = metrics if metrics is not None else RouterMetrics(config.model_name)
        self.max_shadow_in_flight = max_shadow_in_flight
        self._shadows: set[asyncio.Task[None]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self.outcomes = Outcomes(config.outcomes, lambda: self.metrics.model)
        self.metrics.registry.register(self.outcomes.totals)
        self.features = FeatureCounts(_binned(config), lambda: self.metrics.model)
        self.captures = Captures(config.drift)
        self._feature_log_after = 0.0  # monotonic time before which feature errors are counted, not logged
        self.metrics.registry.register(self.features)
        self._publish_weights()

    @property
    def config(self) -> ServingConfig:
        return self._state.config

    # ---- assignment -------------------------------------------------------------------------------------------

    def choose(self, *, sticky_key: str | None = None, override: str | None = None, version: str | None = None) -> str:
        """The variant for one request: override > URL version > sticky bucket > control (enrolment 'unit', no
        unit id) > weighted split."""
        return self._choose(self._state, sticky_key, override, version)

    @staticmethod
    def _choose(state: _State, sticky_key: str | None, override: str | None, version: str | None) -> str:
        if override is not None:
            if override not in state.backends:
                raise InvalidInput(
                    f"header {state.config.override_header!r}: unknown variant {clip(override)!r}; "
                    f"allowed: {list(state.names)}"
                )
            return override
        if version is not None:
            matches = [v for v in state.config.variants if v.version == version]
            if not matches:
                served = [v.version for v in state.config.variants]
                raise ModelNotFound(
                    f"model {state.config.model_name!r} has no version {clip(version)!r}; served: {served}"
                )
            return max(matches, key=lambda v: v.weight).name
        if sticky_key is not None:
            return sticky_pick(sticky_key, state.names, state.weights, state.config.sticky_salt)
        if state.config.enrolment == "unit":
            return state.config.control
        return state.splitter.pick()

    @staticmethod
    def _enrolled(state: _State, sticky_key: str | None, override: str | None, version: str | None) -> bool:
        """Whether the router assigned the arm: forced requests (override header, URL version) never count, and
        with enrolment 'unit' only requests carrying a unit id do."""
        if override is not None or version is not None:
            return False
        return sticky_key is not None or state.config.enrolment == "all"

    # ---- serving ----------------------------------------------------------------------------------------------

    async def infer(
        self,
        request: InferRequest,
        *,
        sticky_key: str | None = None,
        override: str | None = None,
        version: str | None = None,
    ) -> Routed:
        """Route, validate against the chosen variant's metadata, call it; mirror and fall back as configured."""
        state = self._state
        state.inflight += 1
        try:
            variant = self._choose(state, sticky_key, override, version)
            deadline = time.monotonic() + state.config.request_timeout_s
            started = time.perf_counter()
            try:
                response = await self._call(state, variant, request, deadline)
                routed = Routed(
                    response,
                    variant,
                    state.config.variant(variant).version,
                    enrolled=self._enrolled(state, sticky_key, override, version),
                )
            except ServingError as exc:
                can_fall_back = state.config.fallback_to_stable and override is None and variant != STABLE
                if not (isinstance(exc, _FALLBACK_ERRORS) and can_fall_back and STABLE in state.backends):
                    exc.variant, exc.version = variant, state.config.variant(variant).version
                    raise
                # The canary's failure still counts against it, or fallback would hide a bad canary from analysis.
                self.metrics.request(
                    state.config.variant(variant).version, variant, exc.status_code, time.perf_counter() - started
                )
                log.warning("variant %s failed (%s); falling back to %s", variant, exc.message, STABLE)
                try:
                    response = await self._call(state, STABLE, request, deadline)
                except ServingError as stable_exc:
                    stable_exc.variant, stable_exc.version = STABLE, state.config.variant(STABLE).version
                    raise
                routed = Routed(
                    response,
                    STABLE,
                    state.config.variant(STABLE).version,
                    fell_back_from=variant,
                    enrolled=self._enrolled(state, sticky_key, override, version),
                )
            self._observe(routed, request)
            self._maybe_shadow(state, routed, request)
            return routed
        finally:
            state.inflight -= 1

    async def _call(self, state: _State, variant: str, request: InferRequest, deadline: float) -> InferResponse:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BackendTimeout(f"variant {variant!r}: no time left of request_timeout_s")
        backend = state.backends[variant]
        try:
            async with asyncio.timeout(remaining):
                meta = await self._metadata(state, variant)
                validate_request(request, meta)
                return await backend.infer(request)
        except ServingError:
            raise
        except TimeoutError as exc:
            raise BackendTimeout(
                f"variant {variant!r} did not answer within {state.config.request_timeout_s:g} s"
            ) from exc
        except Exception as exc:
            # An unexpected exception means the backend is unusable right now: 503, like an unreachable one.
            log.exception("backend of variant %s failed", variant)
            raise BackendUnavailable(f"variant {variant!r}: backend failed: {type(exc).__name__}") from exc

    async def _metadata(self, state: _State, variant: str) -> ModelMetadata:
        meta = state.metadata.get(variant)
        if meta is None:
            try:
                meta = await state.backends[variant].metadata()
            except ServingError:
                raise
            except Exception as exc:
                raise BackendUnavailable(f"variant {variant!r}: metadata unavailable: {type(exc).__name__}") from exc
            state.metadata[variant] = meta
        return meta

    def _observe(self, routed: Routed, request: InferRequest) -> None:
        scored = score_outputs(routed.response.outputs)
        if scored is not None:
            self.metrics.scores(routed.version, routed.variant, scored.scores.tolist())
        if self.features.active or self.captures.active:
            try:
                if self.features.active:
                    self.features.observe(routed.version, routed.variant, request.inputs, scored)
                if self.captures.active:
                    self.captures.observe(routed.version, request.inputs, scored)
            except Exception:
                # Drift counting is a side channel: a bug there must not turn an answered request into a 500.
                self.metrics.feature_error(routed.version, routed.variant)
                now = time.monotonic()
                if now >= self._feature_log_after:
                    self._feature_log_after = now + FEATURE_ERROR_LOG_INTERVAL_S
                    log.exception("feature counting failed (logged at most every %g s)", FEATURE_ERROR_LOG_INTERVAL_S)
        batch = routed.response.parameters.get("batch_size")
        if batch is not None and str(batch).isdigit():
            self.metrics.batch_size(routed.version, routed.variant, int(batch))

    # ---- shadow -----------------------------------------------------------------------------------------------

    def _maybe_shadow(self, state: _State, routed: Routed, request: InferRequest) -> None:
        mirror = state.config.mirror
        if mirror is None or state.mirror is None or mirror.variant == routed.variant:
            return
        if not state.mirror.sample():
            return
        version = state.config.variant(mirror.variant).version
        if len(self._shadows) >= self.max_shadow_in_flight:
            self.metrics.shadow_drop(version, mirror.variant)
            return
        primary = score_outputs(routed.response.outputs)
        state.inflight += 1
        task = asyncio.get_running_loop().create_task(self._shadow(state, mirror.variant, version, request, primary))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self, state: _State, variant: str, version: str, request: InferRequest, primary: Scored | None
    ) -> None:
        try:
            deadline = time.monotonic() + state.config.request_timeout_s
            response = await self._call(state, variant, request, deadline)
        except Exception as exc:
            self.metrics.shadow_outcome(version, variant, "error")
            log.debug("shadow %s failed: %s", variant, exc)
            return
        finally:
            state.inflight -= 1
        shadow = score_outputs(response.outputs)
        agree, diffs = compare(primary, shadow)
        self.metrics.shadow_outcome(version, variant, "agree" if agree else "disagree", diffs.tolist())

    async def drain_shadows(self) -> None:
        """Wait for in-flight shadow calls (tests and graceful shutdown)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)

    # ---- status -----------------------------------------------------------------------------------------------

    async def metadata(self, version: str | None = None) -> tuple[str, ModelMetadata]:
        """(variant, metadata) of the given version, or of the variant with the largest weight."""
        state = self._state
        if version is None:
            variant = max(state.config.variants, key=lambda v: v.weight).name
        else:
            variant = self._choose(state, None, None, version)
        return variant, await self._metadata(state, variant)

    async def ready(self, version: str | None = None) -> bool:
        """Every variant with traffic (or the given version) is loaded; also refreshes the loaded gauge."""
        state = self._state
        variants = [v for v in state.config.variants if (v.version == version if version else v.weight > 0)]
        if not variants:
            if version is not None:
                raise ModelNotFound(f"model {state.config.model_name!r} has no version {clip(version)!r}")
            return False
        results = await asyncio.gather(*(self._ready_one(state, v) for v in state.config.variants))
        by_name = dict(zip([v.name for v in state.config.variants], results, strict=True))
        return all(by_name[v.name] for v in variants)

    async def _ready_one(self, state: _State, v: VariantConfig) -> bool:
        try:
            ok = await asyncio.wait_for(state.backends[v.name].ready(), timeout=state.config.request_timeout_s)
            provider = (await self._metadata(state, v.name)).provider if ok else "none"
        except Exception as exc:
            log.debug("readiness of %s failed: %s", v.name, exc)
            ok, provider = False, "none"
        self.metrics.set_loaded(v.version, v.name, provider, ok)
        return ok

    # ---- live configuration -----------------------------------------------------------------------------------

    def update(self, config: ServingConfig, backends: Mapping[str, VariantBackend] | None = None) -> None:
        """Swap in new weights/mirror/variants atomically; backends no longer used close once their requests end."""
        old = self._state
        new = _make_state(config, backends if backends is not None else old.backends)
        self._state = new
        self.metrics.model = config.model_name
        self.outcomes.configure(config.outcomes)
        self.features.configure(_binned(config))
        self.captures.configure(config.drift)
        self._publish_weights()
        retired = [b for b in old.backends.values() if all(b is not nb for nb in new.backends.values())]
        if retired:
            self._retire(old, retired)

    async def apply(
        self, config: ServingConfig, *, verify: bool = False, uri_schemes: tuple[str, ...] | None = None
    ) -> None:
        """Like update(), creating backends for new or changed variants with the factory.

        With `uri_schemes`, a new variant whose URI has another scheme is refused; with `verify`, every new
        backend must answer ready and give its metadata within `request_timeout_s` before the swap. A refused
        config raises `ConfigRejected` (422), closes what it created and leaves the config in service as it was.
        """
        old = self._state
        by_key = {_backend_key(old.config.variant(n)): b for n, b in old.backends.items()}
        new_variants = [v for v in config.variants if _backend_key(v) not in by_key]
        if uri_schemes is not None:
            for v in new_variants:
                scheme = urlsplit(v.uri).scheme.lower()
                if scheme not in uri_schemes:
                    raise ConfigRejected(
                        f"variant {v.name!r}: uri scheme {scheme!r} is not allowed here; allowed: {list(uri_schemes)}"
                    )
        if new_variants and self._factory is None:
            raise InvalidInput(
                f"variant {new_variants[0].name!r} is new and this router has no backend factory to create it"
            )
        backends: dict[str, VariantBackend] = {}
        created: list[VariantBackend] = []
        try:
            for v in config.variants:
                existing = by_key.get(_backend_key(v))
                if existing is not None:
                    backends[v.name] = existing
                elif self._factory is not None:
                    backends[v.name] = self._factory(v, config)
                    created.append(backends[v.name])
            if verify:
                for v in new_variants:
                    await self._verify(v, backends[v.name], config.request_timeout_s)
        except BaseException:
            for b in created:
                with contextlib.suppress(Exception):
                    await b.close()
            raise
        self.update(config, backends)

    @staticmethod
    async def _verify(v: VariantConfig, backend: VariantBackend, timeout_s: float) -> None:
        """The new variant's model is loaded and describes itself, or ConfigRejected says why (URIs hidden)."""
        try:
            async with asyncio.timeout(timeout_s):
                if await backend.ready():
                    await backend.metadata()
                    return
                reason = "not ready"
        except TimeoutError:
            reason = f"not ready within {timeout_s:g} s"
        except ServingError as exc:
            reason = exc.message
        except Exception as exc:
            reason = type(exc).__name__
        raise ConfigRejected(f"variant {v.name!r} (version {v.version!r}): model did not load: {hide_uris(reason)}")

    def _publish_weights(self) -> None:
        self.metrics.set_weights({(v.version, v.name): v.weight for v in self._state.config.variants})

    def _retire(self, old: _State, backends: list[VariantBackend]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (configured before serving): nothing can be in flight; leave closing to close()

        async def close_when_idle() -> None:
            give_up = time.monotonic() + 2 * old.config.request_timeout_s
            # A counter polled at 50 ms keeps the hot path free of per-request Event bookkeeping.
            while old.inflight > 0 and time.monotonic() < give_up:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            for b in backends:
                try:
                    await b.close()
                except Exception:
                    log.exception("closing a retired backend failed")

        task = loop.create_task(close_when_idle())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close(self) -> None:
        """Wait for shadows and retirements, then close every backend."""
        await self.drain_shadows()
        if self._closers:
            await asyncio.gather(*list(self._closers), return_exceptions=True)
        for b in self._state.backends.values():
            try:
                await b.close()
            except Exception:
                log.exception("closing a backend failed")
