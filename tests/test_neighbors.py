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


def test_first_of_several_non_finite_atoms_is_named():
    atoms = Atoms("H4", positions=[[0, 0, 0], [np.nan, 0, 0], [2, 0, 0], [0, np.inf, 0]])
    with pytest.raises(StructureError, match="atom 1 has a non-finite position"):
        check_structure(atoms, HCNO)


def test_zero_third_lattice_vector_is_refused():
    """A zero vector along a periodic direction is singular wherever it sits (here the last row,
    which ``Cell.complete()`` would silently fill)."""
    with pytest.raises(StructureError, match="singular"):
        check_structure(Atoms("H", cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]], pbc=True), HCNO)


@pytest.mark.parametrize(
    "atoms",
    [
        *structure_zoo().values(),
        # a chain: the non-periodic directions need no lattice vectors
        Atoms("C2", positions=[[0, 0, 0], [1.25, 0, 0]], cell=[2.5, 0, 0], pbc=[True, False, False]),
        # a chain in a small box: the box's volume (0.1 Å^3) is no lattice's, nothing is singular
        Atoms("C2", positions=[[0, 0, 0], [1.25, 0, 0]], cell=[2.5, 0.2, 0.2], pbc=[True, False, False]),
        # a 0.8 Å lattice vector: short (the calculator's min_distance decides), not singular
        Atoms("H", cell=[0.8, 4.0, 4.0], pbc=True),
    ],
    ids=[*structure_zoo(), "chain", "chain-in-small-box", "short-lattice-vector"],
)
def test_valid_structures_pass_the_check(atoms):
    check_structure(atoms, HCNO)


def ase_pair_set(atoms: Atoms, cutoff: float) -> set[tuple[int, ...]]:
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    return pair_set(np.stack([i, j]), shifts)


def test_verlet_list_holds_the_pairs_within_cutoff_plus_skin():
    """Cutoff 3 Å, skin 0.7 Å: exactly ASE's pairs within 3.7 Å, some of them beyond 3 Å."""
    atoms = structure_zoo()["diamond-primitive"]
    pairs = VerletNeighborList(cutoff=3.0, skin=0.7).pairs(atoms)
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == ase_pair_set(atoms, 3.7)
    assert ase_pair_set(atoms, 3.7) > ase_pair_set(atoms, 3.0)


def test_verlet_list_has_no_skin_by_default():
    """Without a skin the list holds the pairs within the cutoff only, and any motion rebuilds it."""
    atoms = structure_zoo()["diamond-primitive"]
    verlet = VerletNeighborList(cutoff=3.0)
    assert verlet.skin == 0
    pairs = verlet.pairs(atoms)
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == ase_pair_set(atoms, 3.0)
    verlet.pairs(atoms.copy())
    assert verlet.builds == 1, "an unmoved structure reuses the list"
    moved = atoms.copy()
    moved.positions[1] += [1e-3, 0, 0]
    verlet.pairs(moved)
    assert verlet.builds == 2


def test_a_new_skin_searches_again_at_its_own_radius():
    """A list built without a skin, then given one, must not reuse its cutoff-only pairs."""
    atoms = structure_zoo()["diamond-primitive"]
    verlet = VerletNeighborList(cutoff=3.0)
    verlet.pairs(atoms)
    verlet.skin = 0.7
    pairs = verlet.pairs(atoms)
    assert verlet.builds == 2
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == ase_pair_set(atoms, 3.7)
    with pytest.raises(ValueError, match="skin must be >= 0"):
        verlet.skin = -0.1


def test_verlet_list_keeps_its_pairs_at_exactly_half_the_skin():
    """The rule is "moved more than skin / 2": 0.75 -> 1.25 Å is exactly 0.5 Å (exact in binary)."""
    verlet = VerletNeighborList(cutoff=2.0, skin=1.0)
    verlet.pairs(Atoms("H2", positions=[[0, 0, 0], [0.75, 0, 0]]))
    verlet.pairs(Atoms("H2", positions=[[0, 0, 0], [1.25, 0, 0]]))
    assert verlet.builds == 1
    verlet.pairs(Atoms("H2", positions=[[0, 0, 0], [1.375, 0, 0]]))
    assert verlet.builds == 2


def test_verlet_list_measures_each_atoms_displacement():
    """Skin 1 Å: a rigid 0.4 Å shift of all 12 benzene atoms (each moved 0.4 Å) keeps the list; one
    atom moved (0.3, 0.3, 0.3) Å, 0.52 Å in all, rebuilds it."""
    atoms = structure_zoo()["benzene"]
    verlet = VerletNeighborList(cutoff=4.0, skin=1.0)
    verlet.pairs(atoms)
    shifted = atoms.copy()
    shifted.positions += [0.4, 0.0, 0.0]
    verlet.pairs(shifted)
    assert verlet.builds == 1
    moved = atoms.copy()
    moved.positions[5] += [0.3, 0.3, 0.3]
    verlet.pairs(moved)
    assert verlet.builds == 2


CHANGES_THAT_REBUILD = {
    "cell-strained-1%": ("diamond-primitive", lambda atoms: _strained(atoms, 1.01)),
    "carbon-to-hydrogen": ("benzene", lambda atoms: _with_element(atoms, 1)),
    "carbon-to-oxygen": ("benzene", lambda atoms: _with_element(atoms, 8)),
    "atom-removed": ("benzene", lambda atoms: atoms[:-1]),
    "hydrogen-added-2-A-above-a-carbon": ("benzene", lambda atoms: atoms + Atoms("H", positions=[atoms.positions[0] + [0.0, 0.0, 2.0]])),
}


def _strained(atoms: Atoms, factor: float) -> Atoms:
    strained = atoms.copy()
    strained.set_cell(atoms.cell * factor, scale_atoms=True)
    return strained


def _with_element(atoms: Atoms, number: int) -> Atoms:
    changed = atoms.copy()
    changed.numbers[0] = number
    return changed


@pytest.mark.parametrize("change", CHANGES_THAT_REBUILD)
def test_verlet_list_rebuilds_on_any_change_but_a_small_move(change):
    """A new cell, a lighter or heavier element, one atom fewer or one more: each rebuilds the list
    (whatever the displacement), to ASE's pairs of the changed structure within rc + skin = 5 Å."""
    name, changed = CHANGES_THAT_REBUILD[change]
    atoms = structure_zoo()[name]
    verlet = VerletNeighborList(cutoff=4.0, skin=1.0)
    verlet.pairs(atoms)
    after = changed(atoms)
    pairs = verlet.pairs(after)
    assert verlet.builds == 2
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == ase_pair_set(after, 5.0)


def test_verlet_list_rebuilds_whenever_periodicity_changes():
    """The 2-atom diamond cell (2.5 Å lattice vectors) within 3 + 0.5 Å, its periodicity switched
    off along y, off along all axes, back on along x and z, and on along all: every switch, on or
    off, rebuilds the list, to ASE's pairs for the new periodicity (which differ at each step)."""
    atoms = structure_zoo()["diamond-primitive"]
    verlet = VerletNeighborList(cutoff=3.0, skin=0.5)
    previous = None
    for builds, pbc in enumerate([True, [True, False, True], False, [True, False, True], True], start=1):
        current = atoms.copy()
        current.pbc = pbc
        listed = verlet.pairs(current)
        pairs = pair_set(listed.pair_index, listed.cell_shifts)
        assert verlet.builds == builds, pbc
        assert pairs == ase_pair_set(current, 3.5) != previous
        previous = pairs


@pytest.mark.parametrize("length, refused", [(5e-9, True), (1e-8, False)])
def test_a_lattice_vector_shorter_than_1e_8_angstrom_is_refused_whatever_the_volume(length, refused):
    """Lattice vectors (length, 1e4, 1e4) Å: a volume of 0.5 or 1 Å^3, far above the 1e-8 Å^3 volume
    rule, so the vector-length rule alone decides: shorter than 1e-8 Å (strictly) is singular, so
    5e-9 Å is refused and 1e-8 Å itself is not (|(1e-8, 0, 0)| is exactly 1e-8 in floating point)."""
    atoms = Atoms("H", cell=np.diag([length, 1e4, 1e4]), pbc=True)
    assert abs(atoms.cell.volume) > 0.4
    if refused:
        with pytest.raises(StructureError, match="singular"):
            check_structure(atoms, HCNO)
    else:
        check_structure(atoms, HCNO)


@pytest.mark.parametrize("cutoff, skin", [(0.0, 0.0), (-1.0, 0.5), (4.0, -0.1)])
def test_verlet_list_refuses_a_non_positive_cutoff_or_negative_skin(cutoff, skin):
    with pytest.raises(ValueError, match="cutoff must be > 0 and skin >= 0"):
        VerletNeighborList(cutoff=cutoff, skin=skin)


def test_verlet_list_accepts_small_cutoffs_and_skins():
    verlet = VerletNeighborList(cutoff=0.8, skin=0.5)
    assert (verlet.cutoff, verlet.skin) == (0.8, 0.5)
