"""The closest-pair check and its messages, on hand-made pair lists (mlff_export.structure_sanity).

The calculator-level cases (overlapping atoms refused on every path, the option's bad values) are
in the bad-input catalogue, tests/test_bad_inputs.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from mlff_export.neighbors import Pairs, StructureError, compute_pairs
from mlff_export.structure_sanity import check_closest_pair, check_density, overlap_error


def pairs(*entries: tuple[int, int, tuple[int, int, int]]) -> Pairs:
    """A pair list of (center, neighbor, lattice translation) in the order given."""
    return Pairs(np.array([[c for c, _, _ in entries], [n for _, n, _ in entries]]), np.array([s for _, _, s in entries]))


def test_the_message_names_both_atoms_whichever_comes_first():
    """Neighbor searches list pairs in any order: the closest may be (2, 1) as well as (1, 2)."""
    atoms = Atoms("OCH", positions=[[0, 0, 0], [3, 0, 0], [3.2, 0, 0]])
    message = str(overlap_error(atoms, 2, 1, np.zeros(3, dtype=int), 0.2, 0.5))
    assert "atom 2 (H) and atom 1 (C) are 0.2 Å apart" in message and "periodic" not in message
    with pytest.raises(StructureError, match=r"atom 2 \(H\) and atom 1 \(C\) are 0.2 Å apart"):
        check_closest_pair(atoms, pairs((2, 1, (0, 0, 0)), (1, 2, (0, 0, 0)), (0, 1, (0, 0, 0))), 0.5)


def test_an_image_of_another_atom_and_an_atoms_own_image_are_told_apart():
    atoms = Atoms("CO", positions=[[0, 0, 0], [4.8, 0, 0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(StructureError, match=r"atom 1 \(O\) and the periodic image \(translation \[1, 0, 0\]\) of atom 0 \(C\)"):
        check_closest_pair(atoms, pairs((1, 0, (1, 0, 0)), (0, 1, (-1, 0, 0))), 0.5)
    lone = Atoms("C", positions=[[0, 0, 0]], cell=[0.3, 5, 5], pbc=True)
    with pytest.raises(StructureError, match=r"atom 0 \(C\) and its own periodic image \(lattice translation \[-?1, 0, 0\]\)"):
        check_closest_pair(lone, compute_pairs(lone, 1.0), 0.5)


def test_a_pair_exactly_at_the_minimum_is_allowed():
    """The minimum is the closest distance still evaluated (0.5 Å: exact in binary)."""
    atoms = Atoms("HH", positions=[[0, 0, 0], [0.5, 0, 0]])
    check_closest_pair(atoms, pairs((0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))), 0.5)
    with pytest.raises(StructureError, match="0.5 Å apart"):
        check_closest_pair(atoms, pairs((0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))), 0.5000001)


def test_no_pairs_is_no_overlap():
    """Atoms farther apart than the cutoff leave an empty pair list: nothing to refuse."""
    atoms = Atoms("HH", positions=[[0, 0, 0], [10, 0, 0]])
    empty = compute_pairs(atoms, 5.0)
    assert empty.pair_index.shape == (2, 0)
    check_closest_pair(atoms, empty, 0.5)


def test_density_limit_is_one_atom_per_cubic_angstrom():
    """The documented limit, MAX_NUMBER_DENSITY = 1 atom/Å^3: a cell exactly at it is evaluated,
    one 1 % denser is refused, and molecules (no 3-D cell) have no density."""
    check_density(Atoms("C", cell=np.eye(3), pbc=True))
    with pytest.raises(StructureError, match="denser than any matter"):
        check_density(Atoms("C", cell=np.eye(3) * 0.99 ** (1 / 3), pbc=True))
    check_density(Atoms("CC", positions=[[0, 0, 0], [0.1, 0, 0]], cell=np.eye(3) * 0.1, pbc=[True, True, False]))
