"""Small helpers shared by the emulator's tests."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx

_counter = itertools.count()

WIDGETS = "/apis/test.sluice.dev/v1/namespaces/{ns}/widgets"


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.sluice.dev/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"model": "m", **spec},
    }


def watch_events(base: str, path: str, **params: str) -> list[dict[str, Any]]:
    """Read a watch stream to its end (callers pass timeoutSeconds) and return the events."""
    with httpx.stream("GET", base + path, params={"watch": "true", **params}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line.strip()]
