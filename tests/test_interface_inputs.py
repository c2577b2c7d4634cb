"""AtomicInputs: sizes, device and dtype moves, and the interface checks (mutation-tested with
``tools/mutation_testing.py mlff_export/interface.py``)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from mlff_export.interface import INPUT_NAMES, AtomicInputs, InterfaceError, interface_declaration_problem


def two_structures() -> AtomicInputs:
    """A periodic dimer (structure 0, cell 3 Å, its pair and the pair's periodic image) and a lone
    atom (structure 1, no cell): three atoms, four pairs, with their integer shifts."""
    cell = torch.stack([3.0 * torch.eye(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)])
    lattice = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [-1, 0, 0]])
    return AtomicInputs(
        positions=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 10.0, 10.0]], dtype=torch.float64),
        species=torch.tensor([1, 8, 6]),
        pair_index=torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]]),
        pair_shifts=lattice.double() @ cell[0],
        structure_index=torch.tensor([0, 0, 1]),
        cell=cell,
        lattice_shifts=lattice,
    )


def test_sizes_and_the_positional_order_of_a_model_call():
    inputs = two_structures()
    assert (inputs.num_atoms, inputs.num_pairs, inputs.num_structures) == (3, 4, 2)
    assert inputs.as_tuple() == tuple(getattr(inputs, name) for name in INPUT_NAMES)
    assert INPUT_NAMES == ("positions", "species", "pair_index", "pair_shifts", "structure_index", "cell")


def test_to_casts_floating_tensors_only_and_keeps_a_missing_lattice_shift_missing():
    inputs = two_structures()
    moved = inputs.to("cpu", torch.float32)
    for name in ("positions", "pair_shifts", "cell"):
        assert getattr(moved, name).dtype == torch.float32
        assert torch.equal(getattr(moved, name), getattr(inputs, name).float())
    for name in ("species", "pair_index", "structure_index", "lattice_shifts"):
        assert getattr(moved, name).dtype == torch.int64 and torch.equal(getattr(moved, name), getattr(inputs, name))
    assert replace(inputs, lattice_shifts=None).to(dtype=torch.float32).lattice_shifts is None
    assert inputs.to().positions.dtype == torch.float64  # no dtype: unchanged


def test_valid_inputs_pass_at_every_boundary():
    inputs = two_structures()
    inputs.check()  # pair indices up to N - 1, structure indices up to B - 1, repeated structure indices
    replace(inputs, lattice_shifts=None).check()
    no_pairs = replace(inputs, pair_index=torch.zeros((2, 0), dtype=torch.int64), pair_shifts=torch.zeros((0, 3), dtype=torch.float64),
                       lattice_shifts=torch.zeros((0, 3), dtype=torch.int64))
    no_pairs.check()  # a structure without pairs: no index bound to check
    # Atom 0 without pairs (the smallest pair index is 1), and no atoms in structure 0.
    replace(inputs, pair_index=torch.tensor([[1, 2], [2, 1]]), pair_shifts=torch.zeros((2, 3), dtype=torch.float64),
            lattice_shifts=None, structure_index=torch.tensor([1, 1, 1])).check()


@pytest.mark.parametrize("name, shape", [
    ("positions", (3, 2)), ("species", (2,)), ("pair_index", (3, 4)), ("pair_shifts", (4, 2)),
    ("structure_index", (2,)), ("cell", (2, 3, 2)),
])
def test_each_wrong_shape_is_named_with_what_was_expected(name, shape):
    inputs = two_structures()
    tensor = getattr(inputs, name)
    wrong = torch.zeros(shape, dtype=tensor.dtype)
    with pytest.raises(InterfaceError, match=rf"Input tensor: {name} \| received shape {re.escape(str(tuple(shape)))} \| expected"):
        replace(inputs, **{name: wrong}).check()


@pytest.mark.parametrize("name", ["species", "pair_index", "structure_index"])
def test_index_tensors_must_be_int64(name):
    inputs = two_structures()
    with pytest.raises(InterfaceError, match=rf"{name} \| received torch.int32 \| expected int64"):
        replace(inputs, **{name: getattr(inputs, name).int()}).check()


def test_no_atoms_is_refused():
    empty = AtomicInputs(torch.zeros((0, 3)), torch.zeros(0, dtype=torch.int64), torch.zeros((2, 0), dtype=torch.int64),
                         torch.zeros((0, 3)), torch.zeros(0, dtype=torch.int64), torch.zeros((1, 3, 3)))
    with pytest.raises(InterfaceError, match="expected at least 1 atom"):
        empty.check()


@pytest.mark.parametrize("name", ["positions", "pair_shifts", "cell"])
def test_float_tensors_must_be_float_and_finite(name):
    inputs = two_structures()
    tensor = getattr(inputs, name)
    with pytest.raises(InterfaceError, match=rf"{name} \| received torch.int64 \| expected a float dtype"):
        replace(inputs, **{name: tensor.long()}).check()
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = tensor.clone()
        broken.view(-1)[-1] = bad
        with pytest.raises(InterfaceError, match=rf"{name} \| contains NaN or inf"):
            replace(inputs, **{name: broken, "lattice_shifts": None}).check()


@pytest.mark.parametrize("value", [-1, 3])
def test_pair_indices_outside_the_atoms_are_refused(value):
    inputs = two_structures()
    for row in (0, 1):
        broken = inputs.pair_index.clone()
        broken[row, 1] = value
        with pytest.raises(InterfaceError, match=r"pair_index \| indices outside 0\.\.2"):
            replace(inputs, pair_index=broken, lattice_shifts=None).check()


@pytest.mark.parametrize("first, last", [(-1, 1), (0, 2), (0, 3)])
def test_structure_indices_outside_the_cells_are_refused(first, last):
    inputs = two_structures()
    with pytest.raises(InterfaceError, match=r"structure_index \| values outside 0\.\.1 \(cell has B=2\)"):
        replace(inputs, structure_index=torch.tensor([first, 0, last]), lattice_shifts=None).check()


def test_atoms_must_be_grouped_by_structure():
    inputs = two_structures()
    with pytest.raises(InterfaceError, match="must be non-decreasing"):
        replace(inputs, structure_index=torch.tensor([0, 1, 0]), lattice_shifts=None).check()


def test_lattice_shifts_must_be_int64_of_one_row_per_pair():
    inputs = two_structures()
    longer = torch.cat([inputs.lattice_shifts, inputs.lattice_shifts[:1]])
    wider = torch.cat([inputs.lattice_shifts, inputs.lattice_shifts[:, :1]], dim=1)
    for wrong in (inputs.lattice_shifts.int(), inputs.lattice_shifts[:3], inputs.lattice_shifts[:, :2], longer, wider):
        with pytest.raises(InterfaceError, match=r"lattice_shifts \| received .* \| expected int64 \(4, 3\) or None"):
            replace(inputs, lattice_shifts=wrong).check()


def check_with_shift_moved(inputs: AtomicInputs, pair: int, offset: float, refused_as: str | None) -> None:
    """``inputs`` with pair ``pair``'s x shift moved by ``offset`` Å pass ``check`` (``refused_as``
    None) or are refused with a message matching ``refused_as``."""
    moved = inputs.pair_shifts.clone()
    moved[pair, 0] += offset
    if refused_as is None:
        replace(inputs, pair_shifts=moved).check()
        return
    with pytest.raises(InterfaceError, match=refused_as):
        replace(inputs, pair_shifts=moved).check()


def test_lattice_shifts_must_give_the_pair_shifts_to_a_tenth_of_a_milliangstrom():
    """Tolerance 1e-4 Å plus 1e-6 of the shift: 0.9e-4 Å off passes, 1.1e-4 Å is refused and the
    refusal names the first wrong pair, both shifts and the fix."""
    inputs = two_structures()
    refusal = r"lattice_shifts \| pair 3: \[-1, 0, 0\] @ cell = .*leave lattice_shifts out"
    for offset, refused_as in ((0.9e-4, None), (1.1e-4, refusal), (-1.1e-4, refusal)):
        check_with_shift_moved(inputs, 3, offset, refused_as)
    check_with_shift_moved(inputs, 0, 1e-4, None)  # a pair inside one image, off by exactly the tolerance
    # A shift of 1000 cells (3000 Å) may be off by 1e-4 + 3e-3 Å, float32 rounding of such a shift.
    far = replace(inputs, lattice_shifts=inputs.lattice_shifts * 1000, pair_shifts=inputs.pair_shifts * 1000)
    for offset, refused_as in ((3.0e-3, None), (3.2e-3, r"pair 2: ")):
        check_with_shift_moved(far, 2, offset, refused_as)


def test_the_lattice_shifts_use_the_cell_of_their_own_structure():
    """Structure 1 gets a cell of its own and two pairs through it: each pair's shift is checked
    against its center's structure's cell, not structure 0's."""
    inputs = two_structures()
    cell = inputs.cell.clone()
    cell[1] = 5.0 * torch.eye(3, dtype=torch.float64)
    lattice = torch.cat([inputs.lattice_shifts, torch.tensor([[0, 1, 0], [0, -1, 0]])])
    pair_index = torch.cat([inputs.pair_index, torch.tensor([[2, 2], [2, 2]])], dim=1)
    shifts = torch.cat([inputs.pair_shifts, torch.tensor([[0.0, 5.0, 0.0], [0.0, -5.0, 0.0]], dtype=torch.float64)])
    replace(inputs, cell=cell, lattice_shifts=lattice, pair_index=pair_index, pair_shifts=shifts).check()
    first_cell = shifts.clone()
    first_cell[4:] *= 0.6  # what structure 0's cell (3 Å) would give
    with pytest.raises(InterfaceError, match=r"pair 4: \[0, 1, 0\] @ cell = \[0.0, 5.0, 0.0\]"):
        replace(inputs, cell=cell, lattice_shifts=lattice, pair_index=pair_index, pair_shifts=first_cell).check()


class Declared:
    def __init__(self, cutoff, species):
        self.cutoff, self.species = cutoff, species


@pytest.mark.parametrize("cutoff", [None, True, 0, 0.0, -1.0, "5.0", float("nan")])
def test_a_cutoff_that_is_not_a_positive_number_is_named(cutoff):
    assert interface_declaration_problem(Declared(cutoff, (1, 8))) == (
        f"attribute `cutoff` | received {cutoff!r} | expected a cutoff > 0 in Å (see docs/interface.md)")


@pytest.mark.parametrize("species", [None, (), (0,), (119,), (1, 8.0), (1, True, 300)])
def test_species_that_are_not_atomic_numbers_are_named(species):
    problem = interface_declaration_problem(Declared(5.0, species))
    assert problem == f"attribute `species` | received {species!r} | expected atomic numbers (see docs/interface.md)"


@pytest.mark.parametrize("cutoff, species", [(5, (1,)), (1e-3, (1, 118)), (6.0, [6, 1, 8])])
def test_a_good_declaration_has_no_problem(cutoff, species):
    assert interface_declaration_problem(Declared(cutoff, species)) is None
