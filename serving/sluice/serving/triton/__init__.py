"""Triton Inference Server support: model repositories, the local tritonserver, the init-container step.

Modules import heavy dependencies (tritonclient, onnxruntime, the nvidia-pytriton wheel) only where used, so
`import sluice.serving.triton` stays cheap and works without the `triton-local` extra.
"""
