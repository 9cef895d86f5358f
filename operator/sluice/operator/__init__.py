"""Kubernetes platform of Sluice: `sluice operator` runs Kopf with one controller per ModelDeployment.

handlers/ (thin Kopf registrations) → controllers/<kind>.py (read the live body, tick, report bad input, back off)
→ the engine's loop (sluice.engine) over platform/ (KubePlatform: children from render/, readiness, checks, status
and Events); leader.py elects one active replica when several run.
"""
