"""From ASE structures to interface inputs: checks, vesin neighbor lists, Verlet reuse, batching.

Neighbor search happens here, never inside a model. vesin handles full, mixed and no periodicity,
triclinic cells and cells smaller than the cutoff (many images of one atom, self-images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import vesin
from ase import Atoms
from ase.data import chemical_symbols

from mlff_export.interface import AtomicInputs


class StructureError(ValueError):
    """A structure the model cannot be evaluated on; the message names the problem."""


def check_structure(atoms: Atoms, supported_species: Sequence[int]) -> None:
    """Raise :class:`StructureError` for empty structures, non-finite positions, unknown
    elements, or a singular cell along a periodic direction."""
    if len(atoms) == 0:
        raise StructureError("structure has no atoms; expected at least 1")
    positions = atoms.positions
    if not np.isfinite(positions).all():
        bad = int(np.nonzero(~np.isfinite(positions).all(axis=1))[0][0])
        raise StructureError(f"atom {bad} has a non-finite position {positions[bad].tolist()}")
    unknown = sorted(set(atoms.numbers.tolist()) - set(supported_species))
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in supported_species)
        raise StructureError(f"element(s) {names} not supported by this model; it supports {known}")
    if atoms.pbc.any():
        cell = atoms.cell.array
        if not np.isfinite(cell).all():
            raise StructureError(f"cell has non-finite entries: {cell.tolist()}")
        short = [axis for axis in range(3) if atoms.pbc[axis] and np.linalg.norm(cell[axis]) < 1e-8]
        volume = abs(np.linalg.det(atoms.cell.complete()))
        if short or volume < 1e-8:
            raise StructureError(
                f"cell is singular (volume {volume:.3g} Å^3) with pbc={atoms.pbc.tolist()}: "
                "give three independent lattice vectors along periodic directions"
            )


@dataclass
class Pairs:
    """A full neighbor list of one structure.

    Attributes:
        pair_index: [2, E] int64, (center, neighbor).
        cell_shifts: [E, 3] int64, lattice translations; Cartesian shift = ``cell_shifts @ cell``.
    """

    pair_index: np.ndarray
    cell_shifts: np.ndarray

    def cartesian_shifts(self, cell: np.ndarray) -> np.ndarray:
        return self.cell_shifts @ cell


def compute_pairs(atoms: Atoms, cutoff: float) -> Pairs:
    """All pairs (both directions, every periodic image) closer than ``cutoff`` Å."""
    periodic = atoms.pbc.tolist()
    box = atoms.cell.array if any(periodic) else np.zeros((3, 3))
    search = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    centers, neighbors, shifts = search.compute(atoms.positions, box, periodic, quantities="ijS")
    pair_index = np.stack([centers, neighbors]).astype(np.int64)
    return Pairs(pair_index=pair_index, cell_shifts=np.asarray(shifts, dtype=np.int64))


class VerletNeighborList:
    """Neighbor list with a skin, rebuilt only when an atom moved more than ``skin / 2``.

    Pairs are searched within ``cutoff + skin``; the model ignores pairs beyond its cutoff, so a
    list is valid until some atom has moved ``skin / 2`` since the last build. A change of atom
    count, elements, periodicity or cell also triggers a rebuild.
    """

    def __init__(self, cutoff: float, skin: float = 0.0):
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"cutoff must be > 0 and skin >= 0; got cutoff={cutoff}, skin={skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.builds = 0
        self._pairs: Pairs | None = None
        self._reference: Atoms | None = None

    def _needs_rebuild(self, atoms: Atoms) -> bool:
        ref = self._reference
        if ref is None or len(ref) != len(atoms):
            return True
        if (ref.numbers != atoms.numbers).any() or (ref.pbc != atoms.pbc).any():
            return True
        if not np.array_equal(ref.cell.array, atoms.cell.array):
            return True
        displacement = np.linalg.norm(atoms.positions - ref.positions, axis=1).max()
        return bool(displacement > 0.5 * self.skin)

    def pairs(self, atoms: Atoms) -> Pairs:
        if self._needs_rebuild(atoms):
            self._pairs = compute_pairs(atoms, self.cutoff + self.skin)
            self._reference = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            self.builds += 1
        return self._pairs


def batch_inputs(
    structures: Sequence[Atoms],
    pairs: Sequence[Pairs],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> AtomicInputs:
    """Concatenate structures and their pair lists into one :class:`AtomicInputs`."""
    offsets = np.cumsum([0] + [len(atoms) for atoms in structures])
    positions = np.concatenate([atoms.positions for atoms in structures])
    species = np.concatenate([atoms.numbers for atoms in structures])
    structure_index = np.repeat(np.arange(len(structures)), [len(atoms) for atoms in structures])
    pair_index = np.concatenate([p.pair_index + offset for p, offset in zip(pairs, offsets)], axis=1)
    shifts = np.concatenate([p.cartesian_shifts(atoms.cell.array) for p, atoms in zip(pairs, structures)])
    cells = np.stack([atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3)) for atoms in structures])

    def as_float(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=device)

    def as_index(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.int64, device=device)

    return AtomicInputs(
        positions=as_float(positions),
        species=as_index(species),
        pair_index=as_index(pair_index),
        pair_shifts=as_float(shifts),
        structure_index=as_index(structure_index),
        cell=as_float(cells),
    )
