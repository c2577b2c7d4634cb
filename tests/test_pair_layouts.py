"""The neighbor table gives exactly what the pair list gives, with scatter-free gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import structure_zoo

from mlff_export.forces import energy_forces_virial, energy_forces_virial_from_pairs
from mlff_export.interface import InterfaceError
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.pair_layouts import NeighborTable, PairList


@pytest.fixture(scope="module")
def batch(small_model):
    structures = list(structure_zoo().values())
    pairs = [compute_pairs(atoms, small_model.cutoff) for atoms in structures]
    return batch_inputs(structures, pairs, dtype=torch.float64)


@pytest.mark.parametrize("extra_slots", [0, 7])
def test_table_layout_equals_pair_list(small_model, batch, extra_slots):
    model = small_model.double()
    expected = energy_forces_virial(model, batch)
    largest_row = int(torch.bincount(batch.pair_index[0]).max())
    table = NeighborTable.from_pair_list(batch.pair_index, batch.pair_shifts, batch.num_atoms, largest_row + extra_slots)
    got = energy_forces_virial_from_pairs(
        model, batch.positions, batch.species, table, batch.structure_index, batch.num_structures
    )
    for name, want, have in zip(("energy", "forces", "virial"), expected, got):
        torch.testing.assert_close(have, want, rtol=0, atol=1e-10, msg=name)


def test_table_operations_are_adjoint_and_differentiable(batch):
    """gradcheck and gradgradcheck of the custom gather/sum pair (float64). Fast mode compares the
    analytical and numerical Jacobians along random directions (uᵀJv) instead of building both
    Jacobians entry by entry (minutes for the whole zoo's table): a wrong backward still fails."""
    table = NeighborTable.from_pair_list(batch.pair_index, batch.pair_shifts, batch.num_atoms)
    atom_values = torch.randn(batch.num_atoms, 2, dtype=torch.float64, requires_grad=True)
    pair_values = torch.randn(table.neighbors.shape[0], 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(table.gather_neighbors, (atom_values,), fast_mode=True)
    assert torch.autograd.gradgradcheck(table.gather_neighbors, (atom_values,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda m: table.sum_to_neighbors(table.mask_pairs(m)), (pair_values,), fast_mode=True)


def test_sums_match_the_pair_list(batch):
    table = NeighborTable.from_pair_list(batch.pair_index, batch.pair_shifts, batch.num_atoms)
    pair_list = PairList(batch.pair_index, batch.pair_shifts, batch.num_atoms)
    per_atom = torch.randn(batch.num_atoms, 3, dtype=torch.float64)
    torch.testing.assert_close(
        table.sum_to_neighbors(table.gather_centers(per_atom) * table.neighbor_mask.reshape(-1, 1)),
        pair_list.sum_to_neighbors(pair_list.gather_centers(per_atom)),
    )
    torch.testing.assert_close(
        table.sum_to_structures(per_atom, batch.structure_index, batch.num_structures),
        pair_list.sum_to_structures(per_atom, batch.structure_index, batch.num_structures),
    )


def test_half_list_is_refused(batch):
    half = batch.pair_index[:, batch.pair_index[0] < batch.pair_index[1]]
    shifts = batch.pair_shifts[batch.pair_index[0] < batch.pair_index[1]]
    with pytest.raises(InterfaceError, match="no reverse pair"):
        NeighborTable.from_pair_list(half, shifts, batch.num_atoms)


def test_too_small_table_is_refused(batch):
    with pytest.raises(InterfaceError, match="use a larger max_neighbors"):
        NeighborTable.from_pair_list(batch.pair_index, batch.pair_shifts, batch.num_atoms, max_neighbors=2)


def test_the_pair_without_reverse_is_named(batch):
    keep = torch.ones(batch.num_pairs, dtype=torch.bool)
    keep[5] = False  # drop one direction of one pair: its reverse is now the orphan
    center, neighbor = (int(v) for v in batch.pair_index[:, 5])
    with pytest.raises(InterfaceError, match=rf"\({neighbor} -> {center}\) has no reverse pair"):
        NeighborTable.from_pair_list(batch.pair_index[:, keep], batch.pair_shifts[keep], batch.num_atoms)
