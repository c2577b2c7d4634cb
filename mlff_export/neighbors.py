"""From ASE structures to interface inputs: checks, vesin neighbor lists, Verlet reuse, batching.

Neighbor search happens here, never inside a model. vesin handles full, mixed and no periodicity,
triclinic cells and cells smaller than the cutoff (many images of one atom, self-images).

The search is bounded before it starts. A cell whose perpendicular heights are small compared
with the cutoff makes vesin visit ``(cutoff / height)`` layers of images (one atom in a cell with
a 0.005 Å height took 52 s): such cells are searched on their Minkowski-reduced basis (the same
lattice, so the same pairs; shifts are mapped back), and a lattice so thin that even its reduced
basis needs more than :data:`MAX_SEARCH_IMAGES` images is refused (its atoms overlap their own
images). A structure whose estimated pair count (:func:`estimate_pairs`) would not fit in memory
is refused before any pair is stored (:class:`~mlff_export.memory.InsufficientMemoryError`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import vesin
from ase import Atoms
from ase.cell import Cell
from ase.data import chemical_symbols
from ase.geometry.minkowski_reduction import minkowski_reduce

from mlff_export.interface import AtomicInputs
from mlff_export.memory import MemoryBudget

REDUCE_ABOVE_IMAGES = 2_000  # cells needing more periodic images than this are searched reduced
MAX_SEARCH_IMAGES = 1_000_000  # a reduced cell needing more is (near-)singular: refused
SEARCH_BYTES_PER_PAIR = 160  # host memory per pair while a pair list is searched and batched


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


def _face_normals(cell: np.ndarray) -> np.ndarray:
    """[3, 3] unit normals of the faces opposite each lattice vector (row k: normal to the other two)."""
    normals = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _image_count(cell: np.ndarray, periodic: tuple[bool, ...], cutoff: float) -> float:
    """Periodic images a search of ``cell`` visits: ``prod_k (2 ceil(cutoff / h_k) + 1)`` over
    periodic directions, ``h_k`` the cell's height perpendicular to face ``k``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        heights = np.abs(np.einsum("ij,ij->i", cell, _face_normals(cell)))
    if not all(heights[k] > 0 for k in range(3) if periodic[k]):
        return math.inf  # a flat cell: no search can finish
    return math.prod(2 * math.ceil(cutoff / heights[k]) + 1 for k in range(3) if periodic[k])


@functools.lru_cache(maxsize=64)
def _search_lattice(cell_bytes: bytes, periodic: tuple[bool, ...], cutoff: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The cell vesin searches, and the integer matrix taking its shifts to the given cell's
    (``None``: the given cell itself). Raises :class:`StructureError` for a (near-)singular lattice."""
    cell = np.frombuffer(cell_bytes).reshape(3, 3)
    complete = _completed(cell, periodic)
    if _image_count(complete, periodic, cutoff) <= REDUCE_ABOVE_IMAGES:
        return cell, None
    if abs(np.linalg.det(complete)) < 1e-8:
        raise StructureError(f"cell is singular (volume 0) with pbc={list(periodic)}: give three independent lattice vectors")
    reduced, change = minkowski_reduce(complete, pbc=periodic)
    reduced = np.where(np.array(periodic)[:, None], np.asarray(reduced), cell)
    if _image_count(_completed(reduced, periodic), periodic, cutoff) > MAX_SEARCH_IMAGES:
        lengths = [np.linalg.norm(reduced[k]) for k in range(3) if periodic[k]]
        raise StructureError(
            f"the cell is (near-)singular: its lattice has a translation of {min(lengths):.3g} Å, so atom 0 is "
            f"{min(lengths):.3g} Å from its own periodic image (cell {cell.tolist()}); give three independent "
            "lattice vectors of physical length"
        )
    return reduced, np.asarray(change, dtype=np.int64)


def _completed(cell: np.ndarray, periodic: tuple[bool, ...]) -> np.ndarray:
    """``cell`` with zero rows along non-periodic directions replaced as ASE does (unit normals)."""
    return Cell(cell).complete().array if not all(periodic) else cell


def estimate_pairs(atoms: Atoms, cutoff: float) -> int:
    """Pairs within ``cutoff`` expected for ``atoms`` spread evenly over their cell (periodic
    directions) and their extent (other directions): ``N^2 (4/3 pi cutoff^3 / V) prod_k h_k / max(L_k, 2 cutoff)``
    with ``V`` the (completed) cell's volume and, for each non-periodic direction ``k``, ``h_k`` the
    cell's height and ``L_k`` the atoms' extent there. Self-images count. Exact in the mean for
    uniform matter; an estimate for the memory guard, not a bound."""
    periodic = tuple(atoms.pbc.tolist())
    cell = _completed(atoms.cell.array if any(periodic) else np.zeros((3, 3)), periodic)
    normals = _face_normals(cell)
    factor = 4 / 3 * math.pi * cutoff**3 / abs(np.linalg.det(cell))
    if not all(periodic):
        projected = atoms.positions @ normals.T
        for k in range(3):
            if not periodic[k]:
                extent = float(projected[:, k].max() - projected[:, k].min())
                factor *= abs(float(cell[k] @ normals[k])) / max(extent, 2 * cutoff)
    return int(len(atoms) ** 2 * factor)


def check_search_fits(atoms: Atoms, cutoff: float, memory: MemoryBudget | None = None) -> None:
    """Raise :class:`~mlff_export.memory.InsufficientMemoryError` before a search whose estimated
    pairs (:func:`estimate_pairs`) would not fit in host memory. Small structures skip it."""
    periodic = tuple(atoms.pbc.tolist())
    images = _image_count(_completed(atoms.cell.array, periodic), periodic, cutoff) if any(periodic) else 1
    memory = memory or MemoryBudget()
    if memory.pairs_that_fit(int(len(atoms) ** 2 * images), SEARCH_BYTES_PER_PAIR) is None:
        return
    estimate = estimate_pairs(atoms, cutoff)
    fit = memory.pairs_that_fit(estimate, SEARCH_BYTES_PER_PAIR)
    if fit is not None and estimate > fit:
        raise memory.refusal(
            estimate,
            SEARCH_BYTES_PER_PAIR,
            f"the neighbor search of {len(atoms)} atoms (cutoff {cutoff} Å)",
            "so many pairs mean atoms piled up or a collapsed cell; otherwise use a machine with more memory",
        )


def compute_pairs(atoms: Atoms, cutoff: float, memory: MemoryBudget | None = None) -> Pairs:
    """All pairs (both directions, every periodic image) closer than ``cutoff`` Å.

    Refuses, before searching, a (near-)singular lattice (:class:`StructureError`) and a
    structure whose pairs would not fit in host memory (``memory``, default: the free memory).
    """
    periodic = tuple(atoms.pbc.tolist())
    box, change = np.zeros((3, 3)), None
    if any(periodic):
        box, change = _search_lattice(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes(), periodic, float(cutoff))
    check_search_fits(atoms, cutoff, memory)
    search = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    centers, neighbors, shifts = search.compute(atoms.positions, box, list(periodic), quantities="ijS")
    pair_index = np.stack([centers, neighbors]).astype(np.int64)
    cell_shifts = np.asarray(shifts, dtype=np.int64)
    return Pairs(pair_index=pair_index, cell_shifts=cell_shifts if change is None else cell_shifts @ change)


class KeptSearch:
    """A neighbor search's result (a pair list, a neighbor table) kept for the structures it still
    serves. Searched within ``cutoff + skin`` for one structure, it holds every pair within
    ``cutoff`` of a later one until an atom has moved more than ``skin / 2`` Å, or the atom count,
    elements, periodicity or cell changed. Setting ``skin`` (Å, >= 0) forgets what was kept: a
    wider skin would otherwise reuse a search too short for it."""

    def __init__(self, skin: float = 0.0):
        self.skin = skin

    @property
    def skin(self) -> float:
        return self._skin

    @skin.setter
    def skin(self, skin: float) -> None:
        if skin < 0:
            raise ValueError(f"skin must be >= 0; got {skin}")
        self._skin = float(skin)
        self._reference: Atoms | None = None
        self.value: object = None

    def keep(self, atoms: Atoms, value: object) -> None:
        """Keep ``value``, the search of ``atoms`` within ``cutoff + skin``."""
        self._reference = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        self.value = value

    def get(self, atoms: Atoms) -> object:
        """The kept value if it still holds every pair of ``atoms`` within the cutoff, else ``None``."""
        reference = self._reference
        if reference is None or len(reference) != len(atoms):
            return None
        if (reference.numbers != atoms.numbers).any() or (reference.pbc != atoms.pbc).any():
            return None
        if not np.array_equal(reference.cell.array, atoms.cell.array):
            return None
        displacement = np.linalg.norm(atoms.positions - reference.positions, axis=1).max()
        return None if displacement > 0.5 * self.skin else self.value


class VerletNeighborList(KeptSearch):
    """Neighbor list with a skin, rebuilt only when an atom moved more than ``skin / 2``.

    Pairs are searched within ``cutoff + skin``; the model ignores pairs beyond its cutoff, so a
    list is valid until some atom has moved ``skin / 2`` since the last build. A change of atom
    count, elements, periodicity or cell also triggers a rebuild (:class:`KeptSearch`).
    """

    def __init__(self, cutoff: float, skin: float = 0.0, memory: MemoryBudget | None = None):
        """``memory``: host memory a search may take (:func:`compute_pairs`; default: what is free)."""
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"cutoff must be > 0 and skin >= 0; got cutoff={cutoff}, skin={skin}")
        super().__init__(skin)
        self.cutoff = float(cutoff)
        self.memory = memory
        self.builds = 0

    def pairs(self, atoms: Atoms) -> Pairs:
        pairs = self.get(atoms)
        if pairs is None:
            pairs = compute_pairs(atoms, self.cutoff + self.skin, self.memory)
            self.keep(atoms, pairs)
            self.builds += 1
        return pairs


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
        lattice_shifts=as_index(np.concatenate([p.cell_shifts for p in pairs])),
    )
