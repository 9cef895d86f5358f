"""Follow one ConfigMap holding a `ServingConfig` and apply every new version of it to the running router.

The operator writes the router's config (weights, mirror, variants) into a ConfigMap; a mounted ConfigMap file
takes kubelet's sync period (a minute or more) to change, so the router watches the object through the Kubernetes
API instead and applies a change as soon as the watch event arrives (well under 2 s). Only httpx is used: the
data plane must not import the `kubernetes` client (import contracts in pyproject.toml).

The loop is list + watch on ``fieldSelector=metadata.name=<name>``, resuming from the last resourceVersion seen
(bookmarks included); a ``410 Gone`` (history compacted) re-lists; any other failure backs off exponentially and
retries. Nothing here may take the router down: a ConfigMap that does not hold a valid config, or a config whose
backends cannot be built, is logged (locations and reasons only, never the payload) and the last good one keeps
serving. A deleted ConfigMap also keeps the last config: no config is worse than an old one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from sluice.serving.config import ServingConfig

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CONFIG_KEY = "config.json"

Apply = Callable[[ServingConfig], Awaitable[None]]


class _Gone(Exception):
    """The resourceVersion to resume from is too old: list again."""


class ConfigError(ValueError):
    """The ConfigMap's content is no valid ServingConfig; the message carries no payload."""


@dataclass(frozen=True)
class KubeApi:
    """Where the Kubernetes API is and how to authenticate; the token file is re-read per request because
    kubelet rotates projected service-account tokens in place."""

    base_url: str
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str] = os.environ, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeApi:
        """The API as a pod sees it; ValueError when not in a pod (no KUBERNETES_SERVICE_HOST)."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ValueError("not running in a pod (KUBERNETES_SERVICE_HOST is unset); pass --kube-api URL")
        if ":" in host:
            host = f"[{host}]"  # IPv6 service address
        ca = sa_dir / "ca.crt"
        return cls(f"https://{host}:{port}", token_file=sa_dir / "token", ca_file=ca if ca.exists() else None)

    def headers(self) -> dict[str, str]:
        token = self.token
        if token is None and self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                log.warning("cannot read the service-account token %s: %s", self.token_file, exc.strerror)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file is not None else True


def parse_config(data: Mapping[str, Any] | None, key: str = CONFIG_KEY) -> ServingConfig:
    """The ServingConfig stored under `key` of a ConfigMap's data; ConfigError says why not, without the payload."""
    text = (data or {}).get(key)
    if not isinstance(text, str):
        raise ConfigError(f"the ConfigMap has no key {key!r}")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{key} is not a valid ServingConfig: {problems}") from None


class ConfigMapSource:
    """Keeps a router on the newest valid config of one ConfigMap; `run()` until cancelled, never raises."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        apply: Apply,
        *,
        key: str = CONFIG_KEY,
        current: ServingConfig | None = None,
        watch_timeout_s: float = 300.0,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.key = key
        self._apply = apply
        self.current = current  # the config the router serves (from the start-up file), so equal ones are skipped
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self.applied = 0  # configs applied since start
        self.rejected = 0  # ConfigMap versions refused (invalid, or their backends could not be built)
        self.lists = 0  # full lists done (the first, and one after every 410 Gone or failure without a version)
        self._seen: str | None = None  # the last config text handled, applied or not: each text is judged once

    @property
    def _path(self) -> str:
        return f"{self.api.base_url.rstrip('/')}/api/v1/namespaces/{self.namespace}/configmaps"

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        async with httpx.AsyncClient(verify=self.api.verify(), timeout=httpx.Timeout(10.0)) as client:
            while True:
                try:
                    if version is None:
                        version = await self._list(client)
                    version = await self._watch(client, version)
                    failures = 0
                except _Gone:
                    log.info("configmap %s/%s: resourceVersion expired, listing again", self.namespace, self.name)
                    version = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # transport errors, 5xx, 403 ...: never crash the router, retry
                    failures += 1
                    low, high = self.backoff_s
                    delay = min(high, low * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                    log.warning(
                        "configmap %s/%s: %s; retrying in %.1f s", self.namespace, self.name, _describe(exc), delay
                    )
                    await asyncio.sleep(delay)

    async def _list(self, client: httpx.AsyncClient) -> str:
        response = await client.get(
            self._path, params={"fieldSelector": f"metadata.name={self.name}"}, headers=self.api.headers()
        )
        response.raise_for_status()
        body = response.json()
        self.lists += 1
        items = body.get("items") or []
        if items:
            await self._handle(items[0])
        else:
            log.warning("configmap %s/%s does not exist; serving the config we have", self.namespace, self.name)
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, client: httpx.AsyncClient, version: str) -> str:
        """Follow events until the server ends the watch; returns the version to resume from."""
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={self.name}",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(max(1, round(self.watch_timeout_s))),
        }
        # A quiet watch sends nothing until the server's timeout: allow that much silence, plus slack.
        timeout = httpx.Timeout(10.0, read=self.watch_timeout_s + 30.0)
        async with client.stream("GET", self._path, params=params, headers=self.api.headers(), timeout=timeout) as r:
            if r.status_code == 410:
                raise _Gone()
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason', '')}")
                version = str(obj.get("metadata", {}).get("resourceVersion", version))
                if kind in ("ADDED", "MODIFIED"):
                    await self._handle(obj)
                elif kind == "DELETED":
                    log.warning("configmap %s/%s was deleted; serving the config we have", self.namespace, self.name)
        return version

    async def _handle(self, obj: Mapping[str, Any]) -> None:
        data = obj.get("data") or {}
        text = data.get(self.key) if isinstance(data, Mapping) else None
        if text is not None and text == self._seen:
            return  # a metadata-only change, or a resync of what we already judged
        self._seen = text if isinstance(text, str) else None
        try:
            config = parse_config(data, self.key)
        except ConfigError as exc:
            self.rejected += 1
            log.error("configmap %s/%s: %s; keeping the running config", self.namespace, self.name, exc)
            return
        if config == self.current:
            return
        try:
            await self._apply(config)
        except Exception as exc:  # e.g. a backend factory refusing a variant: the old config keeps serving
            self.rejected += 1
            log.error(
                "configmap %s/%s: cannot apply the new config (%s); keeping the running config",
                self.namespace,
                self.name,
                _describe(exc),
            )
            return
        self.current = config
        self.applied += 1
        log.info("applied config from configmap %s/%s: %s", self.namespace, self.name, _weights(config))


def _weights(config: ServingConfig) -> dict[str, int]:
    return {v.name: v.weight for v in config.variants}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from the Kubernetes API"
    return f"{type(exc).__name__}: {exc}"


def parse_target(text: str) -> tuple[str, str]:
    """``NS/NAME`` -> (namespace, name); ValueError otherwise."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--watch-configmap wants NAMESPACE/NAME, got {text!r}")
    return namespace, name
