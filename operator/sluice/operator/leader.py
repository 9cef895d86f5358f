"""Leader election over a coordination.k8s.io/v1 Lease, as client-go and controller-runtime do it.

With two or more replicas (the chart's `replicaCount`), one holds the Lease and runs Kopf; the others stand by,
answering /healthz, until the holder stops renewing. Why a Lease and not Kopf peering: Kopf's peering pauses
operators of lower priority and *freezes all of them* when two share a priority — it is not an election, and a
standby would need a priority per pod. A Lease is the cluster's own primitive, shown by `kubectl get lease`.

- A candidate takes the Lease when it is free or when its record has not changed for `lease_duration_s` as this
  candidate observed it (local monotonic clock, so clocks of different nodes never matter).
- Every write carries the resourceVersion it read: of two candidates racing for one expired Lease, one gets 409.
- The holder renews every `retry_period_s`; if it has not renewed for `renew_deadline_s` (< lease duration) it exits
  at once (os._exit), before any standby may take over. The same check runs before every write of the operator's
  client (`fence`), so a leader whose event loop stalled past the deadline exits instead of writing once more: no
  two replicas act at the same time, with `lease_duration_s - renew_deadline_s` as the margin for a write in flight.
- On a clean stop (SIGTERM, after Kopf has finished) the holder releases the Lease, so a rolling update hands over
  in one retry period instead of a whole lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime

from sluice.operator.config import LeaseSettings
from sluice.operator.kube import ApiError, KubeClient, Obj

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires, renews and releases one Lease for `identity`."""

    def __init__(self, client: KubeClient, settings: LeaseSettings, identity: str) -> None:
        self.client, self.settings, self.identity = client, settings, identity
        self._observed: tuple[str, float] | None = None  # (the record as last seen, monotonic time it changed)
        self.renewed_at = 0.0  # monotonic time of the last successful acquire or renew

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this candidate holds the Lease (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    log.info(
                        "leader election: %s holds Lease %s/%s",
                        self.identity,
                        self.settings.namespace,
                        self.settings.name,
                    )
                    return True
            except ApiError as exc:
                log.warning("leader election: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.retry_period_s)
        return False

    async def try_acquire_or_renew(self) -> bool:
        s = self.settings
        lease = await self.client.get(API_VERSION, KIND, s.namespace, s.name)
        now = _now()
        if lease is None:
            body = {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": self._spec(now, acquire_time=now, transitions=0),
            }
            try:
                await self.client.create(body)
            except ApiError as exc:
                if exc.code == 409:
                    return False  # another candidate created it first
                raise
            self.renewed_at = time.monotonic()
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = repr(sorted(spec.items()))
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, time.monotonic())
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or s.lease_duration_s)
            if time.monotonic() - self._observed[1] < duration:
                return False  # held and renewed within its duration, as far as this candidate saw
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        acquire_time = spec.get("acquireTime") if mine else now
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(now, acquire_time=acquire_time, transitions=transitions),
        }
        try:
            await self.client.patch(API_VERSION, KIND, s.namespace, s.name, patch)
        except ApiError as exc:
            if exc.code == 409:
                return False  # changed since read: someone else renewed or took it
            raise
        self.renewed_at = time.monotonic()
        return True

    def _spec(self, now: str, *, acquire_time: str | None, transitions: int) -> Obj:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.settings.lease_duration_s)),
            "acquireTime": acquire_time,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop`; exit the process at once when the Lease could not be renewed for the deadline."""
        s = self.settings
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=s.retry_period_s)
                return
            except TimeoutError:
                pass
            left = s.renew_deadline_s - (time.monotonic() - self.renewed_at)
            try:  # a slow API server gets until the deadline, as client-go's renew loop does
                renewed = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(left, s.retry_period_s))
            except (ApiError, TimeoutError, OSError) as exc:
                log.warning("leader election: renewing failed: %s", type(exc).__name__ if not str(exc) else exc)
                renewed = False
            if not renewed:
                self.fence()

    def fence(self) -> None:
        """Exit the process now if the Lease was not renewed for the renew deadline (called before every write too:
        a leader whose event loop stalled past the deadline must not write once more on waking)."""
        s = self.settings
        if time.monotonic() - self.renewed_at < s.renew_deadline_s:
            return
        log.critical(
            "leader election: %s lost Lease %s/%s (not renewed for %.1f s); exiting so that a standby takes over "
            "and nothing is done twice",
            self.identity,
            s.namespace,
            s.name,
            s.renew_deadline_s,
        )
        logging.shutdown()
        os._exit(1)

    async def release(self) -> None:
        """Give the Lease up (holder cleared, 1 s duration) if this candidate still holds it."""
        s = self.settings
        try:
            lease = await self.client.get(API_VERSION, KIND, s.namespace, s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _now()},
            }
            await self.client.patch(API_VERSION, KIND, s.namespace, s.name, patch)
            log.info("leader election: %s released Lease %s/%s", self.identity, s.namespace, s.name)
        except ApiError as exc:
            log.warning("leader election: releasing failed: %s", exc)
