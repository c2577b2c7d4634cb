"""Which BLAS library a captured CUDA graph's GEMMs use: the graph is captured under each, the fastest kept.

cuBLAS's own kernel choice is poor for the small GEMMs of a small molecule: on the H200 a
[16, 128] x [128, 128] product took 52 µs under cuBLAS and 2.4 µs under cuBLASLt, while cuBLASLt
loses elsewhere ([256, 20] x [20, 384]: 9.3 against 2.6 µs; ``bench/results/2026-12-01-h200/gemm``).
Which library wins depends on the GPU, the model and the bucket, so it is measured, not assumed:
PyTorch reads ``torch.backends.cuda.preferred_blas_library`` when it launches a GEMM, so a CUDA
graph keeps the kernels of the library preferred while it was captured. Each bucket is captured
once per library, the replay times decide, and the winner is captured again (one trial capture
held at a time: a bucket's activations can take gigabytes); the numbers differ only by float32 rounding
(neither library uses TF32 unless the user enables it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

BLAS_LIBRARIES = ("cublas", "cublaslt")
TIMED_REPLAYS = 5


@contextlib.contextmanager
def preferred_blas_library(name: str) -> Iterator[None]:
    """GEMMs launched inside use BLAS library ``name``; the previous preference is restored after."""
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def replay_seconds(graph: torch.cuda.CUDAGraph, replays: int = TIMED_REPLAYS) -> float:
    """Mean GPU seconds of one replay of ``graph``, over ``replays`` replays after a first one."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / replays


@dataclass
class ChosenCapture:
    """The kept capture: its graph, its output buffers, the library and every library's replay seconds."""

    graph: torch.cuda.CUDAGraph
    outputs: dict[str, torch.Tensor]
    library: str
    seconds: dict[str, float]


def capture_fastest(
    warm_up: Callable[[], None], capture: Callable[[], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]],
    libraries: tuple[str, ...] = BLAS_LIBRARIES,
    prefer: Callable[[str], contextlib.AbstractContextManager] = preferred_blas_library,
    timer: Callable[[torch.cuda.CUDAGraph], float] = replay_seconds,
) -> ChosenCapture:
    """Capture under each of ``libraries`` and time a replay; capture the fastest once more and keep it.

    Each trial capture is released before the next, so no more than one capture's memory is held
    at a time (the price: one capture more). ``warm_up`` runs before every capture, outside it (a
    library's first GEMM allocates its handle and workspace, which a capture may not do).
    ``prefer`` and ``timer`` select a library and time a replay (replaced only by tests of this
    logic on machines without CUDA).
    """
    if not libraries:
        raise ValueError("capture_fastest needs at least one BLAS library")

    def captured(library: str) -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]:
        with prefer(library):
            warm_up()
            return capture()

    seconds = {}
    for library in libraries:
        graph, outputs = captured(library)
        seconds[library] = timer(graph)
        del graph, outputs  # the outputs live in the graph's memory pool
    library = min(seconds, key=seconds.__getitem__)
    graph, outputs = captured(library)
    return ChosenCapture(graph, outputs, library, seconds)
