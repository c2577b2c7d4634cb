"""ONNX-level comparison of one graph across runtimes, with polygraphy's comparator.

Runners: ONNX Runtime CPU with graph optimisations off (the baseline: the graph as exported),
ONNX Runtime CPU with its default optimisations (fusions have miscomputed exported MLFF graphs
before, e.g. a transposed 1-D MatMul fused into FusedMatMul), and ONNX Runtime CUDA where the
CUDA execution provider is present. The inputs are the validation structures in one batch, in
the graph's own input layout. polygraphy and onnxruntime are optional: without them the
comparison is skipped with a note.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from mlff_export.neighbors import batch_inputs, compute_pairs


@dataclass
class RuntimeOutputComparison:
    """One output of one runner pair: polygraphy's max/mean absolute and max relative difference."""

    runners: str
    output: str
    max_abs_difference: float
    mean_abs_difference: float
    max_rel_difference: float
    passed: bool


@dataclass
class RuntimeComparison:
    """Cross-runtime comparison; ``skipped`` holds the reason when it could not run."""

    runners: list[str] = field(default_factory=list)
    outputs: list[RuntimeOutputComparison] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)


def graph_feeds(layout, structures: Sequence[Atoms], cutoff: float) -> dict[str, np.ndarray]:
    """The graph inputs (float32/int64 numpy arrays) for ``structures`` in one batch."""
    inputs = batch_inputs(list(structures), [compute_pairs(atoms, cutoff) for atoms in structures])
    return {name: tensor.numpy() for name, tensor in layout.feeds(inputs).items()}


def compare_onnx_runtimes(path: str | Path, feeds: dict[str, np.ndarray], *, atol: float, rtol: float) -> RuntimeComparison:
    """Run ``path`` on every available ONNX Runtime configuration and compare all outputs pairwise
    against the first (unoptimised CPU) with ``|a - b| <= atol + rtol * |b|``."""
    try:
        import onnxruntime
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator, CompareFunc
        from polygraphy.logger import G_LOGGER
    except ImportError as error:
        return RuntimeComparison(skipped=f"needs polygraphy and onnxruntime ({error.name} missing): pip install polygraphy onnxruntime (extras 'ort', 'trt', 'test')")

    path = str(path)
    runners = [
        OnnxrtRunner(
            SessionFromOnnx(path, providers=["cpu"], graph_optimization_level=onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL),
            name="ort-cpu-unoptimized",
        ),
        OnnxrtRunner(SessionFromOnnx(path, providers=["cpu"]), name="ort-cpu"),
    ]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        runners.append(OnnxrtRunner(SessionFromOnnx(path, providers=["cuda"]), name="ort-cuda"))
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), warnings.catch_warnings():
        # CompareFunc.simple works on every polygraphy >= 0.49; 0.53 deprecates it for SimpleCompareFunc.
        warnings.filterwarnings("ignore", message="CompareFunc.simple is deprecated", category=DeprecationWarning)
        results = Comparator.run(runners, data_loader=[feeds])
        accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
    outputs = []
    for runner_pair in accuracy.lst:  # AccuracyResults: one AccuracyResult per compared pair
        for (first, second), iterations in runner_pair.items():
            for name, result in iterations[0].items():
                outputs.append(
                    RuntimeOutputComparison(
                        runners=f"{first} vs {second}",
                        output=name,
                        max_abs_difference=float(result.max_absdiff),
                        mean_abs_difference=float(result.mean_absdiff),
                        max_rel_difference=float(result.max_reldiff),
                        passed=bool(result),
                    )
                )
    return RuntimeComparison(runners=[runner.name for runner in runners], outputs=outputs, atol=atol, rtol=rtol)
