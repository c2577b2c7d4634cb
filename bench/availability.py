"""The benchmark's backends and which of them can run here, decided before any work is done.

Imports no torch, onnx or onnxruntime (``find_spec`` only): ``mlff-export bench`` refuses an
impossible request in one line at once, and its ``--help`` lists the backends without loading
torch.
"""

from __future__ import annotations

import importlib.util

ALL_BACKENDS = (
    "eager",
    "eager-fp16-autocast",
    "torchscript",
    "compile",
    "compile-reduce-overhead",
    "compile-max-autotune",
    "cuda-graphs",
    "onnxruntime",
    "tensorrt",
)
GPU_ONLY = frozenset({"eager-fp16-autocast", "compile-reduce-overhead", "compile-max-autotune", "cuda-graphs", "tensorrt"})
ARTIFACT_BACKENDS = frozenset({"onnxruntime", "tensorrt"})
"""Backends that run exported graphs, at every precision."""
HALF_BODY_BACKENDS = frozenset({"compile", "compile-reduce-overhead", "compile-max-autotune", "cuda-graphs"})
"""Backends that run the PyTorch model's joint graph, on a GPU also with the FP16 body; the others fp32 only."""

TENSORRT_ADVICE = (
    'from a checkout: pip install -e ".[trt]"; from a wheel: pip install tensorrt-cu12 (CUDA 12) or tensorrt-cu13 '
    "(CUDA 13); TensorRT also needs a CUDA GPU"
)
"""How to install TensorRT, in pip syntax (the CLI's build-engine and bench give it)."""


def reason_unavailable(backend: str, device_type: str, precisions: list[str]) -> str | None:
    """Why ``backend`` cannot give a row here (None: it can); ``device_type`` is ``"cpu"`` or ``"cuda"``."""
    if backend in GPU_ONLY and device_type != "cuda":
        return f"needs a CUDA GPU (--device {device_type})"
    if backend == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed ({TENSORRT_ADVICE})"
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return 'onnxruntime is not installed (pip install -e ".[ort]", or onnxruntime-gpu on a GPU machine)'
    if not backend_precisions(backend, device_type, precisions):
        return f"runs the PyTorch model in fp32 only here (--precision {','.join(precisions)})"
    return None


def backend_precisions(backend: str, device_type: str, precisions: list[str]) -> list[str]:
    """The rows ``backend`` gives of ``precisions``: artifact backends every one, the joint-graph
    backends every one on CUDA (the FP16 body is for tensor cores), all others fp32 only."""
    if backend in ARTIFACT_BACKENDS or (backend in HALF_BODY_BACKENDS and device_type == "cuda"):
        return list(precisions)
    return [precision for precision in precisions if precision == "fp32"]


def unavailable_backends(backends, device_type: str, precisions: list[str]) -> dict[str, str]:
    """backend -> reason, for each of ``backends`` that cannot run here."""
    reasons = {backend: reason_unavailable(backend, device_type, precisions) for backend in backends}
    return {backend: reason for backend, reason in reasons.items() if reason}
