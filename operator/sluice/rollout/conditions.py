"""The rollout's condition types; the helpers live in sluice.api.base (the experiment core uses them too)."""

from __future__ import annotations

from sluice.api.base import get_condition, set_condition

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
ROLLED_BACK = "RolledBack"
ANALYSIS_NO_DATA = "AnalysisNoData"

__all__ = ["ANALYSIS_NO_DATA", "DEGRADED", "PROGRESSING", "READY", "ROLLED_BACK", "get_condition", "set_condition"]
