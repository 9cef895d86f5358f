"""Sluice data plane: model runtime, traffic router, Open Inference Protocol, metrics.

Never imports the operator side (enforced by import-linter); the operator may import `sluice.serving.config`.
"""
