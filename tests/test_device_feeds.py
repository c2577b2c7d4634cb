"""Feeds built without the CPU neighbor list (the GPU path of the calculator), checked on the CPU.

Every-atom tables for small molecules must give the neighbor list's numbers, including pairs
beyond the cutoff (they must add exact zeros); vesin-torch tables must too, for small periodic
cells where one atom meets many images of another.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import rattled, structure_zoo

from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator
from mlff_export.runtime.device_feeds import DENSE_MAX_ATOMS, DeviceFeeds, dense_molecule_table, has_vesin_torch
from mlff_export.runtime.joint_graph import JointGraphBackend
from mlff_export.runtime.shape_buckets import strip_padding
from mlff_export.runtime.static_feeds import StaticFeeds

CPU = torch.device("cpu")


@pytest.mark.parametrize(("num_atoms", "bucket_atoms"), [(1, 16), (12, 16), (16, 16), (33, 64)])
def test_dense_table_is_a_consistent_neighbor_table(num_atoms, bucket_atoms):
    table = dense_molecule_table(num_atoms, bucket_atoms, CPU)
    index, mask, reverse = table["neighbor_index"], table["neighbor_mask"], table["reverse_index"]
    width = bucket_atoms - 1
    rows = torch.arange(bucket_atoms).unsqueeze(1).expand(-1, width)
    assert (index != rows).all(), "no atom is its own neighbor"
    assert (torch.sort(index, dim=1).values != torch.sort(index, dim=1).values.roll(1, dims=1)).all(), "no repeats"
    flat_reverse = reverse.reshape(-1)
    assert torch.equal(flat_reverse[flat_reverse], torch.arange(bucket_atoms * width)), "reverse is an involution"
    assert torch.equal(index.reshape(-1)[flat_reverse], rows.reshape(-1)), "the reverse slot points back"
    assert torch.equal(mask.reshape(-1)[flat_reverse], mask.reshape(-1))
    assert int(mask.sum()) == num_atoms * (num_atoms - 1)
    assert int(table["structure_index"].sum()) == bucket_atoms - num_atoms


def _two_distant_molecules() -> Atoms:
    """Water and methane 7 Å apart: most of their every-atom pairs lie beyond the 5 Å cutoff."""
    water, methane = rattled(molecule("H2O")), rattled(molecule("CH4"), seed=4)
    methane.positions += [7.0, 0.0, 0.0]
    return water + methane


@pytest.fixture(scope="module")
def reference_graph():
    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.checkpoint import load_checkpoint

    model = load_checkpoint(REFERENCE_CHECKPOINT)
    return model, JointGraphBackend(model, CPU)


def _run(backend: JointGraphBackend, feeds: dict[str, torch.Tensor], atoms: Atoms) -> dict[str, np.ndarray]:
    outputs = strip_padding(backend.run(feeds), len(atoms), 1)
    return {name: value.detach().double().numpy() for name, value in outputs.items()}


def _expected(atoms: Atoms) -> dict[str, float | np.ndarray]:
    return load_calculator().predict([atoms])[0]


@pytest.mark.parametrize("name", ["H2", "benzene", "distant pair", "C60-sized chain"])
def test_every_atom_table_gives_the_neighbor_list_numbers(reference_graph, name):
    if name == "distant pair":
        atoms = _two_distant_molecules()
    elif name == "C60-sized chain":
        atoms = Atoms("C" * DENSE_MAX_ATOMS, positions=[[1.4 * i, 0.3 * (i % 2), 0.0] for i in range(DENSE_MAX_ATOMS)])
    else:
        atoms = structure_zoo()[name]
    model, backend = reference_graph
    feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms)
    assert feeds["neighbor_index"].shape[1] == feeds["positions"].shape[0] - 1, "every other atom is a neighbor"
    got, want = _run(backend, feeds, atoms), _expected(atoms)
    assert got["energy"][0] == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)  # float32 totals
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)


@pytest.mark.skipif(not has_vesin_torch(), reason="vesin-torch is not installed (pip install vesin-torch)")
@pytest.mark.parametrize("name", ["diamond-primitive", "triclinic", "mixed-pbc-slab"])
def test_vesin_torch_tables_give_the_neighbor_list_numbers(reference_graph, name):
    atoms = structure_zoo()[name]
    model, backend = reference_graph
    feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms)
    expected_inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    assert int(feeds["neighbor_mask"].sum()) == expected_inputs.num_pairs, "vesin-torch finds every image pair"
    got, want = _run(backend, feeds, atoms), _expected(atoms)
    assert got["energy"][0] == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)  # float32 totals
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)
    too_many = DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms, max_pairs=expected_inputs.num_pairs - 1)
    assert too_many is None, "a structure above the pair limit is left to the caller (domains)"


def test_static_feeds_copy_new_tensors_and_skip_the_ones_already_loaded():
    cached, positions = torch.arange(4.0), torch.zeros(3)
    static = StaticFeeds({"cached": cached, "positions": positions})
    static.buffers["cached"].fill_(-1.0)  # a stale buffer shows whether load() copied
    new_positions = torch.ones(3)
    static.load({"cached": cached, "positions": new_positions})
    assert torch.equal(static.buffers["positions"], new_positions)
    assert (static.buffers["cached"] == -1.0).all(), "the same cached tensor is not copied again"
    static.load({"cached": torch.arange(4.0), "positions": new_positions})
    assert torch.equal(static.buffers["cached"], torch.arange(4.0)), "a new tensor object is copied"
