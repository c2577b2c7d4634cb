"""Spatial domains of one structure, checked on hand-built inputs (fast, no model).

A weighted pair potential stands in for the model: atom ``i``'s energy depends only on its own
pairs, so one pair hop of halo is exact. Structures are chains of atoms on the x axis whose pairs
are set by hand, so every domain's size (core atoms, halo atoms, pairs) can be counted on paper.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlff_export.interface import AtomicInputs
from mlff_export.memory import REFERENCE_BYTES_PER_PAIR, InsufficientMemoryError, MemoryBudget
from mlff_export.runtime import domains
from mlff_export.runtime.domains import (
    DomainSplitter,
    _core_ids,
    _divisors,
    _grid_coordinates,
    _grid_shape,
    _largest_domain,
    evaluate_in_domains,
)


def chain(x: list[float] | torch.Tensor, num_structures: int = 1) -> AtomicInputs:
    """Atoms at ``x`` on the x axis (no cell), each paired with the next and the previous one:
    ``2 (N - 1)`` pairs. An atom at ``i`` with a ``h``-hop halo reaches atoms ``i - h .. i + h``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    num_atoms = x.numel()
    positions = torch.zeros(num_atoms, 3, dtype=torch.float64)
    positions[:, 0] = x
    left = torch.arange(num_atoms - 1)
    pair_index = torch.cat([torch.stack([left, left + 1]), torch.stack([left + 1, left])], dim=1)
    structure_index = torch.zeros(num_atoms, dtype=torch.int64)
    structure_index[num_atoms // 2 :] = num_structures - 1  # two structures: the halves of the chain
    return AtomicInputs(
        positions=positions,
        species=torch.ones(num_atoms, dtype=torch.int64),
        pair_index=pair_index,
        pair_shifts=torch.zeros(pair_index.shape[1], 3, dtype=torch.float64),
        structure_index=structure_index,
        cell=torch.zeros(num_structures, 3, 3, dtype=torch.float64),
    )


def even_chain(num_atoms: int) -> AtomicInputs:
    """Atoms at x = 0, 1, 2, ... Å, zigzagged up to 0.3 Å along y so that forces are not zero
    (the zigzag is far narrower than any halo: cores stay slabs across x)."""
    inputs = chain(torch.arange(num_atoms, dtype=torch.float64))
    inputs.positions[:, 1] = 0.3 * torch.sin(1.3 * torch.arange(num_atoms, dtype=torch.float64))
    return inputs


def atoms_with_pairs(x: list[float], pairs: list[tuple[int, int]]) -> AtomicInputs:
    """Atoms at ``x`` on the x axis (no cell) with exactly the undirected ``pairs`` given, each
    listed in both directions (a full list)."""
    inputs = chain(x)
    directed = [(i, j) for i, j in pairs] + [(j, i) for i, j in pairs]
    inputs.pair_index = torch.tensor(directed, dtype=torch.int64).reshape(-1, 2).T.contiguous()
    inputs.pair_shifts = torch.zeros(len(directed), 3, dtype=torch.float64)
    return inputs


def cliques(groups: list[list[float]]) -> AtomicInputs:
    """Atoms at the x of each group, every two atoms of a group paired (a group of k atoms holds
    k (k - 1) directed pairs) and no pairs between groups."""
    x = [value for group in groups for value in group]
    pairs, start = [], 0
    for group in groups:
        pairs += list(itertools.combinations(range(start, start + len(group)), 2))
        start += len(group)
    return atoms_with_pairs(x, pairs)


def pair_potential(inputs: AtomicInputs, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [1], forces [N, 3] and virial [1, 3, 3] of ``sum_i w_i E_i`` with
    ``E_i = 1/2 sum_j (r_ij - 1.2)^2`` over the pairs ``(i, j)``: a :data:`WeightedEvaluate`."""
    positions = inputs.positions.detach().requires_grad_(True)
    centers, neighbors = inputs.pair_index
    vectors = positions[neighbors] - positions[centers] + inputs.pair_shifts
    per_pair = 0.5 * (torch.linalg.vector_norm(vectors, dim=1) - 1.2) ** 2
    energy = (weights[centers] * per_pair).sum().reshape(1)
    position_gradient, vector_gradient = torch.autograd.grad(energy, (positions, vectors))
    virial = -(vectors.unsqueeze(2) * vector_gradient.unsqueeze(1)).sum(0, keepdim=True)
    return energy, -position_gradient, virial


class Recorder:
    """:func:`pair_potential`, remembering each call's pair count and atoms."""

    def __init__(self):
        self.pairs: list[int] = []
        self.atoms: list[int] = []
        self.core_atoms: list[int] = []

    def __call__(self, inputs: AtomicInputs, weights: torch.Tensor):
        self.pairs.append(inputs.num_pairs)
        self.atoms.append(inputs.num_atoms)
        self.core_atoms.append(int(weights.sum()))
        return pair_potential(inputs, weights)


def whole_structure(inputs: AtomicInputs) -> dict[str, torch.Tensor]:
    energy, forces, virial = pair_potential(inputs, torch.ones(inputs.num_atoms, dtype=torch.float64))
    return {"energy": energy, "forces": forces, "virial": virial}


def assert_same_results(split: dict[str, torch.Tensor], whole: dict[str, torch.Tensor]) -> None:
    for name in ("energy", "forces", "virial"):
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=1e-10, msg=name)


# ----------------------------------------------------------------------------------------------
# grid coordinates, widths and core ids


def test_molecule_coordinates_span_its_bounding_box():
    """Without a cell the grid spans the bounding box: (p - low) / (high - low), kept below 1 so
    that the atom at ``high`` lands in the last core, and the box's edge lengths as widths."""
    inputs = chain([0.0, 0.0, 0.0])
    inputs.positions = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 11.0], [2.0, 3.0, 5.0]], dtype=torch.float64)
    coordinates, widths = _grid_coordinates(inputs)
    torch.testing.assert_close(widths, torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(coordinates[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(coordinates[2], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    torch.testing.assert_close(coordinates[1], torch.ones(3, dtype=torch.float64))  # up to the 1e-9 kept below 1
    assert bool((coordinates < 1).all()), "coordinates are in [0, 1)"


def test_flat_molecule_gets_finite_coordinates():
    """A planar molecule has zero height: its width is floored at 1e-6 Å, not divided by zero."""
    inputs = chain([0.0, 1.0, 2.5])
    coordinates, widths = _grid_coordinates(inputs)
    assert bool(torch.isfinite(coordinates).all())
    torch.testing.assert_close(coordinates[:, 0], torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64))
    assert bool((coordinates[:, 1:] == 0).all())
    torch.testing.assert_close(widths, torch.tensor([2.5, 1e-6, 1e-6], dtype=torch.float64))


@pytest.mark.parametrize("scale", [1.0, 0.1], ids=["cell", "cell-with-sub-angstrom-vectors"])
def test_cell_coordinates_are_fractional_and_widths_are_face_distances(scale):
    """In a cell the grid is the fractional one (wrapped into [0, 1)), whatever the length of the
    vectors, and the widths are the distances between opposite faces. For a = (4, 0, 0),
    b = (2, 5, 0), c = (0, 0, 6): a's distance to the plane of b and c is a.n with
    n = (5, -2, 0) / sqrt(29), i.e. 20 / sqrt(29); b's height above the plane of c and a is 5; c's
    above the plane of a and b is 6."""
    cell = scale * torch.tensor([[4.0, 0.0, 0.0], [2.0, 5.0, 0.0], [0.0, 0.0, 6.0]], dtype=torch.float64)
    fractions = torch.tensor([[0.1, 0.2, 0.3], [-0.25, 0.5, 1.25], [0.9, 0.05, 0.6]], dtype=torch.float64)
    inputs = chain([0.0, 0.0, 0.0])
    inputs.positions = fractions @ cell
    inputs.cell = cell.unsqueeze(0)
    coordinates, widths = _grid_coordinates(inputs)
    wrapped = torch.tensor([[0.1, 0.2, 0.3], [0.75, 0.5, 0.25], [0.9, 0.05, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(coordinates, wrapped)
    torch.testing.assert_close(widths, scale * torch.tensor([20 / math.sqrt(29), 5.0, 6.0], dtype=torch.float64))


def test_atom_on_the_far_cell_face_is_in_the_last_core():
    """An atom a rounding error below fractional 0 wraps to exactly 1.0 (``-1e-17 % 1``): its core is
    the last one along that axis, not one past the grid."""
    inputs = chain([-4e-17, 1.0, 3.0])
    inputs.cell = torch.diag(torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64)).unsqueeze(0)
    coordinates, _ = _grid_coordinates(inputs)
    assert coordinates[0, 0].item() == 1.0, "the wrap this test is about"
    assert _core_ids(coordinates, (2, 1, 1)).tolist() == [1, 0, 1]
    assert _core_ids(coordinates, (2, 2, 2)).tolist() == [4, 0, 4]


@pytest.mark.parametrize(
    ("halo", "expected"),
    [(6.0, (8, 1, 1)), (5.5, (8, 1, 1)), (4.0, (4, 2, 1)), (2.5, (4, 2, 1))],
)
def test_eight_domains_of_a_cube_are_slabs_only_for_a_wide_halo(halo, expected):
    """Eight cores in a 40 Å cube with ``t = 2 x halo`` added per axis: slabs hold
    1600 (5 + t) Å^3, 4 x 2 columns 40 (10 + t)(20 + t), cubes (20 + t)^3. Slabs win iff
    40 (5 + t) < (10 + t)(20 + t), i.e. t > 10; columns always beat cubes."""
    assert _grid_shape(8, torch.tensor([40.0, 40.0, 40.0]), halo) == expected


def test_cell_with_a_zero_vector_is_gridded_by_its_bounding_box():
    """A cell with a zero vector (periodic along two directions only) has no fractional grid: its
    atoms are placed in their bounding box, as without a cell, even where the two other vectors
    leave no axis without a component (a, b tilted out of the xy plane), so that no column of the
    cell matrix is zero."""
    inputs = chain([0.0, 0.0, 0.0])
    inputs.positions = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 11.0], [2.0, 3.0, 5.0]], dtype=torch.float64)
    inputs.cell = torch.tensor([[[4.0, 0.0, 1.0], [0.0, 4.0, 1.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    coordinates, widths = _grid_coordinates(inputs)
    torch.testing.assert_close(widths, torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(coordinates[2], torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))


@pytest.mark.parametrize(("number", "divisors"), [(1, [1]), (6, [1, 2, 3, 6]), (7, [1, 7]), (12, [1, 2, 3, 4, 6, 12])])
def test_grids_are_built_from_the_divisors_of_the_domain_count(number, divisors):
    """Every grid's cores multiply to the count asked for."""
    assert _divisors(number) == divisors


def test_core_ids_number_the_grid_cells_x_major():
    """On a 2 x 4 x 8 grid (a different count on each axis) the atom at the centre of cell
    (i, j, k) gets id (i x 4 + j) x 8 + k: every cell its own id in 0 .. 63, x slowest, z fastest."""
    shape = (2, 4, 8)
    cells = list(itertools.product(*(range(count) for count in shape)))
    coordinates = torch.tensor(
        [[(index + 0.5) / count for index, count in zip(cell, shape)] for cell in cells], dtype=torch.float64
    )
    assert _core_ids(coordinates, shape).tolist() == [(i * 4 + j) * 8 + k for i, j, k in cells] == list(range(64))


def test_largest_domain_counts_the_largest_and_stops_at_the_first_too_large():
    """Chain of 6 atoms (pairs between neighbours), cores {0, 1, 2} and {3, 4, 5} with a 1-hop
    halo: atoms 0..3 (3 bonds, 6 pairs) and 2..5 (6 pairs); with cores {0} and {1..5}: atoms 0, 1
    (2 pairs) and 0..5 (10 pairs). Within the limit the largest is found; above it the count stops
    at the first domain past the limit."""
    inputs = chain(torch.arange(6.0))
    assert _largest_domain(inputs, torch.tensor([0, 0, 0, 1, 1, 1]), 1, 100) == 6
    assert _largest_domain(inputs, torch.tensor([0, 1, 1, 1, 1, 1]), 1, 100) == 10
    assert _largest_domain(inputs, torch.tensor([0, 0, 0, 1, 1, 1]), 2, 100) == 8  # atoms 0..4 and 1..5
    # cores {0, 1} (atoms 0..2: 4 pairs, past a limit of 3) and {2..5} (atoms 1..5: 8 pairs)
    assert _largest_domain(inputs, torch.tensor([0, 0, 1, 1, 1, 1]), 1, 3) == 4


def test_a_domain_leaves_out_the_pairs_within_its_outermost_hop():
    """A triangle 0-1-2 and a tail 2-3: core {0} with a 1-hop halo holds atoms 0, 1, 2 and the
    pairs 0-1, 0-2 (4 directed), not 1-2 (both ends one hop out); core {1, 2, 3} (halo {0}) keeps
    all of its 8. The weighted pair potential (one hop of reach) still gives the whole numbers; two
    hops keep 1-2 (one end is then inside)."""
    inputs = atoms_with_pairs([0.0, 1.0, 1.5, 3.0], [(0, 1), (0, 2), (1, 2), (2, 3)])
    core_ids = torch.tensor([0, 1, 1, 1])
    parts = list(domains._domains(inputs, core_ids, 1))
    assert [part.inputs.num_pairs for part in parts] == [4, 8]
    assert _largest_domain(inputs, core_ids, 1, 3) == 4  # counted as built: the first domain, past 3
    split = {"energy": 0.0, "forces": torch.zeros(4, 3, dtype=torch.float64), "virial": 0.0}
    for part in parts:
        energy, forces, virial = pair_potential(part.inputs, part.core_weights)
        split["energy"] = split["energy"] + energy
        split["forces"][part.atom_ids] += forces
        split["virial"] = split["virial"] + virial
    assert_same_results(split, whole_structure(inputs))
    assert [part.inputs.num_pairs for part in domains._domains(inputs, core_ids, 2)] == [8, 8]


def test_largest_domain_of_atoms_without_pairs_is_empty():
    """Isolated atoms (no pairs at all) make domains of 0 pairs."""
    inputs = atoms_with_pairs([0.0, 5.0, 10.0], [])
    assert _largest_domain(inputs, torch.tensor([0, 1, 1]), 2, 10) == 0


# ----------------------------------------------------------------------------------------------
# evaluate_in_domains


def test_structure_within_the_budget_is_one_domain():
    """max_pairs at or above the structure's pairs: one domain, every atom core, no halo."""
    inputs = even_chain(10)
    recorder = Recorder()
    assert_same_results(evaluate_in_domains(recorder, inputs, 1, inputs.num_pairs), whole_structure(inputs))
    assert recorder.pairs == [18] and recorder.core_atoms == [10]


def test_domains_double_until_every_domain_fits_then_the_fewest_that_fit_are_taken():
    """64 atoms 1 Å apart along x (126 pairs), a 10-hop halo, at most 64 pairs a domain. The count
    starts at ceil(126 / 64) = 2 and doubles: 2 slabs (32 core atoms + 10 halo: 82 pairs) and 4
    (16 + 2 x 10 atoms: 70 pairs) are too large; 8 slabs of 8 core atoms fit (384 pairs in all),
    and so do 5, the fewest above 4: cores of 12-13 atoms, 13 + 10 atoms (44 pairs) at the ends,
    10 + 13 + 10 (64) next to them, 10 + 12 + 10 (62) inside: 278 pairs in all. Results are the
    whole structure's."""
    inputs = even_chain(64)
    recorder = Recorder()
    split = evaluate_in_domains(recorder, inputs, 10, 64)
    assert_same_results(split, whole_structure(inputs))
    assert recorder.core_atoms == [13, 13, 12, 13, 13]
    assert recorder.pairs == [44, 64, 62, 64, 44]


def test_a_short_halo_is_not_exact():
    """The comparison above can tell: with no halo (0 hops) the forces on core atoms next to a
    domain border lose their neighbour across it."""
    inputs = even_chain(64)
    split = evaluate_in_domains(pair_potential, inputs, 0, 16)
    assert (split["forces"] - whole_structure(inputs)["forces"]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("max_pairs", "largest"),
    # 8: 2 and then 4 cores both leave the 8-atom cluster in one core (16 pairs): no 1 % gain, give up.
    # 7: 4, 8 cores (16, 14 pairs), then 16 cores (8 pairs), more cores than the 9 atoms: give up.
    [(8, 16), (7, 8)],
    ids=["doubling-stops-helping", "more-cores-than-atoms"],
)
def test_domains_give_up_when_more_cores_do_not_help(max_pairs, largest):
    """Eight atoms 0.02 Å apart and one 1 Å away (16 pairs, 1-hop halo). Cores are cells of
    width 1/D along x: the cluster stays in one core until D = 8."""
    inputs = chain([0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 1.0])
    with pytest.raises(ValueError, match=rf"1-hop halo alone holds about {largest} pairs, more than max_pairs={max_pairs}"):
        evaluate_in_domains(pair_potential, inputs, 1, max_pairs)


def periodic_pair() -> AtomicInputs:
    """Two atoms at x = 0.5 and 9 Å in a 10 Å cube, paired across the cell face: 1.5 Å apart."""
    inputs = atoms_with_pairs([0.5, 9.0], [(0, 1)])
    inputs.cell = torch.diag(torch.tensor([10.0, 10.0, 10.0], dtype=torch.float64)).unsqueeze(0)
    inputs.pair_shifts[0, 0], inputs.pair_shifts[1, 0] = -10.0, 10.0
    return inputs


@pytest.mark.parametrize(
    ("make_inputs", "hops", "halo"),
    [(lambda: chain([0.0, 2.0, 3.5, 5.0]), 3, 6.0), (periodic_pair, 2, 3.0)],
    ids=["molecule", "periodic"],
)
def test_grid_is_chosen_for_a_halo_of_hops_times_the_longest_pair(monkeypatch, make_inputs, hops, halo):
    """The halo the grid is chosen for is ``hops`` pair hops of the longest pair: 3 x 2 Å in a
    chain with gaps of 2, 1.5 and 1.5 Å; 2 x 1.5 Å for a pair across a periodic face (its
    shift counted: not the 8.5 Å between the atoms in the cell)."""
    halos = []

    def recording_grid_shape(num_domains, widths, halo_width):
        halos.append(halo_width)
        return _grid_shape(num_domains, widths, halo_width)

    monkeypatch.setattr(domains, "_grid_shape", recording_grid_shape)
    inputs = make_inputs()
    evaluate_in_domains(pair_potential, inputs, hops, inputs.num_pairs)
    assert halos and all(value == pytest.approx(halo, abs=1e-12) for value in halos)


def test_structure_without_pairs_is_one_domain():
    """Atoms too far apart to pair (0 pairs) are one domain: the domain count starts at the power
    of two at or above 0 / max_pairs, 2^0 = 1."""
    inputs = atoms_with_pairs([0.0, 5.0, 10.0, 15.0], [])
    recorder = Recorder()
    split = evaluate_in_domains(recorder, inputs, 2, 1)
    assert recorder.core_atoms == [4] and recorder.pairs == [0]
    assert_same_results(split, whole_structure(inputs))


def test_a_one_percent_gain_keeps_the_doubling_going():
    """Cliques of 13 atoms in [0, 3] Å (156 pairs) and 7 in [4.5, 7.5] Å (42), a bonded pair at 9
    and 10 Å (2) and a lone atom at 32 Å; max_pairs 160, so 200 pairs start at 2 slabs 16 Å wide
    (1-hop halo). Two slabs: the first holds everything bonded (200 pairs); four 8 Å slabs leave
    both cliques together (198 pairs, exactly 99 %: still a gain); eight 4 Å slabs part them and
    fit (156 pairs)."""
    inputs = cliques([[0.25 * i for i in range(13)], [4.5 + 0.5 * i for i in range(7)], [9.0, 10.0], [32.0]])
    assert inputs.num_pairs == 200
    recorder = Recorder()
    split = evaluate_in_domains(recorder, inputs, 1, 160)
    assert recorder.core_atoms == [13, 7, 2, 1] and recorder.pairs == [156, 42, 2, 0]
    assert_same_results(split, whole_structure(inputs))


def test_as_many_cores_as_atoms_is_the_last_try():
    """Eight atoms at x = 0, 2.5, 4.5, 6.5, 7.5, 9, 12.5, 16 Å bonded along the chain (14 pairs),
    1-hop halo, max_pairs 5: 4 slabs of 4 Å (start: ceil(14 / 5) = 3, so 4) put atoms 2, 3, 4 in
    one core (atoms 1..5: 8 pairs); 8 slabs of 2 Å still hold atoms 3 and 4 together (atoms 2..5:
    6 pairs, a gain). That is one core per atom: no more doubling, though 16 slabs would part them."""
    inputs = chain([0.0, 2.5, 4.5, 6.5, 7.5, 9.0, 12.5, 16.0])
    with pytest.raises(ValueError, match=r"1-hop halo alone holds about 6 pairs, more than max_pairs=5"):
        evaluate_in_domains(pair_potential, inputs, 1, 5)


def test_domains_of_one_structure_only():
    """A batch of two structures, or an empty call of none, is not one structure: refused."""
    with pytest.raises(ValueError, match="domains split one structure; got 2"):
        evaluate_in_domains(pair_potential, chain(torch.arange(6.0), num_structures=2), 1, 4)
    empty = AtomicInputs(
        positions=torch.zeros(0, 3, dtype=torch.float64),
        species=torch.zeros(0, dtype=torch.int64),
        pair_index=torch.zeros(2, 0, dtype=torch.int64),
        pair_shifts=torch.zeros(0, 3, dtype=torch.float64),
        structure_index=torch.zeros(0, dtype=torch.int64),
        cell=torch.zeros(0, 3, 3, dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="domains split one structure; got 0"):
        evaluate_in_domains(pair_potential, empty, 1, 4)


# ----------------------------------------------------------------------------------------------
# DomainSplitter


def out_of_memory(first_line: str = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 EiB"):
    """A ``whole`` evaluation that fails like torch's CPU allocator."""

    def whole(_inputs):
        raise RuntimeError(first_line + "\nsecond line of the error")

    return whole


@pytest.mark.parametrize(("num_atoms", "limit"), [(20_001, 10_000), (24_001, 12_000)], ids=["at-the-minimum", "above-it"])
def test_out_of_memory_retries_in_domains_of_a_quarter(num_atoms, limit):
    """A call of 40,000 (48,000) pairs that runs out of memory is retried in domains of 10,000
    (12,000) pairs: a quarter, at or above MIN_DOMAIN_PAIRS, with the whole structure's numbers;
    the limit is kept."""
    inputs = even_chain(num_atoms)
    recorder = Recorder()
    splitter = DomainSplitter()
    split = splitter.evaluate(inputs, 1, out_of_memory(), recorder)
    assert splitter.max_pairs == limit >= domains.MIN_DOMAIN_PAIRS
    # 4 slabs hold a quarter of the atoms + 2 halo atoms (limit + 2 pairs): 5 slabs, the fewest that fit
    assert len(recorder.pairs) == 5 and max(recorder.pairs) <= limit and sum(recorder.core_atoms) == num_atoms
    assert_same_results(split, whole_structure(inputs))


@pytest.mark.parametrize("cuda", [True, False], ids=["cuda", "no-cuda"])
def test_out_of_memory_retry_empties_the_cuda_cache_where_there_is_one(monkeypatch, cuda):
    """Before the retry in domains the CUDA caching allocator gives back what it holds, once, where
    CUDA is available (stood in for here: the call itself runs on the CPU), and is left alone where not."""
    splitter = DomainSplitter()
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    splitter.evaluate(even_chain(20_001), 1, out_of_memory(), pair_potential)
    assert emptied == ([True] if cuda else [])


def test_out_of_memory_below_the_smallest_domain_is_refused():
    """39,998 pairs: a quarter (9,999) is below MIN_DOMAIN_PAIRS, so the failure is reported."""
    inputs = even_chain(20_000)
    with pytest.raises(InsufficientMemoryError, match="out of memory on cpu evaluating 20,000 atoms with 39,998 pairs"):
        DomainSplitter().evaluate(inputs, 1, out_of_memory(), pair_potential)


def test_out_of_memory_message_quotes_200_characters_of_the_error():
    """The error's first line, cut at 200 characters, is quoted; a call that cannot be split
    (no declared reach) is refused at once."""
    first_line = "can't allocate memory: " + "".join(str(i % 10) for i in range(300))
    with pytest.raises(InsufficientMemoryError) as refused:
        DomainSplitter().evaluate(even_chain(5), None, out_of_memory(first_line), None)
    assert f"({first_line[:200]}); use a machine with more memory" in str(refused.value)


def test_other_runtime_errors_pass_through():
    def whole(_inputs):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        DomainSplitter().evaluate(even_chain(5), 1, whole, pair_potential)


@pytest.mark.parametrize("num_structures, hops", [(1, None), (2, 1)], ids=["no-declared-reach", "batch"])
def test_unsplittable_calls_above_max_pairs_run_whole(num_structures, hops):
    """A model without a declared reach, or a batch, is never split: above max_pairs it runs whole."""
    inputs = chain(torch.arange(12.0), num_structures=num_structures)
    calls = []
    result = DomainSplitter(max_pairs=4).evaluate(inputs, hops, lambda x: calls.append(x) or whole_structure(x), pair_potential)
    assert len(calls) == 1 and calls[0] is inputs
    assert_same_results(result, whole_structure(inputs))


@pytest.mark.parametrize(("spare_pairs", "fits"), [(0, True), (-10, False)])
def test_unsplittable_call_runs_whole_while_it_fits_in_memory(spare_pairs, fits):
    """A batch of 62 pairs x 1,000 bytes against a memory limit of (62 + spare) x 1,000 bytes
    (a limit at or below the estimate, so that free memory is asked): it runs when all its pairs
    fit and is refused, naming estimate and limit, when 10 do not."""
    inputs = chain(torch.arange(32.0), num_structures=2)
    assert inputs.num_pairs == 62
    budget = MemoryBudget(limit_bytes=int((62 + spare_pairs) * 1_000))
    splitter = DomainSplitter(memory=budget, bytes_per_pair=1_000)
    if fits:
        assert_same_results(splitter.evaluate(inputs, 1, whole_structure, pair_potential), whole_structure(inputs))
    else:
        with pytest.raises(InsufficientMemoryError, match=r"2 structure\(s\), 32 atoms, needs about .*62 pairs x 1,000 bytes"):
            splitter.evaluate(inputs, 1, whole_structure, pair_potential)


def test_single_structure_above_free_memory_runs_in_domains():
    """One structure whose pairs do not fit in the memory limit runs in domains of the pairs that
    fit (126 pairs, room for 63), with the whole structure's numbers and no limit kept."""
    inputs = even_chain(64)
    recorder = Recorder()
    splitter = DomainSplitter(memory=MemoryBudget(limit_bytes=63_500), bytes_per_pair=1_000)
    split = splitter.evaluate(inputs, 1, lambda _inputs: pytest.fail("ran whole"), recorder)
    assert_same_results(split, whole_structure(inputs))
    assert len(recorder.pairs) >= 2 and max(recorder.pairs) <= 63 and splitter.max_pairs is None


@pytest.mark.parametrize("num_structures", [1, 2], ids=["structure", "batch"])
def test_call_well_within_free_memory_runs_whole(monkeypatch, num_structures):
    """62 pairs x 16 MiB (large enough that free memory is asked) on a host with 1 TiB free (80 %
    usable: room for about 52,000 pairs): a structure or a batch runs whole, in one call."""
    from mlff_export import memory

    monkeypatch.setattr(memory, "free_device_bytes", lambda _device: 2**40)
    inputs = chain(torch.arange(32.0), num_structures=num_structures)
    splitter = DomainSplitter(memory=MemoryBudget(), bytes_per_pair=2**24)
    assert splitter._pairs_that_fit(inputs.num_pairs) > 50_000
    calls = []
    result = splitter.evaluate(inputs, 1, lambda x: calls.append(x) or whole_structure(x), pair_potential)
    assert len(calls) == 1
    assert_same_results(result, whole_structure(inputs))


@pytest.mark.parametrize(
    "splitter",
    [lambda: DomainSplitter(max_pairs=1), lambda: DomainSplitter(memory=MemoryBudget(limit_bytes=1), bytes_per_pair=1_000)],
    ids=["max-pairs-1", "no-pair-fits-in-memory"],
)
def test_limit_below_two_pairs_splits_into_domains_of_one_pair(splitter):
    """Two bonded pairs 9 Å apart (4 pairs) under a limit of 1 pair, or of 1 byte (0 pairs: still
    tried at 1): no domain with a bond holds 1 pair (a bond is 2 directed pairs), so the split is
    refused by :func:`evaluate_in_domains`, naming max_pairs=1."""
    inputs = atoms_with_pairs([0.0, 1.0, 10.0, 11.0], [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match=r"holds about 2 pairs, more than max_pairs=1:"):
        splitter().evaluate(inputs, 1, lambda _inputs: pytest.fail("ran whole"), pair_potential)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_joint_graph_domains_follow_its_memory_estimate_with_no_fixed_pair_limit(precision):
    """A joint-graph backend splits a structure only where its memory estimate says it would not
    fit (no pair limit of its own; the GPU input path asks the same estimate), and the estimate of an FP16 body with float16 activations (the
    reference PaiNN) is half the float32 one, while a user's model in FP16, whose activations stay
    float32 (half weight products only), keeps the float32 estimate."""
    from byom_models import make_student

    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.checkpoint import load_checkpoint
    from mlff_export.memory import model_bytes_per_pair
    from mlff_export.runtime.joint_graph import JointGraphBackend

    cpu = torch.device("cpu")
    for model, halves in ((load_checkpoint(REFERENCE_CHECKPOINT), True), (make_student(), False)):
        backend = JointGraphBackend(model, cpu, memory=MemoryBudget(cpu, 10**9), precision=precision)
        float32_bytes = model_bytes_per_pair(model, torch.float32)
        expected = float32_bytes // 2 if precision == "fp16" and halves else float32_bytes
        assert backend.domains.bytes_per_pair == expected, type(model).__name__
        assert backend.domains.max_pairs is None, "memory alone decides"
        fitting = 10**9 // expected
        assert backend.takes_whole(fitting), "the device path runs what fits as one call"
        assert not backend.takes_whole(fitting + 1), "and sends anything larger to domains"


def test_compiled_joint_graph_sizes_its_domains_by_its_own_lower_estimate():
    """Inductor's graph keeps fewer activations than eager (measured on the H200: 0.64 of the
    eager estimate per pair): the compiled backends estimate 3/4 of the uncompiled joint graph's,
    so a structure that one splits runs whole compiled; ``cuda-graphs`` (uncompiled) keeps eager's."""
    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.checkpoint import load_checkpoint
    from mlff_export.runtime.joint_graph import CompiledBackend, JointGraphBackend

    cpu, model = torch.device("cpu"), load_checkpoint(REFERENCE_CHECKPOINT)
    budget = MemoryBudget(cpu, 10**9)
    uncompiled = JointGraphBackend(model, cpu, memory=budget)
    compiled = CompiledBackend(model, cpu, mode="default", memory=budget)
    assert compiled.bytes_per_pair == int(0.75 * uncompiled.bytes_per_pair)
    pairs = 10**9 // uncompiled.bytes_per_pair + 1
    assert not uncompiled.takes_whole(pairs)
    assert compiled.takes_whole(pairs), "the compiled graph's domains follow its own estimate"


def test_each_domain_keeps_the_lattice_shifts_of_its_pairs():
    """A periodic water box split in domains: each domain's pairs keep their integer shifts, still
    the ones behind their Cartesian shifts (``AtomicInputs.check``), so its table is built on them."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.neighbors import batch_inputs, compute_pairs

    atoms = water_box(300)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, 3.0)], dtype=torch.float64)
    kept = []

    def checked(domain: AtomicInputs, weights: torch.Tensor):
        domain.check()
        kept.append(domain.lattice_shifts is not None and bool(domain.lattice_shifts.any()))
        return pair_potential(domain, weights)

    evaluate_in_domains(checked, inputs, hops=1, max_pairs=inputs.num_pairs // 2)
    assert len(kept) > 1 and all(kept)


def test_fp16_buckets_are_captured_while_their_activations_take_a_tenth_of_the_device():
    """A captured CUDA graph keeps its activations for the backend's lifetime. On a 141 GB H200 the
    compiled reference graph's FP16 body captures the bucket of 10,125-atom water (10,240 atoms x 64
    slots), not the 98,304-atom box (98,304 x 72); a device with a tenth of the memory captures a
    tenth of the slots. Float32 graphs capture a fixed 2^18 slots on any device."""
    from mlff_export.runtime.joint_graph import CompiledBackend, captured_slots

    h200 = 141 * 10**9
    fp16 = int(CompiledBackend.memory_fraction * REFERENCE_BYTES_PER_PAIR) // 2
    assert 10_240 * 64 <= captured_slots(fp16, h200, half_body=True) < 98_304 * 72
    assert captured_slots(fp16, h200 // 10, half_body=True) == captured_slots(fp16, h200, half_body=True) // 10
    assert captured_slots(0, h200, half_body=True) == h200 // 10  # a model declaring no per-pair memory
    assert captured_slots(fp16 * 2, h200, half_body=False) == captured_slots(fp16 * 2, h200 // 10, half_body=False) == 1 << 18
