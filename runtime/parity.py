"""Parity of any backend against eager PyTorch (float32) on a list of structures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase import Atoms
from torch import nn

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
