"""The joint-graph backends' pair-list path for large structures (the compiled backend takes it on
CUDA for float32 above 2^18 pairs): the same numbers as the neighbor table, whole and in domains.

Checked here on the CPU through :class:`JointGraphBackend` (the traced graphs as they are, not
compiled: Inductor's CPU code generation refuses the pair-list graph), by lowering its threshold.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_small_painn

from mlff_export.bench.workloads import water_box
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, PAIR_LIST
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.joint_graph import PAIR_LIST_FROM_PAIRS, CompiledBackend, JointGraphBackend, pair_list_for_graph


def water_inputs(atoms_count: int = 1000, model=None):
    model = model or make_small_painn()
    atoms = water_box(atoms_count)
    return batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Within float32 rounding of sums over ~1000 atoms (the two paths add in other orders)."""
    torch.testing.assert_close(actual["energy"], expected["energy"], rtol=1e-6, atol=0)
    torch.testing.assert_close(actual["forces"], expected["forces"], rtol=0, atol=1e-5)
    torch.testing.assert_close(actual["virial"], expected["virial"], rtol=0, atol=1e-3)


def test_a_structure_on_the_pair_list_gives_the_tables_numbers_whole_and_in_domains(caplog):
    inputs = water_inputs()
    backend = JointGraphBackend(make_small_painn(), torch.device("cpu"))
    table = backend.evaluate(inputs)
    assert backend._pair_list_call is None, "below the threshold: the table"
    backend.pair_list_from = inputs.num_pairs
    whole = backend.evaluate(inputs)
    assert backend._pair_list_call is not None, "the pair-list graph ran"
    assert_close(whole, table)
    backend.pair_list_domains.max_pairs = int(0.7 * inputs.num_pairs)
    caplog.set_level(logging.INFO, logger="mlff_export")
    split = backend.evaluate(inputs)
    assert int(re.search(r"atoms in (\d+) domains", caplog.text).group(1)) >= 2, "the domain path ran"
    assert backend._weighted_call is None, "never the table's weighted graph"
    assert_close(split, table)


def test_a_batch_on_the_pair_list_gives_each_structure_its_own_numbers():
    """Three water boxes of other sizes in one call: energy per structure, virial per structure."""
    model = make_small_painn()
    structures = [water_box(size, seed=size) for size in (81, 192, 375)]
    inputs = batch_inputs(structures, [compute_pairs(atoms, model.cutoff) for atoms in structures])
    backend = JointGraphBackend(model, torch.device("cpu"))
    table = backend.evaluate(inputs)
    backend.pair_list_from = 1
    pairs = backend.evaluate(inputs)
    assert pairs["energy"].shape == (3,) and backend._pair_list_call is not None
    assert_close(pairs, table)


def test_the_pair_list_starts_at_its_threshold():
    backend = JointGraphBackend(make_small_painn(), torch.device("cpu"))
    assert backend.pair_list_from is None and not backend.runs_on_pair_list(10**9), "the base backend keeps tables"
    backend.pair_list_from = 1000
    assert backend.runs_on_pair_list(1000) and not backend.runs_on_pair_list(999)


def test_the_compiled_backend_keeps_tables_on_the_cpu():
    """Inductor's CPU code generation refuses the pair-list graph."""
    assert PAIR_LIST_FROM_PAIRS == 2**18 + 1
    assert CompiledBackend(make_small_painn(), torch.device("cpu")).pair_list_from is None


def test_the_pair_list_splitter_sizes_domains_by_its_own_memory_estimate():
    backend = JointGraphBackend(make_small_painn(), torch.device("cpu"))
    assert backend.pair_list_domains.memory is backend.domains.memory
    assert backend.pair_list_domains.bytes_per_pair == int(backend.pair_list_memory_fraction * backend.bytes_per_pair / backend.memory_fraction)
    assert CompiledBackend.pair_list_memory_fraction < CompiledBackend.memory_fraction, "no padded slots"


def test_the_weighted_pair_list_graph_weighs_atom_energies_as_the_tables_does():
    """Halo atoms (weight 0) drop out of the energy, forces and virial alike on both layouts."""
    model = make_small_painn()
    inputs = water_inputs(375, model)
    weights = (torch.arange(inputs.num_atoms) % 3 == 0).float()
    pair_graph, _ = trace_joint_graph(model, PAIR_LIST, weighted=True)
    table_graph, _ = trace_joint_graph(model, NEIGHBOR_TABLE, weighted=True)
    on_pairs = pair_graph(*PAIR_LIST.feeds(inputs).values(), weights)
    on_table = table_graph(*NEIGHBOR_TABLE.feeds(inputs).values(), weights)
    unweighted = pair_graph(*PAIR_LIST.feeds(inputs).values(), torch.ones(inputs.num_atoms))
    assert_close(dict(zip(("energy", "forces", "virial"), on_pairs)), dict(zip(("energy", "forces", "virial"), on_table)))
    assert abs(float(on_pairs[0]) - float(unweighted[0])) > 1.0, "the weights did something"


def test_a_weighted_graph_needs_atom_energies():
    from byom_models import make_student

    with pytest.raises(ValueError, match="atomic_energies"):
        trace_joint_graph(make_student(), PAIR_LIST, weighted=True)


def test_the_graph_gets_the_pairs_within_the_cutoff_sorted_by_center_with_their_shifts():
    """A list searched 1 Å beyond the cutoff (a Verlet skin), shuffled: the graph gets the pairs
    within the cutoff, centers then neighbors ascending, each with its own shifts; the same numbers."""
    model = make_small_painn()
    atoms = water_box(375)
    inputs = water_inputs(375, model)
    wide = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff + 1.0)])
    order = torch.randperm(wide.num_pairs, generator=torch.Generator().manual_seed(0))
    shuffled = replace(wide, pair_index=wide.pair_index[:, order], pair_shifts=wide.pair_shifts[order],
                       lattice_shifts=wide.lattice_shifts[order])
    given = pair_list_for_graph(shuffled, model.cutoff)
    assert given.num_pairs == inputs.num_pairs < wide.num_pairs
    keys = given.pair_index[0] * inputs.num_atoms + given.pair_index[1]
    assert bool((keys[1:] > keys[:-1]).all()), "centers, then neighbors, ascending"
    assert torch.equal(keys, (inputs.pair_index[0] * inputs.num_atoms + inputs.pair_index[1]).sort().values)
    vectors = given.positions[given.pair_index[1]] - given.positions[given.pair_index[0]] + given.pair_shifts
    assert float(vectors.norm(dim=1).max()) < model.cutoff, "each shift moved with its pair"
    np.testing.assert_allclose(given.lattice_shifts.float() @ given.cell[0], given.pair_shifts, atol=1e-4)
    backend = JointGraphBackend(model, torch.device("cpu"))
    backend.pair_list_from = 0
    assert_close(backend.evaluate(shuffled), backend.evaluate(inputs))
