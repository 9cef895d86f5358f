"""Metric providers: where rollout analysis reads the router's metrics from. One file per implementation."""

from sluice.providers.base import MetricProvider, Window
from sluice.providers.factory import create_provider

__all__ = ["MetricProvider", "Window", "create_provider"]
