"""The neighbor table built from a pair list, slot by slot, on lists small enough to write out,
and the reverse pairing on lists that stress its keys (fast, no model)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from ase import Atoms
from conftest import structure_zoo

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.interface import AtomicInputs, InterfaceError
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.pair_layouts import NeighborTable, _reverse_pairs


def zero_shifts(num_pairs: int) -> torch.Tensor:
    return torch.zeros(num_pairs, 3, dtype=torch.float64)


def reverse_pairs(pair_index: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """:func:`_reverse_pairs` on Cartesian shifts, atoms numbered up to the largest id in the list."""
    return _reverse_pairs(pair_index, shifts, int(pair_index.max()) + 1 if pair_index.numel() else 0)


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


@pytest.mark.parametrize("lattice_shifts", [None, torch.zeros(0, 3, dtype=torch.int64)], ids=["cartesian", "lattice"])
@pytest.mark.parametrize("max_neighbors", [None, 0, 3])
def test_table_without_pairs_is_all_padding(max_neighbors, lattice_shifts):
    """Three isolated atoms (no pair within the cutoff; a search's empty integer shifts or none):
    every slot is padding pointing at its own row and slot, with at least one slot per row (K = 0
    is widened to 1)."""
    table = NeighborTable.from_pair_list(
        torch.zeros(2, 0, dtype=torch.int64), zero_shifts(0), 3, max_neighbors, lattice_shifts=lattice_shifts
    )
    k = max(max_neighbors or 0, 1)
    assert table.max_neighbors == k and table.num_atoms == 3
    assert table.neighbor_index.tolist() == [[row] * k for row in range(3)]
    assert table.reverse_index.reshape(-1).tolist() == list(range(3 * k))
    assert not bool(table.neighbor_mask.any())
    assert reverse_pairs(torch.zeros(2, 0, dtype=torch.int64), zero_shifts(0)).shape == (0,)
    assert _reverse_pairs(torch.zeros(2, 0, dtype=torch.int64), zero_shifts(0), 3, lattice_shifts).shape == (0,)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_periodic_self_pairs_reverse_through_the_opposite_shift(axis):
    """One atom in a cell with a 2.5 Å vector along ``axis``: its pairs with its images at +-2.5 Å
    are each other's reverses; only the shift tells them apart."""
    shifts = torch.zeros(2, 3, dtype=torch.float64)
    shifts[0, axis], shifts[1, axis] = 2.5, -2.5
    pair_index = torch.zeros(2, 2, dtype=torch.int64)
    assert reverse_pairs(pair_index, shifts).tolist() == [1, 0]
    assert NeighborTable.from_pair_list(pair_index, shifts, 1).reverse_index.tolist() == [[1, 0]]


def test_reverse_pairs_of_a_list_in_any_order():
    """Pairs (1, 2), (0, 2), (2, 0), (2, 1): the reverse of each is the one with center and neighbor
    swapped, whatever the order; and so for every structure of the zoo, its pairs shuffled."""
    pair_index = torch.tensor([[1, 0, 2, 2], [2, 2, 0, 1]])
    assert reverse_pairs(pair_index, zero_shifts(4)).tolist() == [3, 2, 1, 0]
    structures = list(structure_zoo().values())
    batch = batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures], dtype=torch.float64)
    shuffled = torch.randperm(batch.num_pairs, generator=torch.Generator().manual_seed(0))
    pair_index, shifts = batch.pair_index[:, shuffled], batch.pair_shifts[shuffled]
    assert_reverses(pair_index, shifts, reverse_pairs(pair_index, shifts))


def test_reverse_pairs_with_keys_too_wide_for_one_int64():
    """Atom ids up to M = 2^32 - 1 and shifts of +-2.5 Å along every axis (the shift values -2.5 and
    2.5: radix 2): the mixed-radix key ((i 2^32 + j) 2 + x) 2^2 + ... spans 2^67 values, so in one
    int64 it would lose the top bits of i and confuse the pairs (2^31, 9) and (0, 9). Each pair
    must still find its own reverse."""
    m, h = 2**32 - 1, 2**31
    pair_index = torch.tensor([[h, 0, 9, 9, m, m], [9, 9, 0, h, m, m]])
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    shifts = 2.5 * signs.unsqueeze(1).expand(6, 3)
    assert reverse_pairs(pair_index, shifts).tolist() == [3, 2, 1, 0, 5, 4]


def test_pair_without_reverse_is_named_with_column_keys():
    """With atom ids up to 2^31 - 1 the keys stay in five columns; the orphan (0 -> M) is named,
    not the complete pair (0 -> 1) whose reverse sorts next to it."""
    m = 2**31 - 1
    pair_index = torch.tensor([[0, 0, 1], [m, 1, 0]])
    with pytest.raises(InterfaceError, match=rf"pair 0 \(0 -> {m}\) has no reverse pair \({m} -> 0"):
        reverse_pairs(pair_index, zero_shifts(3))


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
    assert_reverses(raised, shifts, reverse_pairs(raised, shifts))


@pytest.mark.parametrize("component", [0, 1, 2])
@pytest.mark.parametrize("length", [2.5, 7.5])
def test_shifts_are_matched_on_a_1e_4_angstrom_grid(component, length):
    """Self-pairs of atom 0 with shifts +-``length`` Å along one axis, the two disagreeing by float
    noise (+1e-9 Å on both): on a 1e-4 Å grid both are ``length`` and they are each other's
    reverses. Shifts 2e-4 Å apart (two grid steps) are not, and the list is refused."""
    pair_index = torch.zeros(2, 2, dtype=torch.int64)
    shifts = torch.zeros(2, 3, dtype=torch.float64)
    shifts[0, component], shifts[1, component] = length + 1e-9, -length + 1e-9
    assert reverse_pairs(pair_index, shifts).tolist() == [1, 0]
    shifts[1, component] = -length - 2e-4
    with pytest.raises(InterfaceError, match="has no reverse pair"):
        reverse_pairs(pair_index, shifts)


@pytest.mark.parametrize("offset", [0, 2**31], ids=["one-int64-key", "column-keys"])
def test_of_several_orphans_the_first_in_center_neighbor_order_is_named(offset):
    """Pairs (0 -> 6), (0 -> 1), (0 -> 5), (1 -> 0), (3 -> 2) (ids + ``offset``): three have no reverse.
    The error names the first of them in (center, neighbor) order, pair 2 (0 -> 5), whether the keys
    combine into one int64 (small ids) or stay five columns (ids near 2^31)."""
    pair_index = torch.tensor([[0, 0, 0, 1, 3], [6, 1, 5, 0, 2]]) + offset
    with pytest.raises(InterfaceError, match=rf"pair 2 \({offset} -> {offset + 5}\) has no reverse pair"):
        reverse_pairs(pair_index, zero_shifts(5))


def test_rows_beyond_the_atoms_are_padding_rows():
    """``num_rows`` above the atoms (a shape bucket's): the atoms' rows as without it, each extra row
    all padding (its own atom, its own slots as reverses, mask 0, shift 0); fewer rows than atoms
    are refused."""
    pair_index, shifts, num_atoms = zoo_pairs_shuffled()
    table = NeighborTable.from_pair_list(pair_index, shifts, num_atoms)
    k = table.max_neighbors
    grown = NeighborTable.from_pair_list(pair_index, shifts, num_atoms, num_rows=num_atoms + 3)
    assert grown.num_atoms == num_atoms + 3 and grown.max_neighbors == k
    for name in ("neighbor_index", "neighbor_shifts", "neighbor_mask", "reverse_index"):
        assert torch.equal(getattr(grown, name)[:num_atoms], getattr(table, name)), name
    extra = torch.arange(num_atoms, num_atoms + 3)
    assert torch.equal(grown.neighbor_index[num_atoms:], extra.unsqueeze(1).expand(3, k))
    assert torch.equal(grown.reverse_index[num_atoms:].reshape(-1), torch.arange(num_atoms * k, (num_atoms + 3) * k))
    assert not bool(grown.neighbor_mask[num_atoms:].any()) and not bool(grown.neighbor_shifts[num_atoms:].any())
    with pytest.raises(ValueError, match=rf"num_rows={num_atoms - 1} is fewer than the {num_atoms} atoms"):
        NeighborTable.from_pair_list(pair_index, shifts, num_atoms, num_rows=num_atoms - 1)


@pytest.mark.parametrize("num_pairs", [0, 2])
def test_a_negative_max_neighbors_is_refused(num_pairs):
    """No row fits in fewer than 0 slots: max_neighbors=-1 is refused, also for a list without pairs."""
    pair_index = torch.tensor([[0, 1], [1, 0]])[:, :num_pairs]
    with pytest.raises(InterfaceError, match=r"max_neighbors=-1 \| use a larger max_neighbors"):
        NeighborTable.from_pair_list(pair_index, zero_shifts(num_pairs), 3, max_neighbors=-1)


# ----------------------------------------------------------------------------------------------
# reverse pairs matched on integer lattice shifts (what vesin gives with its pairs)

# A 3 Å cubic lattice written with the basis (a, b, 10a + 10b + c): searched on its reduced basis,
# whose shifts are mapped back, so this cell's lattice shifts reach +-10 and more.
SKEWED_CUBE = [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [30.0, 30.0, 3.0]]


def zoo_batch_with_lattice_shifts() -> AtomicInputs:
    """The zoo and a copy of its triclinic cell written on a skewed basis, within 4 Å, float64."""
    skewed = Atoms("CN", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]], cell=SKEWED_CUBE, pbc=True)
    structures = list(structure_zoo().values()) + [skewed]
    return batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures], dtype=torch.float64)


def test_batches_carry_lattice_shifts_that_give_their_pair_shifts():
    """Every pair's integer shift through its structure's cell is its Cartesian shift (the check
    passes), the skewed cell's shifts included (some components beyond +-1: mapped back from the
    reduced basis); one shift changed by one lattice step is refused, naming the pair."""
    batch = zoo_batch_with_lattice_shifts()
    batch.check()
    assert batch.lattice_shifts.dtype == torch.int64 and int(batch.lattice_shifts.abs().max()) > 1
    last = batch.num_pairs - 1  # a pair of the skewed cell
    broken = batch.lattice_shifts.clone()
    broken[last, 1] += 1
    with pytest.raises(InterfaceError, match=rf"lattice_shifts \| pair {last}: "):
        replace(batch, lattice_shifts=broken).check()
    for offset, refused in ((1e-3, True), (1e-6, False)):  # a pair shift off its lattice point by 1e-3 / 1e-6 Å
        moved = batch.pair_shifts.clone()
        moved[last, 0] += offset
        if refused:
            with pytest.raises(InterfaceError, match=rf"lattice_shifts \| pair {last}: "):
                replace(batch, pair_shifts=moved).check()
        else:
            replace(batch, pair_shifts=moved).check()
    with pytest.raises(InterfaceError, match=r"lattice_shifts \| received torch.int32"):
        replace(batch, lattice_shifts=batch.lattice_shifts.int()).check()


def test_tables_from_lattice_shifts_equal_tables_from_cartesian_shifts():
    """The shuffled zoo (and the skewed cell): the same table, slot by slot, whether reverse pairs are
    matched on the integer shifts or on the Cartesian ones; every reverse is the pair (j, i, -s)."""
    batch = zoo_batch_with_lattice_shifts()
    shuffled = torch.randperm(batch.num_pairs, generator=torch.Generator().manual_seed(2))
    pair_index, shifts, lattice = batch.pair_index[:, shuffled], batch.pair_shifts[shuffled], batch.lattice_shifts[shuffled]
    reverse = _reverse_pairs(pair_index, shifts, batch.num_atoms, lattice)
    assert_reverses(pair_index, shifts, reverse)
    assert torch.equal(lattice[reverse], -lattice)
    from_lattice = NeighborTable.from_pair_list(pair_index, shifts, batch.num_atoms, lattice_shifts=lattice)
    from_cartesian = NeighborTable.from_pair_list(pair_index, shifts, batch.num_atoms)
    for name in ("neighbor_index", "neighbor_shifts", "neighbor_mask", "reverse_index"):
        assert torch.equal(getattr(from_lattice, name), getattr(from_cartesian, name)), name


def test_lattice_shifts_alone_tell_self_images_apart():
    """One atom and its images at +-1 and +-2 lattice steps along x: the Cartesian shifts say
    nothing here (all zero, as if the cell were tiny), the lattice shifts pair +1 with -1 and +2
    with -2; a list missing the -2 image is refused, naming the +2 pair."""
    pair_index = torch.zeros(2, 4, dtype=torch.int64)
    lattice = torch.tensor([[1, 0, 0], [2, 0, 0], [-1, 0, 0], [-2, 0, 0]])
    assert _reverse_pairs(pair_index, zero_shifts(4), 1, lattice).tolist() == [2, 3, 0, 1]
    with pytest.raises(InterfaceError, match=r"pair 1 \(0 -> 0\) has no reverse pair"):
        _reverse_pairs(pair_index[:, :3], zero_shifts(3), 1, lattice[:3])


def test_lattice_keys_too_wide_for_one_int64_stay_columns():
    """Atom ids up to 2^31 - 1 with lattice shifts +-1: the radices multiply past 2^62, the keys stay
    five columns, and each pair still finds its reverse."""
    m = 2**31 - 1
    pair_index = torch.tensor([[m, 0, 0, m], [0, m, m, 0]])
    lattice = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 0, -1], [0, 0, 1]])
    assert _reverse_pairs(pair_index, zero_shifts(4), m + 1, lattice).tolist() == [1, 0, 3, 2]


def test_table_feeds_take_the_lattice_shifts_and_rank_no_float_shifts(monkeypatch):
    """The graphs' table feeds of inputs that carry lattice shifts are built on them: the same
    feeds as without them, and the float shifts are never ranked (``torch.unique``: a sort)."""
    batch = zoo_batch_with_lattice_shifts()
    expected = NEIGHBOR_TABLE.feeds(replace(batch, lattice_shifts=None))

    def ranking_refused(*args, **kwargs):
        raise AssertionError("float shifts were ranked")

    monkeypatch.setattr(torch, "unique", ranking_refused)
    got = NEIGHBOR_TABLE.feeds(batch)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    "lattice",
    [
        [[1, -1, -1], [0, 1, -1], [0, -1, 1], [-1, 1, 1]],
        [[-3, -2, -3], [-3, -3, 3], [3, 3, -3], [3, 2, 3]],
        [[0, -3, -3], [-3, 2, -3], [3, -2, 3], [0, 3, 3]],
    ],
    ids=["reach-1", "reach-3", "reach-3-fractional-radix"],
)
def test_lattice_shift_codes_of_different_shifts_never_collide(lattice):
    """One atom's images at lattice shifts a, b and their opposites, listed a, b, -b, -a, whose
    codes (shift + reach, in 0..2 reach) collide under a radix below 2 reach + 1: a = (1, -1, -1)
    and b = (0, 1, -1) with radix 2 instead of 3; a = (-3, -2, -3) and b = (-3, -3, 3) with radix 6
    instead of 7 (0 6^2 + 1 6 + 0 = 0 6^2 + 0 6 + 6); a = (0, -3, -3) and b = (-3, 2, -3) with a
    radix of 5/3 (3 R^2 = 5 R). A collision pairs a with -b. Each must find its own opposite."""
    lattice = torch.tensor(lattice)
    pair_index = torch.zeros(2, 4, dtype=torch.int64)
    reverse = _reverse_pairs(pair_index, zero_shifts(4), 1, lattice)
    assert reverse.tolist() == [3, 2, 1, 0]
