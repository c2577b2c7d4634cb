"""Neighbor lists (vesin) against ASE's own, Verlet reuse, and structure checks."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list
from conftest import structure_zoo

from mlff_export.neighbors import StructureError, VerletNeighborList, check_structure, compute_pairs

HCNO = (1, 6, 7, 8)


def pair_set(pair_index: np.ndarray, cell_shifts: np.ndarray) -> set[tuple[int, ...]]:
    return {(int(i), int(j), *map(int, s)) for (i, j), s in zip(pair_index.T, cell_shifts)}


def random_cell(rng: np.random.Generator, num_atoms: int, pbc) -> Atoms:
    """Random triclinic cell with lattice vectors of 1.5 to 7 Å (often smaller than the cutoff)."""
    cell = np.diag(rng.uniform(1.5, 7.0, 3)) + np.triu(rng.uniform(-1.5, 1.5, (3, 3)), k=1)
    atoms = Atoms(numbers=rng.choice(HCNO, num_atoms), cell=cell, pbc=pbc)
    atoms.set_scaled_positions(rng.uniform(0, 1, (num_atoms, 3)))
    return atoms


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pbc", [True, [True, False, True], False])
def test_pairs_match_ase_on_random_cells(seed, pbc):
    rng = np.random.default_rng(seed)
    atoms = random_cell(rng, int(rng.integers(1, 9)), pbc)
    cutoff = 4.5
    pairs = compute_pairs(atoms, cutoff)
    i, j, shifts = neighbor_list("ijS", atoms, cutoff, self_interaction=False)
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == pair_set(np.stack([i, j]), shifts)


def test_small_cell_counts_self_images():
    """One atom in a 2 Å cubic cell sees 2*3 images at 2 Å, 12 at 2.83 Å, 8 at 3.46 Å within 3.5 Å."""
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=np.eye(3) * 2.0, pbc=True)
    pairs = compute_pairs(atoms, 3.5)
    assert pairs.pair_index.shape[1] == 26
    assert (pairs.pair_index == 0).all()


def test_pair_vectors_use_cartesian_shifts():
    atoms = random_cell(np.random.default_rng(3), 5, True)
    pairs = compute_pairs(atoms, 4.0)
    i, j = pairs.pair_index
    vectors = atoms.positions[j] - atoms.positions[i] + pairs.cartesian_shifts(atoms.cell.array)
    assert np.linalg.norm(vectors, axis=1).max() < 4.0


def test_verlet_list_rebuilds_only_after_half_skin():
    atoms = structure_zoo()["benzene"]
    verlet = VerletNeighborList(cutoff=4.0, skin=1.0)
    verlet.pairs(atoms)
    moved = atoms.copy()
    moved.positions[0] += [0.49, 0.0, 0.0]
    verlet.pairs(moved)
    assert verlet.builds == 1
    moved.positions[0] += [0.02, 0.0, 0.0]
    verlet.pairs(moved)
    assert verlet.builds == 2


def test_verlet_list_rebuilds_on_cell_change():
    atoms = structure_zoo()["diamond-primitive"]
    verlet = VerletNeighborList(cutoff=4.0, skin=1.0)
    verlet.pairs(atoms)
    strained = atoms.copy()
    strained.set_cell(atoms.cell * 1.01, scale_atoms=True)
    verlet.pairs(strained)
    assert verlet.builds == 2


def test_unknown_element_is_named_with_the_supported_ones():
    with pytest.raises(StructureError, match=r"element\(s\) Si.*supports H, C, N, O"):
        check_structure(molecule("SiH4"), HCNO)


@pytest.mark.parametrize(
    "atoms, message",
    [
        (Atoms(), "no atoms"),
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "atom 1 has a non-finite position"),
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, np.inf]]), "non-finite"),
        (Atoms("H", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True), "singular"),
        (Atoms("H", cell=[[1, 0, 0], [0, 0, 0], [0, 0, 1]], pbc=True), "singular"),
    ],
)
def test_bad_structures_are_refused(atoms, message):
    with pytest.raises(StructureError, match=message):
        check_structure(atoms, HCNO)
