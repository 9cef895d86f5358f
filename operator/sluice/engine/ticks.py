"""The tick loop every kind's engine loop runs: one place decides how a failing tick is retried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_ticks(stop: asyncio.Event, tick: Callable[[], Awaitable[object]], poll_s: float, what: str) -> None:
    """Call `tick` every `poll_s` until `stop` is set. A failing tick is logged (as `what` tick) and retried next
    time from the last saved status, so one bad reading never ends the loop."""
    while not stop.is_set():
        try:
            await tick()
        except Exception:
            log.exception("%s tick failed; retrying in %.1fs", what, poll_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll_s)
