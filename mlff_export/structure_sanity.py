"""Physically impossible structures get an error, never a number: closest pair and density.

Two atoms closer than ``min_distance`` (an atom and its own periodic image included) are refused
with a :class:`~mlff_export.neighbors.StructureError` naming both. Real matter has no such pairs:
the shortest bond is H2's 0.74 Å, and an MLFF has seen nothing much shorter, so it extrapolates
(two atoms 1e-6 Å apart gave +3e5 eV; two at the same place a finite energy and zero forces). The
default, :data:`DEFAULT_MIN_DISTANCE` = 0.5 Å, is below any equilibrium or thermal MD distance;
``load_calculator(min_distance=...)`` changes it (0 switches the check off).

Periodic cells holding more than :data:`MAX_NUMBER_DENSITY` atoms per Å³ are refused too: one
atom in a 0.6 Å cell has no pair below 0.5 Å, yet sees 2,400 images of itself within 5 Å, and
eager float32, eager float64 and ONNX Runtime gave energies 0.3 eV apart. Diamond, the densest
common solid, has 0.18 atoms/Å³; hydrogen at 500 GPa about 0.7.

The closest-pair check reuses the pair list the call needs anyway (every pair closer than the cutoff is in it,
self-images too), so it costs one pass over the pairs: numpy on the CPU path here, torch ops on
the device for the GPU input path (:func:`mlff_export.runtime.device_feeds.closest_distance`).
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms

from mlff_export.neighbors import Pairs, StructureError

DEFAULT_MIN_DISTANCE = 0.5
"""Å: pairs closer than this are refused (see the module docstring)."""

MAX_NUMBER_DENSITY = 1.0
"""atoms/Å³: 3-D periodic cells denser than this are refused (see the module docstring)."""


def checked_min_distance(min_distance: float) -> float:
    """``min_distance`` as a float after checking it is a finite number >= 0 (Å)."""
    if isinstance(min_distance, bool) or not isinstance(min_distance, (int, float)) or not math.isfinite(min_distance) or min_distance < 0:
        raise ValueError(f"min_distance | received {min_distance!r} | expected a finite distance >= 0 in Å (0: no check)")
    return float(min_distance)


def _atom(atoms: Atoms, index: int) -> str:
    return f"atom {index} ({atoms.get_chemical_symbols()[index]})"


def overlap_error(atoms: Atoms, first: int, second: int, shift: np.ndarray, distance: float, min_distance: float) -> StructureError:
    """The error for atoms ``first`` and ``second`` (the latter shifted by the integer lattice
    translation ``shift``) at ``distance`` Å."""
    if first == second:
        pair = f"{_atom(atoms, first)} and its own periodic image (lattice translation {shift.tolist()}) are"
    elif shift.any():
        pair = f"{_atom(atoms, first)} and the periodic image (translation {shift.tolist()}) of {_atom(atoms, second)} are"
    else:
        pair = f"{_atom(atoms, first)} and {_atom(atoms, second)} are"
    return StructureError(
        f"{pair} {distance:.3g} Å apart, closer than the minimum of {min_distance} Å: overlapping atoms or a "
        "collapsed cell; fix the structure (or pass min_distance= to load_calculator, 0 to switch the check off)"
    )


def check_closest_pair(atoms: Atoms, pairs: Pairs, min_distance: float) -> None:
    """Raise :func:`overlap_error` for the closest pair of ``pairs`` if it is below ``min_distance``."""
    if min_distance <= 0 or pairs.pair_index.shape[1] == 0:
        return
    centers, neighbors = pairs.pair_index
    vectors = atoms.positions[neighbors] - atoms.positions[centers]
    if atoms.pbc.any():
        vectors += pairs.cartesian_shifts(atoms.cell.array)
    squared = np.einsum("ij,ij->i", vectors, vectors)
    closest = int(np.argmin(squared))
    if squared[closest] < min_distance**2:
        first, second = int(centers[closest]), int(neighbors[closest])
        raise overlap_error(atoms, first, second, pairs.cell_shifts[closest], math.sqrt(squared[closest]), min_distance)


def check_density(atoms: Atoms) -> None:
    """Raise :class:`StructureError` for a 3-D periodic cell denser than :data:`MAX_NUMBER_DENSITY`."""
    if not atoms.pbc.all():
        return
    density = len(atoms) / abs(atoms.cell.volume)
    if density > MAX_NUMBER_DENSITY:
        raise StructureError(
            f"{len(atoms)} atoms in a cell of {abs(atoms.cell.volume):.3g} Å^3: {density:.3g} atoms/Å^3, denser than "
            f"any matter (limit {MAX_NUMBER_DENSITY}; diamond has 0.18); the cell is collapsed or in the wrong units"
        )
