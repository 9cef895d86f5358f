"""Kubernetes platform of Sluice: Kopf handlers and rendering (RayService, Triton workloads). Being built (issue 5)."""
