"""Spatial domains of one structure, checked on hand-built inputs (fast, no model).

A weighted pair potential stands in for the model: atom ``i``'s energy depends only on its own
pairs, so one pair hop of halo is exact. Structures are chains of atoms on the x axis whose pairs
are set by hand, so every domain's size (core atoms, halo atoms, pairs) can be counted on paper.
"""

from __future__ import annotations

import math

import pytest
import torch

from mlff_export.interface import AtomicInputs
from mlff_export.memory import InsufficientMemoryError, MemoryBudget
from mlff_export.runtime import domains
from mlff_export.runtime.domains import (
    DomainSplitter,
    _core_ids,
    _grid_coordinates,
    _grid_shape,
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


# ----------------------------------------------------------------------------------------------
# evaluate_in_domains


def test_structure_within_the_budget_is_one_domain():
    """max_pairs at or above the structure's pairs: one domain, every atom core, no halo."""
    inputs = even_chain(10)
    recorder = Recorder()
    assert_same_results(evaluate_in_domains(recorder, inputs, 1, inputs.num_pairs), whole_structure(inputs))
    assert recorder.pairs == [18] and recorder.core_atoms == [10]


def test_domains_double_until_every_domain_fits():
    """64 atoms 1 Å apart along x (126 pairs), a 10-hop halo, at most 64 pairs a domain. The count
    starts at ceil(126 / 64) = 2 and doubles: 2 slabs (32 core atoms + 10 halo: 82 pairs) and 4
    (16 + 2 x 10 atoms: 70 pairs) are too large; 8 slabs of 8 core atoms fit: 8 + 10 atoms (34
    pairs) at the ends, 8 + 8 + 10 (50) next to them, 8 + 20 (54) inside. Results are the whole
    structure's."""
    inputs = even_chain(64)
    recorder = Recorder()
    split = evaluate_in_domains(recorder, inputs, 10, 64)
    assert_same_results(split, whole_structure(inputs))
    assert recorder.core_atoms == [8] * 8
    assert recorder.pairs == [34, 50, 54, 54, 54, 54, 50, 34]


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


def test_domains_of_one_structure_only():
    with pytest.raises(ValueError, match="domains split one structure; got 2"):
        evaluate_in_domains(pair_potential, chain(torch.arange(6.0), num_structures=2), 1, 4)


# ----------------------------------------------------------------------------------------------
# DomainSplitter


def out_of_memory(first_line: str = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 EiB"):
    """A ``whole`` evaluation that fails like torch's CPU allocator."""

    def whole(_inputs):
        raise RuntimeError(first_line + "\nsecond line of the error")

    return whole


def test_out_of_memory_retries_in_domains_of_a_quarter():
    """A call of 40,000 pairs that runs out of memory is retried in domains of 10,000 pairs (a
    quarter, and no less than MIN_DOMAIN_PAIRS), with the whole structure's numbers; the limit is kept."""
    inputs = even_chain(20_001)
    recorder = Recorder()
    splitter = DomainSplitter()
    split = splitter.evaluate(inputs, 1, out_of_memory(), recorder)
    assert splitter.max_pairs == 10_000 == domains.MIN_DOMAIN_PAIRS
    # 4 slabs hold 5,000 core + 2 halo atoms (10,002 pairs): 8 slabs of about 2,500 core atoms
    assert len(recorder.pairs) == 8 and max(recorder.pairs) <= 10_000 and sum(recorder.core_atoms) == 20_001
    assert_same_results(split, whole_structure(inputs))


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
