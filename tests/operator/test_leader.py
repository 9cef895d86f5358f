"""Leader election over a Lease (operator/sluice/operator/leader.py) against the API emulator: of two candidates
racing for a free Lease one wins; the other waits while the holder renews, takes over only once the record has not
changed for the lease duration as it observed it, and at once after a release."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from tests.support.emulator import EmulatorThread

from sluice.operator.config import LeaseSettings
from sluice.operator.kube import KubeClient
from sluice.operator.leader import LeaderElector

SETTINGS = {"lease_duration_s": 0.8, "renew_deadline_s": 0.6, "retry_period_s": 0.1}


@pytest.fixture
async def candidates(kube_emulator: EmulatorThread) -> AsyncIterator[tuple[LeaderElector, LeaderElector]]:
    ns = f"lease-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=kube_emulator.url) as http:
        assert (await http.post("/api/v1/namespaces", json={"metadata": {"name": ns}})).status_code == 201
    settings = LeaseSettings(namespace=ns, name="sluice", **SETTINGS)
    clients = [KubeClient(httpx.AsyncClient(base_url=kube_emulator.url)) for _ in range(2)]
    try:
        yield LeaderElector(clients[0], settings, "a"), LeaderElector(clients[1], settings, "b")
    finally:
        for client in clients:
            await client.close()


async def holder(elector: LeaderElector) -> str:
    s = elector.settings
    lease = await elector.client.get("coordination.k8s.io/v1", "Lease", s.namespace, s.name)
    assert lease is not None
    return str(lease["spec"].get("holderIdentity") or "")


async def test_one_of_two_racing_candidates_wins(candidates: tuple[LeaderElector, LeaderElector]) -> None:
    a, b = candidates
    won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(won) == [False, True]
    assert await holder(a) == ("a" if won[0] else "b")


async def test_the_standby_waits_while_the_holder_renews_then_takes_over(
    candidates: tuple[LeaderElector, LeaderElector],
) -> None:
    a, b = candidates
    assert await a.try_acquire_or_renew()
    start = time.monotonic()
    while time.monotonic() - start < 2 * a.settings.lease_duration_s:  # a renews; b never gets it
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        await asyncio.sleep(a.settings.retry_period_s)
    stopped = time.monotonic()  # a stops renewing (as if killed)
    taken = await b.acquire(asyncio.Event())
    waited = time.monotonic() - stopped
    assert taken
    assert await holder(b) == "b"
    assert b.settings.lease_duration_s - 2 * b.settings.retry_period_s <= waited <= 3 * b.settings.lease_duration_s
    assert not await a.try_acquire_or_renew(), "the old holder must not renew a Lease taken over"


async def test_a_released_lease_is_taken_at_once(candidates: tuple[LeaderElector, LeaderElector]) -> None:
    a, b = candidates
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert await b.try_acquire_or_renew()
    assert await holder(b) == "b"
