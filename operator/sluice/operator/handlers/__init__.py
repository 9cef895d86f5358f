"""Kopf handlers, one module per resource kind; importing this package registers them with Kopf."""

from __future__ import annotations

from sluice.operator.handlers import children, driftpolicy, experiment, modeldeployment, startup

__all__ = ["children", "driftpolicy", "experiment", "modeldeployment", "startup"]
