"""The Coalescer: an idle backend gets each request at once; a busy one gets what queued as one call."""

from __future__ import annotations

import asyncio

import pytest

from sluice.serving.backends.coalesce import Coalescer


class Backend:
    """Records every call; each call waits until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gates: list[asyncio.Event] = []

    async def run(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    def release(self, k: int) -> None:
        self.gates[k].set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_idle_backend_gets_a_lone_request_without_waiting() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=8, max_in_flight=2)
    task = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    assert backend.calls == [[1]]  # sent on the next loop turn, no timer
    backend.release(0)
    assert await task == 10


async def test_requests_queued_while_busy_go_as_one_call_in_arrival_order() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=64, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    rest = [asyncio.ensure_future(coalescer.submit(i)) for i in range(2, 12)]
    await settle()
    assert backend.calls == [[1]]  # the slot is taken: the others wait
    backend.release(0)
    await settle()
    assert backend.calls == [[1], list(range(2, 12))]
    backend.release(1)
    assert await first == 10
    assert await asyncio.gather(*rest) == [i * 10 for i in range(2, 12)]
    assert (coalescer.calls, coalescer.items) == (2, 11)


async def test_same_turn_arrivals_share_a_call_and_in_flight_is_bounded() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=3, max_in_flight=2)
    tasks = [asyncio.ensure_future(coalescer.submit(i)) for i in range(8)]
    await settle()
    assert backend.calls == [[0, 1, 2], [3, 4, 5]]  # max_rows per call, two calls open, the rest waits
    backend.release(0)
    await settle()
    assert backend.calls[2] == [6, 7]
    backend.release(1)
    backend.release(2)
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(8)]


async def test_rows_count_against_max_rows_and_an_oversized_item_goes_alone() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=4, max_in_flight=3)
    tasks = [asyncio.ensure_future(coalescer.submit(i, rows)) for i, rows in enumerate([3, 2, 9])]
    await settle()
    assert backend.calls == [[0], [1], [2]]
    for k in range(3):
        backend.release(k)
    assert await asyncio.gather(*tasks) == [0, 10, 20]


async def test_an_item_error_fails_only_that_request_and_a_call_error_fails_all() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=8, max_in_flight=1)
    tasks = [asyncio.ensure_future(coalescer.submit(i)) for i in (1, -1, 2)]
    await settle()
    backend.release(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 10
    assert results[2] == 20
    assert isinstance(results[1], ValueError)
    assert "bad -1" in str(results[1])

    async def broken(items: list[int]) -> list[int]:
        raise ConnectionError("backend gone")

    failing: Coalescer[int, int] = Coalescer(broken, max_rows=8)
    outcomes = await asyncio.gather(*(failing.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)


async def test_a_caller_that_gave_up_is_skipped_and_the_rest_still_answered() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=8, max_in_flight=1)
    first = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    gone = asyncio.ensure_future(coalescer.submit(2))
    kept = asyncio.ensure_future(coalescer.submit(3))
    await settle()
    gone.cancel()
    backend.release(0)
    await settle()
    assert backend.calls == [[1], [3]]
    backend.release(1)
    assert (await first, await kept) == (10, 30)


async def test_close_fails_queued_and_running_requests_and_later_submits() -> None:
    backend = Backend()
    coalescer = Coalescer(backend.run, max_rows=8, max_in_flight=1)
    running = asyncio.ensure_future(coalescer.submit(1))
    await settle()
    queued = asyncio.ensure_future(coalescer.submit(2))
    await settle()
    await coalescer.close(RuntimeError("closed"))
    for task in (running, queued):
        with pytest.raises(RuntimeError, match="closed"):
            await task
    with pytest.raises(RuntimeError, match="closed"):
        await coalescer.submit(3)


async def test_a_wrong_answer_count_fails_the_whole_call_instead_of_misassigning() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer: Coalescer[int, int] = Coalescer(short, max_rows=8)
    outcomes = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "answered 2 of 3" in str(o) for o in outcomes)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        Coalescer(Backend().run, max_rows=0)
