"""Test support shared by every test area and by the benchmarks: one copy of each helper.

`free_port` and `wait_for` live here; nothing else in tests/ or benchmarks/ defines its own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "wait_for"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for servers started as their own process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy and return that; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")
