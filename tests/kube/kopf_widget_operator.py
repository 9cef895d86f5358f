"""A tiny Kopf operator for the emulator's tests: every handler appends one line to $WIDGET_LOG.

Run by tests/kube/test_kopf.py with `kopf run` in a subprocess (sync handlers:
Kopf runs them in threads, so a sync client never blocks its loop).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import kopf

LOG = os.environ.get("WIDGET_LOG", "widget.log")
_lock = threading.Lock()


def note(what: str, name: str) -> None:
    with _lock, open(LOG, "a") as log:
        log.write(f"{what} {name}\n")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "test.sluice.dev/kopf-finalizer"
    settings.watching.server_timeout = 30
    settings.posting.level = 20
    # Let a stopping daemon exit within the same deletion cycle; otherwise Kopf (by its own design, not the
    # server's) purges the finished on.delete progress and re-runs that handler when it re-checks the daemon.
    settings.background.instant_exit_timeout = 1.0


@kopf.on.create("test.sluice.dev", "v1", "widgets")
def created(name: str, **_: Any) -> dict[str, str]:
    note("create", name)
    return {"seen": "yes"}


@kopf.on.update("test.sluice.dev", "v1", "widgets", field="spec.model")
def updated(name: str, new: Any, **_: Any) -> None:
    note(f"update:{new}", name)


@kopf.on.delete("test.sluice.dev", "v1", "widgets")
def deleted(name: str, **_: Any) -> None:
    note("delete", name)


@kopf.timer("test.sluice.dev", "v1", "widgets", interval=0.3)
def ticking(name: str, **_: Any) -> None:
    note("timer", name)


@kopf.daemon("test.sluice.dev", "v1", "widgets", cancellation_backoff=1, cancellation_timeout=2)
def watching(name: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
    note("daemon-start", name)
    while not stopped.wait(0.1):
        pass
    note("daemon-stop", name)
