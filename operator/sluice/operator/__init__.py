"""Kubernetes platform of Sluice: `sluice operator` runs Kopf with one daemon per ModelDeployment.

handlers/ (thin Kopf handlers) → daemon.py (re-read, tick, report bad input, back off) → the rollout loop of
sluice.local.loop over platform/ (KubePlatform: children from render/, readiness, checks, status and Events).
"""
