"""Kopf settings: Sluice's own finalizer and annotation prefix, quiet Kopf Events, prompt shutdown."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from sluice.api.base import GROUP

FINALIZER = f"{GROUP}/finalizer"


def configure(settings: kopf.OperatorSettings) -> None:
    """Applied at startup; a function of its own so that tests and `kopf run` share it."""
    settings.persistence.finalizer = FINALIZER
    # Kopf's bookkeeping lives in annotations under our prefix: the strict status schema would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Rollout Events are posted by the operator itself; Kopf only reports its own trouble.
    settings.posting.level = logging.WARNING
    # A stopping daemon exits within the same deletion cycle (else Kopf re-checks it a cycle later).
    settings.background.instant_exit_timeout = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # One replica (the chart runs one; peering would need the Kopf peering CRDs): no peering.
    settings.peering.standalone = True


@kopf.on.startup()
def on_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)
