"""Client-side coalescing: requests that arrive while the backend is busy go to it together, as one call.

A remote backend (tritonserver, a Ray Serve model deployment) costs a round trip, a serialisation and a request of
its own per call: at 16 concurrent clients that per-call cost, not the model, is what the router spends its CPU
on. The `Coalescer` keeps at most `max_in_flight` calls open to one backend. A request that finds a free slot is
sent on the next event-loop turn (with whatever else arrived in the same turn), so an idle backend adds no wait;
requests that arrive while every slot is busy queue, and the first slot to free up sends all of them (up to
`max_rows`) in one call. Under load that makes batches as large as the concurrency allows with no timer, and at a
low rate every request still goes alone and at once.

`run` receives the queued items and returns one result per item, in order; an element that is an exception fails
only that item (a backend can isolate a bad request that way), and an exception raised by `run` fails them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    rows: int
    future: asyncio.Future[R]


class Coalescer(Generic[T, R]):
    """`await submit(item, rows)` -> this item's result; at most `max_in_flight` calls of `run` at a time."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_rows: int,
        max_in_flight: int = 2,
    ) -> None:
        if max_rows < 1 or max_in_flight < 1:
            raise ValueError(f"max_rows and max_in_flight must be >= 1, got {max_rows}, {max_in_flight}")
        self.run = run
        self.max_rows = max_rows
        self.max_in_flight = max_in_flight
        self.calls = 0  # calls made (tests and benchmarks read the mean batch from it)
        self.items = 0
        self._queue: deque[_Waiting[T, R]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: BaseException | None = None

    async def submit(self, item: T, rows: int = 1) -> R:
        if self._closed is not None:
            raise self._closed
        loop = asyncio.get_running_loop()
        waiting: _Waiting[T, R] = _Waiting(item, rows, loop.create_future())
        self._queue.append(waiting)
        if self._in_flight < self.max_in_flight and not self._scheduled:
            self._scheduled = True  # one flush per turn takes everything that arrived in it
            loop.call_soon(self._flush)
        return await waiting.future

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue and self._in_flight < self.max_in_flight:
            batch = self._take()
            if not batch:
                break
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting[T, R]]:
        """Queued items (callers that gave up skipped) up to max_rows; an item alone may exceed it."""
        batch: list[_Waiting[T, R]] = []
        rows = 0
        while self._queue:
            waiting = self._queue[0]
            if waiting.future.done():
                self._queue.popleft()
                continue
            if batch and rows + waiting.rows > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += waiting.rows
        return batch

    async def _call(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            self.calls += 1
            self.items += len(batch)
            try:
                results = await self.run([w.item for w in batch])
            except Exception as exc:
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                return
            if len(results) != len(batch):
                error = RuntimeError(f"coalesced call answered {len(results)} of {len(batch)} items")
                results = [error] * len(batch)
            for w, result in zip(batch, results, strict=True):
                if w.future.done():
                    continue  # its caller gave up (timeout, cancellation)
                if isinstance(result, BaseException):
                    w.future.set_exception(result)
                else:
                    w.future.set_result(result)
        finally:
            self._in_flight -= 1
            for w in batch:  # cancelled by close(): nobody may wait forever
                if not w.future.done():
                    w.future.set_exception(self._closed or RuntimeError("coalesced call ended without an answer"))
            if self._queue and self._closed is None:
                self._flush()  # what queued while this call ran goes now, as one call

    async def close(self, error: BaseException) -> None:
        """Fail queued requests with `error` and cancel running calls; later submits raise it."""
        self._closed = error
        while self._queue:
            w = self._queue.popleft()
            if not w.future.done():
                w.future.set_exception(error)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
