"""The bounds put on a neighbor search before it starts: periodic image counts, the reduced
search lattice of thin cells and the refusal of (near-)singular ones, the pair-count estimate and
the memory check built on it.

Every expected value is worked by hand from the geometry: a search within ``rc`` of a cell whose
perpendicular heights are ``h_k`` visits ``prod_k (2 ceil(rc / h_k) + 1)`` images (periodic ``k``),
and ``N`` atoms spread evenly have ``N^2 (4/3 pi rc^3) / V`` pairs within ``rc`` (``V``: the cell's
volume, or for a non-periodic direction the atoms' extent there, at least ``2 rc``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.geometry.minkowski_reduction import minkowski_reduce
from ase.neighborlist import neighbor_list
from conftest import triclinic_cell
from test_neighbors import pair_set

from mlff_export import memory, neighbors
from mlff_export.memory import CHECKED_FROM_BYTES, InsufficientMemoryError, MemoryBudget
from mlff_export.neighbors import (
    REDUCE_ABOVE_IMAGES,
    SEARCH_BYTES_PER_PAIR,
    StructureError,
    _image_count,
    _search_lattice,
    check_search_fits,
    compute_pairs,
    estimate_pairs,
)

PERIODIC = (True, True, True)
# A 3 Å cubic lattice written with the basis (a, b, 10a + 10b + c): two heights of 27 / |b x (10a+10b+c)|
# = 3 / sqrt(101) = 0.2985 Å, so a 4 Å search of it as given visits (2*14+1)^2 * (2*2+1) = 4205 images.
SKEWED_CUBE = np.array([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [30.0, 30.0, 3.0]])
FLAT_CELL = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [5.0, 5.0, 0.0]])  # third vector in the plane of the others


def search_lattice(cell: np.ndarray, periodic: tuple[bool, ...], cutoff: float):
    return _search_lattice(np.ascontiguousarray(cell, dtype=np.float64).tobytes(), periodic, float(cutoff))


# ----------------------------------------------------------------------------------------------
# image counts


@pytest.mark.parametrize(
    "periodic, images",
    [(PERIODIC, 5**3), ((True, False, True), 5**2), ((False, False, True), 5), ((False, False, False), 1)],
)
def test_image_count_of_a_cubic_cell_is_two_ceil_rc_over_a_plus_one_per_periodic_direction(periodic, images):
    """A 2 Å cube searched within 3.5 Å: ceil(3.5/2) = 2 layers each side, 5 images along every
    periodic direction and 1 along the others."""
    assert _image_count(np.eye(3) * 2.0, periodic, 3.5) == images


def test_image_count_uses_perpendicular_heights_in_any_orientation():
    """The conftest triclinic cell has heights V / |a_i x a_j| = (2.789, 2.751, 3.3) Å (lattice
    vectors 3.1, 3.22, 3.54 Å): within 3 Å that is 2, 2 and 1 layers, 5 * 5 * 3 = 75 images
    (lengths instead of heights would give 27). A rotation of the cell changes no height."""
    atoms = triclinic_cell()
    heights = 1 / np.linalg.norm(atoms.cell.reciprocal(), axis=1)  # ASE's route: 1 / |b_k|
    np.testing.assert_allclose(heights, [2.7887, 2.7512, 3.3], atol=1e-4)
    assert _image_count(atoms.cell.array, PERIODIC, 3.0) == 75
    atoms.rotate(40, (1, 2, 3), rotate_cell=True)
    assert not np.allclose(np.triu(atoms.cell.array, k=1), 0)  # now a general orientation
    assert _image_count(atoms.cell.array, PERIODIC, 3.0) == 75


@pytest.mark.parametrize("angle", [0, 40, 115])
def test_image_count_agrees_with_ase_reciprocal_heights_over_many_cutoffs(angle):
    """Heights by an independent route, 1 / |b_k| of ASE's reciprocal cell, give the count for every
    cutoff from 0.25 to 12 Å (none a multiple of a height), on the triclinic cell in three orientations."""
    atoms = triclinic_cell()
    atoms.rotate(angle, (1, 2, 3), rotate_cell=True)
    inverse_heights = np.linalg.norm(atoms.cell.reciprocal(), axis=1)
    for cutoff in np.arange(0.25, 12.0, 0.25):
        expected = math.prod(2 * math.ceil(cutoff * b) + 1 for b in inverse_heights)
        assert _image_count(atoms.cell.array, PERIODIC, cutoff) == expected, cutoff


def test_image_count_of_a_height_below_one_angstrom_is_finite():
    """A 0.5 Å height within 2 Å needs 4 layers each side: 9 images, times 3 * 3 for the 5 Å sides."""
    assert _image_count(np.diag([0.5, 5.0, 5.0]), PERIODIC, 2.0) == 81


def test_image_count_of_a_skewed_basis_counts_its_thin_heights():
    assert _image_count(SKEWED_CUBE, PERIODIC, 4.0) == 29 * 29 * 5


@pytest.mark.parametrize("periodic", [PERIODIC, (False, False, True)])
def test_image_count_of_a_flat_cell_is_infinite(periodic):
    """Three coplanar lattice vectors: every height is 0, no search could finish."""
    assert _image_count(FLAT_CELL, periodic, 4.0) == math.inf


def test_image_count_of_a_periodic_direction_without_a_height_is_infinite():
    """A chain along x whose two non-periodic rows, (0, 3, 0) and (0, 6, 0) Å, are parallel: the face
    opposite x has no normal (0 / 0), so x has no height at all (NaN, not 0). No search can finish:
    the count is infinite and the search is refused as singular (a StructureError, not a crash)."""
    cell = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 6.0, 0.0]])
    periodic = (True, False, False)
    assert _image_count(cell, periodic, 4.0) == math.inf
    with pytest.raises(StructureError, match=r"singular \(volume 0\)"):
        compute_pairs(Atoms("C", positions=[[0.0, 0.0, 0.0]], cell=cell, pbc=periodic), 4.0)


# ----------------------------------------------------------------------------------------------
# the lattice searched


def test_an_ordinary_cell_is_searched_as_given():
    """A 3 Å cube within 4 Å needs 125 images (<= REDUCE_ABOVE_IMAGES): no reduction, no shift map."""
    cell = np.eye(3) * 3.0
    assert _image_count(cell, PERIODIC, 4.0) <= REDUCE_ABOVE_IMAGES
    searched, change = search_lattice(cell, PERIODIC, 4.0)
    assert change is None
    np.testing.assert_array_equal(searched, cell)


def test_a_thin_basis_is_searched_on_its_reduced_basis():
    """The skewed basis of the 3 Å cube (4205 images > REDUCE_ABOVE_IMAGES) is searched on the
    cube itself: an integer, unimodular change of basis with ``change @ cell = reduced``, and
    row lengths of 3 Å (125 images)."""
    searched, change = search_lattice(SKEWED_CUBE, PERIODIC, 4.0)
    assert change is not None and change.dtype == np.int64
    assert abs(round(np.linalg.det(change))) == 1
    np.testing.assert_allclose(change @ SKEWED_CUBE, searched, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(searched, axis=1), [3.0, 3.0, 3.0], atol=1e-9)
    assert _image_count(searched, PERIODIC, 4.0) == 125


@pytest.mark.parametrize("images, reduced", [(1999, False), (2001, True)])
def test_a_cell_needing_more_than_2000_images_is_searched_reduced(images, reduced):
    """A chain (periodic along x only) of translation h with 4 Å / h = layers - 0.5 needs
    2 * layers + 1 images within 4 Å: 1999 (<= REDUCE_ABOVE_IMAGES = 2000) is searched as given,
    2001 on its reduced basis (for a 1-D lattice, itself: the identity change of basis)."""
    layers = (images - 1) // 2
    cell = np.array([[4.0 / (layers - 0.5), 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    periodic = (True, False, False)
    assert _image_count(np.diag([cell[0, 0], 1.0, 1.0]), periodic, 4.0) == images
    searched, change = search_lattice(cell, periodic, 4.0)
    np.testing.assert_allclose(searched[0], cell[0], rtol=1e-12)
    if reduced:
        np.testing.assert_array_equal(change, np.eye(3, dtype=np.int64))
    else:
        assert change is None


def test_pairs_of_a_thin_basis_match_ase_with_shifts_in_the_given_basis():
    """Searching the reduced basis finds the same pairs, with shifts mapped back to the cell as given."""
    atoms = Atoms("CO", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.4, 0.8]], cell=SKEWED_CUBE, pbc=True)
    pairs = compute_pairs(atoms, 4.0)
    i, j, shifts = neighbor_list("ijS", atoms, 4.0)
    assert pair_set(pairs.pair_index, pairs.cell_shifts) == pair_set(np.stack([i, j]), shifts)
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
    assert len(i) > 0 and np.linalg.norm(vectors, axis=1).max() < 4.0


@pytest.mark.parametrize("periodic", [PERIODIC, (False, False, True)])
def test_a_flat_cell_is_refused_as_singular(periodic):
    atoms = Atoms("C", positions=[[1.0, 1.0, 1.0]], cell=FLAT_CELL, pbc=periodic)
    with pytest.raises(StructureError, match=r"singular \(volume 0\)"):
        compute_pairs(atoms, 4.0)


@pytest.mark.parametrize("images, refused", [(999_999, False), (1_000_001, True)])
def test_a_lattice_needing_more_than_a_million_images_is_refused(images, refused):
    """A chain (periodic along x only) of translation h with 5 Å / h = layers - 0.5 needs
    2 * layers + 1 images: 999,999 is searched, 1,000,001 (> MAX_SEARCH_IMAGES = 10^6) refused,
    naming the 1e-5 Å translation (the reduced basis of a 1-D lattice is itself)."""
    layers = (images - 1) // 2
    translation = 5.0 / (layers - 0.5)
    cell = np.array([[translation, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    periodic = (True, False, False)
    assert _image_count(np.diag([translation, 1.0, 1.0]), periodic, 5.0) == images
    if refused:
        with pytest.raises(StructureError, match=r"\(near-\)singular: its lattice has a translation of 1e-05 Å"):
            search_lattice(cell, periodic, 5.0)
    else:
        searched, change = search_lattice(cell, periodic, 5.0)
        np.testing.assert_allclose(searched[0], cell[0], rtol=1e-12)
        np.testing.assert_array_equal(change, np.eye(3, dtype=np.int64))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_thin_chain_along_any_axis_is_refused_naming_its_translation(axis):
    """A chain of translation 1e-5 Å along ``axis`` (periodic there only) needs 2 * 500,000 + 1 =
    1,000,001 images within 5 Å: refused, naming its 1e-5 Å translation whichever row holds it."""
    cell = np.zeros((3, 3))
    cell[axis, axis] = 1e-5
    periodic = tuple(k == axis for k in range(3))
    with pytest.raises(StructureError, match=r"\(near-\)singular: its lattice has a translation of 1e-05 Å"):
        search_lattice(cell, periodic, 5.0)


def test_a_thin_cell_is_reduced_once_for_repeated_searches(monkeypatch):
    """Molecular dynamics searches one cell at every step: the Minkowski reduction of a thin basis
    is done once per (cell, periodicity, cutoff) and remembered, whatever the positions; a new cutoff
    reduces again. The skewed basis of a 3.03 Å cube needs 29 * 29 * 5 = 4205 images within 4 Å and
    31 * 31 * 5 = 4805 within 4.5 Å (heights 3.03 / sqrt(101) = 0.3015 Å), both reduced."""
    reductions = []

    def counted_reduce(*args, **kwargs):
        reductions.append(args[0])
        return minkowski_reduce(*args, **kwargs)

    monkeypatch.setattr(neighbors, "minkowski_reduce", counted_reduce)
    neighbors._search_lattice.cache_clear()  # whatever earlier tests in this process searched
    atoms = Atoms("CO", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.4, 0.8]], cell=SKEWED_CUBE * 1.01, pbc=True)
    for step in range(3):
        moved = atoms.copy()
        moved.rattle(0.05, seed=step)
        assert len(compute_pairs(moved, 4.0).pair_index[0]) > 0
    assert len(reductions) == 1
    compute_pairs(atoms, 4.5)
    assert len(reductions) == 2


def test_a_near_singular_cell_is_refused_naming_the_short_translation():
    """Volume 1 Å^3, yet 2c - a - b = (0, 0, 2e-6 Å) is a lattice translation: refused, naming it."""
    cell = np.array([[1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0], [500.0, 500.0, 1e-6]])
    with pytest.raises(StructureError, match=r"\(near-\)singular.*2e-06 Å from its own periodic image"):
        search_lattice(cell, PERIODIC, 4.0)


# ----------------------------------------------------------------------------------------------
# the pair estimate


def grid_molecule() -> Atoms:
    """40 atoms on a 5 x 4 x 2 grid spanning x 2..12, y 1..7, z 3..4 Å (extents 10, 6 and 1 Å)."""
    x, y, z = np.meshgrid(np.linspace(2, 12, 5), np.linspace(1, 7, 4), [3.0, 4.0], indexing="ij")
    return Atoms("H40", positions=np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1))


def test_estimate_of_a_periodic_box_is_n_squared_sphere_over_volume():
    """100 atoms in a 10 Å cube within 3 Å: 100^2 * (4/3 pi 27) / 1000 = 360 pi = 1130.97."""
    atoms = Atoms("H100", positions=np.random.default_rng(0).uniform(0, 10, (100, 3)), cell=np.eye(3) * 10, pbc=True)
    assert estimate_pairs(atoms, 3.0) == pytest.approx(360 * math.pi, abs=1)


def test_estimate_of_a_molecule_uses_its_extent_but_at_least_two_cutoffs():
    """Within 3 Å the grid's extents (10, 6, 1) count as (10, 6, 6) Å: 40^2 * 36 pi / 360 = 160 pi = 502.65."""
    assert estimate_pairs(grid_molecule(), 3.0) == pytest.approx(160 * math.pi, abs=1)


def test_estimate_of_a_molecule_ignores_the_cell_it_carries():
    """A non-periodic structure's cell is no lattice: a skewed one leaves the estimate at 160 pi."""
    atoms = grid_molecule()
    atoms.cell = [[10.0, 0.0, 0.0], [5.0, 10.0, 0.0], [3.0, 4.0, 10.0]]
    assert estimate_pairs(atoms, 3.0) == pytest.approx(160 * math.pi, abs=1)


@pytest.mark.parametrize("vacuum", [30.0, 50.0])
def test_estimate_of_a_slab_ignores_its_vacuum(vacuum):
    """10 atoms in a 5 x 5 Å slab 2 Å thick, within 3 Å: the thickness counts as 2 rc = 6 Å, whatever
    the vacuum: 10^2 * 36 pi / (25 * 6) = 24 pi = 75.40."""
    rng = np.random.default_rng(1)
    positions = np.column_stack([rng.uniform(0, 5, (10, 2)), np.linspace(10.0, 12.0, 10)])
    atoms = Atoms("H10", positions=positions, cell=[5.0, 5.0, vacuum], pbc=[True, True, False])
    assert estimate_pairs(atoms, 3.0) == pytest.approx(24 * math.pi, abs=1)


# ----------------------------------------------------------------------------------------------
# the memory check

ONE_MB = MemoryBudget(limit_bytes=10**6)  # 6250 pairs of SEARCH_BYTES_PER_PAIR


def piled_cell() -> Atoms:
    """20 atoms in a 2 Å cube, within 5 Å: 7^3 = 343 images, about 400 * (4/3 pi 125) / 8 = 26180 pairs."""
    rng = np.random.default_rng(2)
    return Atoms("H20", positions=rng.uniform(0, 2, (20, 3)), cell=np.eye(3) * 2.0, pbc=True)


def test_a_periodic_search_over_the_budget_is_refused_before_it_starts():
    """26180 estimated pairs do not fit in 1 MB (6250 pairs): refused, naming the search."""
    assert ONE_MB.pairs_that_fit(26_180, SEARCH_BYTES_PER_PAIR) == 6250
    with pytest.raises(InsufficientMemoryError, match=r"neighbor search of 20 atoms \(cutoff 5.0 Å\).*piled up"):
        check_search_fits(piled_cell(), 5.0, ONE_MB)


def test_a_molecular_search_over_the_budget_is_refused_before_it_starts():
    """200 atoms in a 6 Å cube (extents count as 2 rc = 10 Å), within 5 Å: 200^2 * (4/3 pi 125) / 1000
    = 20944 pairs, more than 6250."""
    atoms = Atoms("H200", positions=np.random.default_rng(3).uniform(0, 6, (200, 3)))
    with pytest.raises(InsufficientMemoryError, match="neighbor search of 200 atoms"):
        check_search_fits(atoms, 5.0, ONE_MB)


def test_a_dilute_search_within_the_budget_is_allowed():
    """200 atoms spread over a 100 Å cube: about 200^2 * 524 / 10^6 = 21 pairs, well within 1 MB
    (though 200^2 pairs, the bound asked first, would not be)."""
    atoms = Atoms("H200", positions=np.random.default_rng(4).uniform(0, 100, (200, 3)))
    assert ONE_MB.pairs_that_fit(200**2, SEARCH_BYTES_PER_PAIR) is not None
    check_search_fits(atoms, 5.0, ONE_MB)
    assert compute_pairs(atoms, 5.0, ONE_MB).pair_index.shape[1] < 6250


def test_a_search_of_exactly_the_budget_is_allowed_and_one_pair_less_refused():
    atoms = piled_cell()
    estimate = estimate_pairs(atoms, 5.0)
    assert estimate == pytest.approx(400 * 4 / 3 * math.pi * 125 / 8, abs=1)
    check_search_fits(atoms, 5.0, MemoryBudget(limit_bytes=estimate * SEARCH_BYTES_PER_PAIR))
    with pytest.raises(InsufficientMemoryError):
        check_search_fits(atoms, 5.0, MemoryBudget(limit_bytes=estimate * SEARCH_BYTES_PER_PAIR - 1))


@pytest.mark.parametrize("free_bytes, refused", [(8 * 10**9, False), (3 * 10**8, True)])
def test_a_large_search_is_measured_against_the_free_memory(monkeypatch, free_bytes, refused):
    """175 atoms in a 2 Å cube within 5 Å: about 175^2 * (4/3 pi 125) / 8 = 2.0e6 pairs, 321 MB, above
    the size from which free memory is asked. Allowed with 8 GB free (80%: 6.4 GB usable), refused
    with 0.3 GB free (0.24 GB usable)."""
    monkeypatch.setattr(memory, "free_host_bytes", lambda: free_bytes)
    atoms = Atoms("H175", positions=np.random.default_rng(5).uniform(0, 2, (175, 3)), cell=np.eye(3) * 2.0, pbc=True)
    assert estimate_pairs(atoms, 5.0) == pytest.approx(175**2 * 4 / 3 * math.pi * 125 / 8, abs=1)
    if refused:
        with pytest.raises(InsufficientMemoryError, match="80% of the free memory"):
            check_search_fits(atoms, 5.0)
    else:
        check_search_fits(atoms, 5.0)


def spread_molecule(num_atoms: int) -> Atoms:
    """``num_atoms`` hydrogens spread over a 300 Å cube: few pairs, whatever the count."""
    return Atoms(f"H{num_atoms}", positions=np.random.default_rng(6).uniform(0, 300, (num_atoms, 3)))


def spread_box(num_atoms: int) -> Atoms:
    """``num_atoms`` hydrogens in a periodic 10 Å cube: 3^3 = 27 images within 3 Å."""
    atoms = Atoms(f"H{num_atoms}", positions=np.random.default_rng(7).uniform(0, 10, (num_atoms, 3)), cell=np.eye(3) * 10)
    atoms.pbc = True
    return atoms


@pytest.mark.parametrize(
    "atoms, asks",
    [
        (spread_molecule(1200), False),  # 1200^2 (one image) x 160 B = 230.4 MB < 256 MiB = 268.4 MB
        (spread_molecule(1300), True),  # 1300^2 x 160 B = 270.4 MB
        (spread_box(100), False),  # 100^2 x 27 x 160 B = 43.2 MB
        (spread_box(400), True),  # 400^2 x 27 x 160 B = 691.2 MB (25.6 MB without the images)
    ],
    ids=["molecule-1200", "molecule-1300", "box-100", "box-400"],
)
def test_free_memory_is_asked_only_when_all_pairs_of_all_images_reach_256_mib(monkeypatch, atoms, asks):
    """Before any estimate a search is bounded by N^2 pairs per periodic image (one image for a
    molecule) at SEARCH_BYTES_PER_PAIR each; below CHECKED_FROM_BYTES (256 MiB) the free memory is
    not asked for (the query costs time at every step). Above it the search is measured, and these
    dilute structures fit in the 8 GB reported free."""
    queries = []

    def free_bytes():
        queries.append(1)
        return 8 * 10**9

    monkeypatch.setattr(memory, "free_host_bytes", free_bytes)
    assert (SEARCH_BYTES_PER_PAIR, CHECKED_FROM_BYTES) == (160, 256 * 2**20)
    check_search_fits(atoms, 3.0)
    assert bool(queries) == asks
