"""The neighbor table built from a pair list, slot by slot, on lists small enough to write out,
and the reverse pairing on lists that stress its keys (fast, no model)."""

from __future__ import annotations

import pytest
import torch
from conftest import structure_zoo

from mlff_export.interface import InterfaceError
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.pair_layouts import NeighborTable, _reverse_pairs


def zero_shifts(num_pairs: int) -> torch.Tensor:
    return torch.zeros(num_pairs, 3, dtype=torch.float64)


def assert_reverses(pair_index: torch.Tensor, pair_shifts: torch.Tensor, reverse: torch.Tensor) -> None:
    """``reverse[e]`` is the pair (j, i, -s) of pair ``e`` = (i, j, s)."""
    assert torch.equal(pair_index[:, reverse], pair_index.flip(0))
    torch.testing.assert_close(pair_shifts[reverse], -pair_shifts, rtol=0, atol=1e-12)


def test_table_slots_of_a_small_list():
    """Atom 0 bonded to atoms 1 and 2: N = 3 rows of K = 2 slots, row i holding i's neighbors in
    list order, padding pointing at the row's own atom, and each slot the flat slot (j K + k) of
    its reverse: (0 -> 1) is slot 0 and (1 -> 0) slot 2, (0 -> 2) slot 1 and (2 -> 0) slot 4."""
    pair_index = torch.tensor([[0, 0, 1, 2], [1, 2, 0, 0]])
    shifts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=torch.float64)
    table = NeighborTable.from_pair_list(pair_index, shifts, num_atoms=3)
    assert table.num_atoms == 3 and table.max_neighbors == 2
    assert table.neighbor_index.tolist() == [[1, 2], [0, 1], [0, 2]]
    assert table.neighbor_mask.tolist() == [[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    assert table.reverse_index.tolist() == [[2, 4], [0, 3], [1, 5]]
    assert table.centers.tolist() == [0, 0, 1, 1, 2, 2]
    assert table.neighbors.tolist() == [1, 2, 0, 1, 0, 2]
    assert table.shifts.tolist() == [[1, 0, 0], [0, 2, 0], [-1, 0, 0], [0, 0, 0], [0, -2, 0], [0, 0, 0]]
    per_atom = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    assert table.gather_centers(per_atom).tolist() == [10, 10, 20, 20, 30, 30]
    assert table.gather_neighbors(per_atom).tolist() == [20, 30, 10, 0, 10, 0]  # padding masked
    assert table.sum_to_neighbors(torch.arange(6.0, dtype=torch.float64)).tolist() == [2 + 4, 0, 1]
    assert table.sum_to_centers(torch.arange(6.0, dtype=torch.float64)).tolist() == [1, 5, 9]


@pytest.mark.parametrize("max_neighbors", [None, 0, 3])
def test_table_without_pairs_is_all_padding(max_neighbors):
    """Three isolated atoms (no pair within the cutoff): every slot is padding pointing at its own
    row and slot, with at least one slot per row (K = 0 is widened to 1)."""
    table = NeighborTable.from_pair_list(torch.zeros(2, 0, dtype=torch.int64), zero_shifts(0), 3, max_neighbors)
    k = max(max_neighbors or 0, 1)
    assert table.max_neighbors == k and table.num_atoms == 3
    assert table.neighbor_index.tolist() == [[row] * k for row in range(3)]
    assert table.reverse_index.reshape(-1).tolist() == list(range(3 * k))
    assert not bool(table.neighbor_mask.any())
    assert _reverse_pairs(torch.zeros(2, 0, dtype=torch.int64), zero_shifts(0)).shape == (0,)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_periodic_self_pairs_reverse_through_the_opposite_shift(axis):
    """One atom in a cell with a 2.5 Å vector along ``axis``: its pairs with its images at +-2.5 Å
    are each other's reverses; only the shift tells them apart."""
    shifts = torch.zeros(2, 3, dtype=torch.float64)
    shifts[0, axis], shifts[1, axis] = 2.5, -2.5
    pair_index = torch.zeros(2, 2, dtype=torch.int64)
    assert _reverse_pairs(pair_index, shifts).tolist() == [1, 0]
    assert NeighborTable.from_pair_list(pair_index, shifts, 1).reverse_index.tolist() == [[1, 0]]


def test_reverse_pairs_of_a_list_in_any_order():
    """Pairs (1, 2), (0, 2), (2, 0), (2, 1): the reverse of each is the one with center and neighbor
    swapped, whatever the order; and so for every structure of the zoo, its pairs shuffled."""
    pair_index = torch.tensor([[1, 0, 2, 2], [2, 2, 0, 1]])
    assert _reverse_pairs(pair_index, zero_shifts(4)).tolist() == [3, 2, 1, 0]
    structures = list(structure_zoo().values())
    batch = batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures], dtype=torch.float64)
    shuffled = torch.randperm(batch.num_pairs, generator=torch.Generator().manual_seed(0))
    pair_index, shifts = batch.pair_index[:, shuffled], batch.pair_shifts[shuffled]
    assert_reverses(pair_index, shifts, _reverse_pairs(pair_index, shifts))


def test_reverse_pairs_with_keys_too_wide_for_one_int64():
    """Atom ids up to M = 2^32 - 1 and x shifts of +-2.5 Å: the mixed-radix key
    (i 2^32 + j) 2 + rank(x shift) spans 2^65 values, so in one int64 it would lose the top bit of
    i and confuse the pairs (2^31, 9) and (0, 9). Each pair must still find its own reverse."""
    m, h = 2**32 - 1, 2**31
    pair_index = torch.tensor([[h, 0, 9, 9, m, m], [9, 9, 0, h, m, m]])
    shifts = torch.zeros(6, 3, dtype=torch.float64)
    shifts[:, 0] = torch.tensor([2.5, 2.5, -2.5, -2.5, 2.5, -2.5])
    assert _reverse_pairs(pair_index, shifts).tolist() == [3, 2, 1, 0, 5, 4]


def test_pair_without_reverse_is_named_with_column_keys():
    """With atom ids up to 2^31 - 1 the keys stay in five columns; the orphan (0 -> M) is named,
    not the complete pair (0 -> 1) whose reverse sorts next to it."""
    m = 2**31 - 1
    pair_index = torch.tensor([[0, 0, 1], [m, 1, 0]])
    with pytest.raises(InterfaceError, match=rf"pair 0 \(0 -> {m}\) has no reverse pair \({m} -> 0"):
        _reverse_pairs(pair_index, zero_shifts(3))


def zoo_pairs_shuffled() -> tuple[torch.Tensor, torch.Tensor, int]:
    """The zoo's full pair lists within 4 Å (594 pairs over 36 atoms, rows of up to 45), batched and
    shuffled: (pair_index, shifts in Å, number of atoms)."""
    structures = list(structure_zoo().values())
    batch = batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures], dtype=torch.float64)
    shuffled = torch.randperm(batch.num_pairs, generator=torch.Generator().manual_seed(1))
    return batch.pair_index[:, shuffled], batch.pair_shifts[shuffled], batch.num_atoms


def test_table_rows_hold_each_atoms_pairs_in_list_order():
    """Slot (i, k) holds the k-th pair of center i in list order, then padding: checked row by row
    against a plain loop over the shuffled zoo list, whose rows (many pairs sharing a center) an
    order-scrambling sort would permute."""
    pair_index, shifts, num_atoms = zoo_pairs_shuffled()
    table = NeighborTable.from_pair_list(pair_index, shifts, num_atoms)
    rows: list[list[int]] = [[] for _ in range(num_atoms)]
    for e, center in enumerate(pair_index[0].tolist()):
        rows[center].append(e)
    assert table.max_neighbors == max(len(row) for row in rows)
    for atom, row in enumerate(rows):
        k = len(row)
        assert table.neighbor_index[atom, :k].tolist() == pair_index[1, row].tolist(), atom
        assert torch.equal(table.neighbor_shifts[atom, :k], shifts[row]), atom
        assert table.neighbor_mask[atom].tolist() == [1.0] * k + [0.0] * (table.max_neighbors - k), atom


def test_reverse_pairs_of_a_long_list_with_column_keys():
    """The shuffled zoo list with every atom id raised by 2^31: the key radices multiply to more than
    (2^31)^2 = 2^62, so the keys stay five columns, ordered one column at a time (each sort must keep
    the order of the previous one). Every one of the 594 pairs still finds its reverse."""
    pair_index, shifts, _ = zoo_pairs_shuffled()
    raised = pair_index + 2**31
    assert_reverses(raised, shifts, _reverse_pairs(raised, shifts))


@pytest.mark.parametrize("component", [0, 1, 2])
@pytest.mark.parametrize("length", [2.5, 7.5])
def test_shifts_are_matched_on_a_1e_4_angstrom_grid(component, length):
    """Self-pairs of atom 0 with shifts +-``length`` Å along one axis, the two disagreeing by float
    noise (+1e-9 Å on both): on a 1e-4 Å grid both are ``length`` and they are each other's
    reverses. Shifts 2e-4 Å apart (two grid steps) are not, and the list is refused."""
    pair_index = torch.zeros(2, 2, dtype=torch.int64)
    shifts = torch.zeros(2, 3, dtype=torch.float64)
    shifts[0, component], shifts[1, component] = length + 1e-9, -length + 1e-9
    assert _reverse_pairs(pair_index, shifts).tolist() == [1, 0]
    shifts[1, component] = -length - 2e-4
    with pytest.raises(InterfaceError, match="has no reverse pair"):
        _reverse_pairs(pair_index, shifts)


@pytest.mark.parametrize("offset", [0, 2**31], ids=["one-int64-key", "column-keys"])
def test_of_several_orphans_the_first_in_center_neighbor_order_is_named(offset):
    """Pairs (0 -> 6), (0 -> 1), (0 -> 5), (1 -> 0), (3 -> 2) (ids + ``offset``): three have no reverse.
    The error names the first of them in (center, neighbor) order, pair 2 (0 -> 5), whether the keys
    combine into one int64 (small ids) or stay five columns (ids near 2^31)."""
    pair_index = torch.tensor([[0, 0, 0, 1, 3], [6, 1, 5, 0, 2]]) + offset
    with pytest.raises(InterfaceError, match=rf"pair 2 \({offset} -> {offset + 5}\) has no reverse pair"):
        _reverse_pairs(pair_index, zero_shifts(5))


@pytest.mark.parametrize("num_pairs", [0, 2])
def test_a_negative_max_neighbors_is_refused(num_pairs):
    """No row fits in fewer than 0 slots: max_neighbors=-1 is refused, also for a list without pairs."""
    pair_index = torch.tensor([[0, 1], [1, 0]])[:, :num_pairs]
    with pytest.raises(InterfaceError, match=r"max_neighbors=-1 \| use a larger max_neighbors"):
        NeighborTable.from_pair_list(pair_index, zero_shifts(num_pairs), 3, max_neighbors=-1)
