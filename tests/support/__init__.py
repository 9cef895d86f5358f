"""Test support shared by every test area and by the benchmarks: one copy of each helper.

`free_port`, `wait_for` and `answers` live here; nothing else in tests/ or benchmarks/ defines its own. The modules
next to this one hold the larger pieces: the API emulator (`emulator`) and its fixtures (`kube`), `sluice operator` as
a process (`operator_process`), the stand-in for KubeRay and the Deployment controller (`simulator`) and for the
routers' /metrics (`router_metrics`). tests/conftest.py registers their fixtures once for the whole run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

from sluice.serving.ports import free_port  # the one copy: serving starts tritonserver and Ray with it

__all__ = ["answers", "free_port", "listening", "wait_for", "wait_for_async"]


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


async def wait_for_async(what: str, check: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.05) -> Any:
    """`wait_for` inside an event loop: the loop keeps running (tasks under test progress) between checks."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """GET `url` answers 200 (a server's readiness or health endpoint); False while nothing listens."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on host:port (a server that has no health endpoint yet)."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0
