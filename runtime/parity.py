"""Parity of any backend against eager PyTorch (float32) on a list of structures, and the export
hook that keeps a graph off the disk unless it passes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from ase import Atoms
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.parity import Deviation, compare_with_tolerances
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.eager import EagerBackend


def compare_with_eager(backend, model: nn.Module, structures: Sequence[Atoms], precision: str) -> dict[str, Deviation]:
    """``backend`` vs eager float32 ``model`` per output (energy eV per structure, forces eV/Å,
    virial eV) under ``precision``'s tolerances, with all ``structures`` in one call of each."""
    inputs = batch_inputs(list(structures), [compute_pairs(atoms, model.cutoff) for atoms in structures])
    expected = EagerBackend(model, torch.device("cpu"), torch.float32).evaluate(inputs)
    actual = backend.evaluate(inputs.to(device=backend.device))
    return compare_with_tolerances(actual, expected, precision, inputs.structure_index)


class OnnxParityCheck:
    """A ``to_onnx(..., check=OnnxParityCheck(model, structures, precision))`` hook: the written,
    sealed file is loaded like any artifact (ONNX Runtime, CPU) and compared with eager float32
    ``model`` on ``structures`` under ``precision``'s tolerances before it is moved into place.

    Raises :class:`~mlff_export.export.errors.ExportError` naming every output out of tolerance, so
    nothing is written. ``deviations`` holds the comparison afterwards (for a report).
    """

    def __init__(self, model: nn.Module, structures: Sequence[Atoms], precision: str):
        self.model = model
        self.structures = list(structures)
        self.precision = precision
        self.deviations: dict[str, Deviation] = {}

    def __call__(self, path: Path) -> None:
        from mlff_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

        self.deviations = compare_with_eager(OnnxRuntimeBackend(path), self.model, self.structures, self.precision)
        failed = [f"{name} |difference| {d.difference:.2e} > {d.allowed:.2e}" for name, d in self.deviations.items() if not d.passed]
        if failed:
            raise ExportError(
                f"the {self.precision} graph differs from eager PyTorch ({'; '.join(failed)}); nothing was written"
            )
