"""Batches of structures for one model call, bounded by atom count (automatic) or structure count.

Automatic batch size follows torch-sim's autobatcher (memory scales with atoms; find the
largest batch that fits, then pack structures up to it), searched from the top instead of
grown from the bottom so a compiled backend compiles no throw-away shapes: on a GPU the budget
starts at :data:`GPU_MAX_ATOMS` and halves until the first batch of real structures runs
without running out of memory (or outside every profile of a TensorRT engine). A later batch
that still does not fit is split by :meth:`MLFFCalculator.predict` itself. On the CPU, memory
is not what limits a batch: :data:`CPU_MAX_ATOMS` atoms per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase import Atoms

from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.calculator import MLFFCalculator
from mlff_export.runtime.shape_buckets import ShapeOutOfRangeError

CPU_MAX_ATOMS = 2048
"""Atoms per call on the CPU: the reference model's throughput is flat from ~400 atoms of small
molecules on (2-core CPU, 1 thread: 234, 219, 244 structures/s at 396, 1717, 6698 atoms), and a
few thousand atoms keep the autograd buffers of dense periodic cells within a few GB."""

GPU_MAX_ATOMS = 16384
"""Largest atom budget tried on a GPU: on the H100, 1024 small molecules (6.7k atoms) already run
at the batch throughput plateau (bench/results/2026-11-24-h100-gpu-path: eager 9.3k structures/s at
256 molecules, 9.0k/s at 1024), so larger calls only add latency and memory."""


def batches(atom_counts: Sequence[int], max_atoms: int | None = None, max_structures: int | None = None) -> list[range]:
    """Consecutive positions ``0 .. len(atom_counts) - 1`` packed into batches in order.

    A batch closes before the structure that would take it over ``max_atoms`` atoms or
    ``max_structures`` structures (None: no limit); a structure larger than ``max_atoms`` on its
    own is a batch of one.
    """
    result = []
    start, atoms = 0, 0
    for position, count in enumerate(atom_counts):
        full = (max_atoms is not None and atoms + count > max_atoms) or (
            max_structures is not None and position - start >= max_structures
        )
        if full and position > start:
            result.append(range(start, position))
            start, atoms = position, 0
        atoms += count
    if len(atom_counts) > start:
        result.append(range(start, len(atom_counts)))
    return result


def largest_fitting_atoms(calc: MLFFCalculator, structures: Sequence[Atoms]) -> int:
    """The automatic atom budget per call for ``calc`` (see the module docstring).

    ``structures`` (valid for the model, non-empty) are the run's first; the probe evaluates
    their first batch under each budget through the backend (one call, results dropped).
    """
    if calc.backend.device.type != "cuda":
        return CPU_MAX_ATOMS
    counts = [len(atoms) for atoms in structures]
    budget = GPU_MAX_ATOMS
    while True:
        first = list(structures[: len(batches(counts, budget)[0])])
        pairs = [compute_pairs(atoms, calc.neighbor_list.cutoff) for atoms in first]
        try:
            calc.backend.evaluate(batch_inputs(first, pairs, dtype=calc.backend.dtype))
            return budget
        except (torch.cuda.OutOfMemoryError, ShapeOutOfRangeError):
            torch.cuda.empty_cache()
            if len(first) == 1:
                return budget  # one structure alone does not fit: predict evaluates it its own way
            budget = sum(counts[: len(first)]) // 2
