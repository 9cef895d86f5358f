"""A small async Kubernetes client over httpx: what the operator needs and nothing more.

Async, because Kopf runs the handlers in its event loop (a sync client there blocks the loop). Configured by the
official `kubernetes.config` (KUBECONFIG / ~/.kube/config, else in-cluster), so credentials behave as kubectl's.
`apply` writes only when our fields differ from the live object, so a reconcile of an unchanged resource writes
nothing, and a create that meets 409 (an object left by an operator that restarted) adopts the existing one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import httpx

Obj = dict[str, Any]

# kind -> plural for everything the operator touches; other kinds fall back to "<kind lowercase>s".
PLURALS: dict[str, str] = {
    "ModelDeployment": "modeldeployments",
    "Experiment": "experiments",
    "DriftPolicy": "driftpolicies",
    "RayService": "rayservices",
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "Pod": "pods",
    "Event": "events",
    "ServiceMonitor": "servicemonitors",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "CustomResourceDefinition": "customresourcedefinitions",
}
MERGE_PATCH = "application/merge-patch+json"


def _version() -> str:
    try:
        return metadata.version("sluice")
    except metadata.PackageNotFoundError:
        return "0.0.0"


USER_AGENT = f"sluice-operator/{_version()}"


class ApiError(Exception):
    """A non-2xx answer; `message` is the API's own Status message (what kubectl would print)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    @property
    def type_missing(self) -> bool:
        """A 404 for the resource type itself (its CRD is not installed), not for one object."""
        return self.code == 404 and not self.details.get("name")


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind.lower() + "s")


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a collection or object: /api/v1/... for the core group, /apis/<group>/<version>/... else."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    where = f"{base}/namespaces/{namespace}/{plural(kind)}" if namespace else f"{base}/{plural(kind)}"
    if name:
        where += f"/{name}"
    if sub:
        where += f"/{sub}"
    return where


def contains(live: Any, wanted: Any) -> bool:
    """True when everything in `wanted` is in `live` (server-added fields and defaults do not count as a change)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(contains, live, wanted))
    if isinstance(wanted, float | int) and isinstance(live, float | int) and not isinstance(wanted, bool):
        return float(live) == float(wanted)
    return bool(live == wanted)


def merge_diff(old: Any, new: Any) -> Any:
    """An RFC 7386 merge patch turning `old` into `new` (None values delete); {} when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: Obj = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_diff(old[key], value)
            if not (isinstance(sub, dict) and not sub and isinstance(value, dict) and value):
                patch[key] = sub
    return patch


def our_fields(obj: Obj) -> Obj:
    """What `apply` owns: everything but status and the server's metadata."""
    meta = obj.get("metadata", {})
    mine = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata", "apiVersion", "kind")}
    out["metadata"] = mine
    return out


class KubeClient:
    """Async CRUD on any resource; one httpx connection pool per operator process."""

    def __init__(self, http: httpx.AsyncClient, max_in_flight: int = 32) -> None:
        self.http = http
        # Requests beyond this wait here, not in httpcore's pool queue (whose bookkeeping is quadratic in its length).
        self.max_in_flight = max_in_flight
        self._slots: asyncio.Semaphore | None = None
        self.writes = 0  # write calls sent (for tests and metrics)
        self.errors = 0  # answers >= 400 other than 404/409 handled by the caller
        self.before_write: Callable[[], None] | None = None  # e.g. the leader's fence: exits when it lost the Lease

    @classmethod
    def from_config(
        cls, kubeconfig: str | None = None, timeout_s: float = 30.0, user_agent: str = USER_AGENT
    ) -> KubeClient:
        """Configured like the official client: kubeconfig (KUBECONFIG, ~/.kube/config), else in-cluster."""
        from kubernetes import client as _client
        from kubernetes import config as _config
        from kubernetes.config.config_exception import ConfigException

        k8s_client: Any = _client
        k8s_config: Any = _config
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        except (ConfigException, FileNotFoundError, TypeError):
            k8s_config.load_incluster_config(client_configuration=cfg)
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        token = cfg.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        verify: Any = (cfg.ssl_ca_cert or True) if cfg.verify_ssl else False
        cert = (cfg.cert_file, cfg.key_file) if cfg.cert_file else None
        # Keep-alive for all: a thousand daemons share this pool, and a reconnect per request costs more than it.
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32, keepalive_expiry=60)
        http = httpx.AsyncClient(
            base_url=cfg.host.rstrip("/"), headers=headers, verify=verify, cert=cert, timeout=timeout_s, limits=limits
        )
        return cls(http)

    async def close(self) -> None:
        await self.http.aclose()

    async def _request(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Obj:
        headers = {"Content-Type": content_type or "application/json"} if body is not None else {}
        if method != "GET":
            if self.before_write is not None:
                self.before_write()
            self.writes += 1
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        async with self._slots:
            response = await self.http.request(
                method, url, content=None if body is None else json.dumps(body), headers=headers, params=params
            )
        if response.status_code >= 400:
            try:
                status = response.json()
                reason, message = status.get("reason", ""), status.get("message", response.text)
                details = status.get("details") or {}
            except ValueError:
                reason, message, details = response.reason_phrase, response.text, {}
            if response.status_code not in (404, 409):
                self.errors += 1
            raise ApiError(response.status_code, str(reason), str(message), details)
        result: Obj = response.json()
        return result

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self._request("GET", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.code == 404 and not exc.type_missing:
                return None  # the object is missing; a 404 for the whole resource type still raises
            raise

    async def list(self, api_version: str, kind: str, namespace: str | None, selector: str = "") -> list[Obj]:
        params = {"labelSelector": selector} if selector else None
        items: list[Obj] = (await self._request("GET", path(api_version, kind, namespace), params=params)).get(
            "items", []
        )
        return items

    async def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        return await self._request("POST", path(obj["apiVersion"], obj["kind"], meta.get("namespace")), obj)

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Obj) -> Obj:
        return await self._request("PATCH", path(api_version, kind, namespace, name), patch, MERGE_PATCH)

    async def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Obj) -> Obj:
        return await self._request("PATCH", path(api_version, kind, namespace, name, "status"), patch, MERGE_PATCH)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self._request(
                "DELETE",
                path(api_version, kind, namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    async def apply(self, obj: Obj) -> bool:
        """Make the live object carry our fields; returns whether anything was written."""
        return (await self.ensure(obj))[0]

    async def ensure(self, obj: Obj) -> tuple[bool, Obj]:
        """`apply` that also returns the live object after it.

        A create that meets 409 (the object exists, e.g. made before a restart) re-reads it and patches if needed.
        """
        meta = obj["metadata"]
        api_version, kind, namespace, name = obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]
        live = await self.get(api_version, kind, namespace, name)
        if live is None:
            try:
                return True, await self.create(obj)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                live = await self.get(api_version, kind, namespace, name)
                if live is None:
                    raise
        mine = our_fields(obj)
        if contains(live, mine):
            return False, live
        return True, await self.patch(api_version, kind, namespace, name, mine)
