"""Overlapping atoms: two atoms (or an atom and a periodic image) closer than a minimum distance.

The calculator returns numbers for coincident atoms, which no one should defend; screening
refuses them first. Molecules of up to :data:`DENSE_CHECK_ATOMS` atoms are checked together,
one numpy pass per atom count (a few µs per molecule); periodic and larger structures through a
vesin neighbor list each (a few hundred µs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import vesin
from ase import Atoms

DENSE_CHECK_ATOMS = 64


def overlap_problems(structures: Sequence[Atoms], min_distance: float) -> list[str | None]:
    """For each structure, why it has overlapping atoms (closer than ``min_distance`` Å), or
    None; ``min_distance <= 0`` checks nothing. Positions must be finite."""
    problems: list[str | None] = [None] * len(structures)
    if min_distance <= 0:
        return problems
    molecules_by_size = defaultdict(list)
    for position, atoms in enumerate(structures):
        if len(atoms) <= DENSE_CHECK_ATOMS and not atoms.pbc.any():
            molecules_by_size[len(atoms)].append(position)
        else:
            problems[position] = _overlap_by_neighbor_list(atoms, min_distance)
    for size, positions in molecules_by_size.items():
        if size < 2:
            continue
        coordinates = np.stack([structures[position].positions for position in positions])
        distances = np.linalg.norm(coordinates[:, :, None] - coordinates[:, None], axis=-1)
        distances[:, np.arange(size), np.arange(size)] = np.inf
        closest = distances.reshape(len(positions), -1).argmin(axis=1)
        for row, (position, flat) in enumerate(zip(positions, closest)):
            i, j = divmod(int(flat), size)
            if distances[row, i, j] < min_distance:
                problems[position] = _message(min(i, j), max(i, j), distances[row, i, j], min_distance)
    return problems


def _overlap_by_neighbor_list(atoms: Atoms, min_distance: float) -> str | None:
    periodic = atoms.pbc.tolist()
    box = atoms.cell.array if any(periodic) else np.zeros((3, 3))
    search = vesin.NeighborList(cutoff=float(min_distance), full_list=False)
    first, second, distances = search.compute(atoms.positions, box, periodic, quantities="ijd")
    if len(distances) == 0:
        return None
    closest = int(np.argmin(distances))
    return _message(int(first[closest]), int(second[closest]), distances[closest], min_distance)


def _message(i: int, j: int, distance: float, min_distance: float) -> str:
    what = f"atom {i} and its periodic image" if i == j else f"atoms {i} and {j}"
    return f"overlapping atoms: {what} are {distance:.3f} Å apart (closer than {min_distance} Å)"
