"""How `sluice run` drives one kind's engine loop on the local plane: the same stop, drive and teardown for all."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

from sluice.providers.base import MetricProvider


class Session:
    """One stop event (set by SIGINT/SIGTERM), the background work, and the provider, torn down together: leaving
    the `async with` sets stop, waits for the background work to finish and closes the provider."""

    def __init__(self, provider: MetricProvider) -> None:
        self.provider = provider
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Session:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, self.stop.set)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        for task in self._tasks:
            await task
        await self.provider.close()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (e.g. a load generator watching `stop`) in the background until the session ends."""
        self._tasks.append(asyncio.create_task(work))

    async def drive(
        self, tick: Callable[[], Awaitable[object]], done: Callable[[], bool], timeout_s: float, poll_s: float
    ) -> bool:
        """Tick every `poll_s` until `done()` says so (True), or `timeout_s` passes or stop is set (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            await tick()
            if done():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), poll_s)
        return False


class Views:
    """Prints a loop's one-line view, timestamped, each time it changes (nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._last = ""

    def show(self, view: str, note: str = "") -> None:
        if view != self._last and not self.quiet:
            print(f"{time.strftime('%H:%M:%S')} {view}{note}", flush=True)
            self._last = view
