"""The children of one ModelDeployment: applying them (writing only differences), caching what was applied, pruning
the ones no longer desired, and reading them back without writing.

Kinds watched by Kopf (handlers/children.py) are read from memory, never GET per tick; what was applied is remembered
so an unchanged child costs no request at all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sluice.operator.kube import ApiError, KubeClient, Obj, contains, our_fields
from sluice.operator.platform.status import BACKEND_AVAILABLE, BadInput
from sluice.operator.render import Key, Owner
from sluice.operator.render.meta import DEPLOYMENT_LABEL, label_value

log = logging.getLogger(__name__)

# Kinds a renderer may create; children of these kinds that are no longer desired are deleted.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("ray.io/v1", "RayService"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
)
# Children the model serves without (monitoring): skipped, with a warning, where the cluster lacks their API.
OPTIONAL_KINDS = frozenset({"ServiceMonitor"})
# Children kept current by Kopf watches (handlers/children.py): read from memory, never GET.
WATCHED_KINDS = frozenset({"RayService", "Deployment"})


class Children:
    """Applies, caches, prunes and reads back one owner's children."""

    def __init__(self, client: KubeClient, owner: Owner, watched: Mapping[tuple[str, str, str], Obj]) -> None:
        self.client, self.owner = client, owner
        # Live children of the watched kinds by (kind, namespace, name) ({}: deleted), kept by Kopf's watches.
        self.watched = watched
        self.selector = f"{DEPLOYMENT_LABEL}={label_value(owner.name)}"
        self.prune_needed = True  # delete children no longer desired (at start and after a change)
        self._applied: dict[Key, tuple[Obj, Obj]] = {}  # child -> (our fields last applied, the API's answer)
        # Optional kinds this cluster does not serve: not tried again until the operator restarts.
        self._unserved: set[str] = set()

    async def apply(self, wanted: list[Obj], backend: str) -> None:
        """Make every child in `wanted` carry our fields, then prune if needed; BadInput when a kind is not served."""
        for child in wanted:
            key: Key = (child["kind"], child["metadata"]["name"])
            mine = our_fields(child)
            if self._current(key, mine) is not None or child["kind"] in self._unserved:
                continue
            try:
                got = await self._write(key, child, mine)
            except ApiError as exc:
                if exc.type_missing and child["kind"] in OPTIONAL_KINDS:
                    # Monitoring is an add-on: without prometheus-operator's CRDs the model still serves.
                    log.warning("%s %s not written: %s is not served here", child["kind"], key[1], child["apiVersion"])
                    self._unserved.add(child["kind"])
                    continue
                if exc.type_missing:
                    raise BadInput(
                        BACKEND_AVAILABLE,
                        "BackendNotInstalled",
                        f"spec.backend={backend} needs the {child['kind']} API "
                        f"({child['apiVersion']}), which this cluster does not serve: install its CRD "
                        f"({exc.message})",
                    ) from exc
                raise
            self._applied[key] = (mine, got)
        if self.prune_needed:
            await self._prune({(c["kind"], c["metadata"]["name"]) for c in wanted})
            self.prune_needed = False

    async def live(self, wanted: list[Obj]) -> dict[Key, Obj]:
        """The live children of the watched kinds among `wanted`, by (kind, name); reads only, never writes.

        From the watches' memory; a child the watch has not delivered yet (a restarted operator) is read once with
        a GET. A child that does not exist is absent.
        """
        live: dict[Key, Obj] = {}
        for child in wanted:
            kind, name = child["kind"], child["metadata"]["name"]
            if kind not in WATCHED_KINDS:
                continue
            seen = self.watched.get((kind, self.owner.namespace, name))
            if seen is None:
                applied = self._applied.get((kind, name))
                seen = applied[1] if applied else await self._read(child)
            if seen:
                live[(kind, name)] = seen
        return live

    async def _read(self, child: Obj) -> Obj | None:
        try:
            return await self.client.get(
                child["apiVersion"], child["kind"], self.owner.namespace, child["metadata"]["name"]
            )
        except ApiError as exc:
            if exc.type_missing:
                return None  # the kind is not served: apply reports it
            raise

    async def _write(self, key: Key, child: Obj, mine: Obj) -> Obj:
        """Write `child` where needed, reading it first only when the watches do not hold it (a kind not watched)."""
        seen = self.watched.get((key[0], self.owner.namespace, key[1]))
        if seen:
            if contains(seen, mine):
                return seen
            return await self.client.patch(child["apiVersion"], child["kind"], self.owner.namespace, key[1], mine)
        if seen is None and key[0] not in WATCHED_KINDS:
            return (await self.client.ensure(child))[1]
        try:  # watched and absent (or deleted): create straight away; 409 means the watch has not caught up
            return await self.client.create(child)
        except ApiError as exc:
            if exc.code != 409:
                raise
        return (await self.client.ensure(child))[1]

    def _current(self, key: Key, mine: Obj) -> Obj | None:
        """The live child when nothing needs writing, from memory; None when it must be applied (read and written).

        Applied before with these very fields and, if its kind is watched, not changed or deleted by anyone since.
        """
        applied = self._applied.get(key)
        if applied is None or applied[0] != mine:
            return None
        seen = self.watched.get((key[0], self.owner.namespace, key[1]))
        if seen is None:
            return applied[1]  # a kind not watched, or our write not seen yet
        if not seen:
            return None  # deleted by someone: create it again
        same = _version(seen) == _version(applied[1])
        return seen if same or contains(seen, mine) else None

    async def _prune(self, keep: set[Key]) -> None:
        for api_version, kind in CHILD_KINDS:
            try:
                items = await self.client.list(api_version, kind, self.owner.namespace, self.selector)
            except ApiError as exc:
                if exc.type_missing:
                    continue
                raise
            for item in items:
                meta = item["metadata"]
                owned = any(ref.get("uid") == self.owner.uid for ref in meta.get("ownerReferences", []))
                if owned and (kind, meta["name"]) not in keep:
                    log.info("deleting %s/%s: no longer desired", kind, meta["name"])
                    await self.client.delete(api_version, kind, self.owner.namespace, meta["name"])


def _version(obj: Obj) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return None if rv is None else str(rv)
