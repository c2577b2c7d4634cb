"""The two input layouts an exported graph can take, declared in one place.

* ``neighbor_table`` (for models with ``atomic_energies(pair_vectors, species, layout)``):
  the padded table of :class:`~mlff_export.pair_layouts.NeighborTable`; the graph is gathers and
  sums only (no scatter), which is what TensorRT runs natively.
* ``pair_list`` (for any module obeying the interface): the interface inputs themselves, forces
  and virial by the strain route; the graph keeps the model's scatters (``index_add``).

Both produce energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV), float32. The
number of structures ``B`` is the first dimension of ``cell`` (zeros for a non-periodic
structure); ``structure_index`` [N] says which structure each atom belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

from mlff_export.forces import energy_forces_virial_by_strain, energy_forces_virial_from_pairs
from mlff_export.interface import INPUT_NAMES, AtomicInputs
from mlff_export.pair_layouts import NeighborTable, PairList

# Smallest size each dynamic axis accepts at run time. Pairs may be 0 (a lone atom).
AXIS_MINIMUM = {"num_atoms": 1, "max_neighbors": 1, "num_pairs": 0, "num_structures": 1}

OUTPUT_AXES = {"energy": ("num_structures",), "forces": ("num_atoms", 3), "virial": ("num_structures", 3, 3)}


@dataclass(frozen=True)
class GraphLayout:
    """Names and axes of an exported graph's inputs (a string axis is dynamic; floats are float32,
    indices int64).

    Attributes:
        name: stored in the artifact's metadata as ``input_layout``.
        input_axes: input name -> axes, in the graph's input order.
        has_scatter: whether the graph keeps scatters with a reduction (``index_add``).
    """

    name: str
    input_axes: dict[str, tuple[str | int, ...]]
    has_scatter: bool

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.input_axes)

    def dynamic_shapes(self) -> tuple[dict[int, Dim], ...]:
        """``torch.onnx.export(dynamic_shapes=...)``: one ``Dim`` per named axis, shared by name."""
        dims = {axis: Dim(axis, min=minimum) for axis, minimum in AXIS_MINIMUM.items()}
        return tuple(
            {position: dims[axis] for position, axis in enumerate(axes) if isinstance(axis, str)}
            for axes in self.input_axes.values()
        )

    def feeds(
        self,
        inputs: AtomicInputs,
        dtype: torch.dtype = torch.float32,
        width: int | None = None,
        rows: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The graph's inputs (floats in ``dtype``, float32 for exported graphs; int64) for
        interface inputs on any device; ``width`` and ``rows``: the neighbor table's (default: its
        longest row, one row per atom; more rows are padding atoms' rows, the table's only)."""
        inputs = inputs.to(dtype=dtype)
        if self.name == PAIR_LIST.name:
            tensors = dict(zip(INPUT_NAMES, inputs.as_tuple()))
        else:
            table = NeighborTable.from_pair_list(
                inputs.pair_index, inputs.pair_shifts, inputs.num_atoms, width, inputs.lattice_shifts, rows
            )
            tensors = {
                "positions": inputs.positions,
                "species": inputs.species,
                "neighbor_index": table.neighbor_index,
                "neighbor_shifts": table.neighbor_shifts,
                "neighbor_mask": table.neighbor_mask,
                "reverse_index": table.reverse_index,
                "structure_index": inputs.structure_index,
                "cell": inputs.cell,
            }
        return {name: tensors[name].contiguous() for name in self.input_names}


NEIGHBOR_TABLE = GraphLayout(
    name="neighbor_table",
    input_axes={
        "positions": ("num_atoms", 3),
        "species": ("num_atoms",),
        "neighbor_index": ("num_atoms", "max_neighbors"),
        "neighbor_shifts": ("num_atoms", "max_neighbors", 3),
        "neighbor_mask": ("num_atoms", "max_neighbors"),
        "reverse_index": ("num_atoms", "max_neighbors"),
        "structure_index": ("num_atoms",),
        "cell": ("num_structures", 3, 3),
    },
    has_scatter=False,
)

PAIR_LIST = GraphLayout(
    name="pair_list",
    input_axes={
        "positions": ("num_atoms", 3),
        "species": ("num_atoms",),
        "pair_index": (2, "num_pairs"),
        "pair_shifts": ("num_pairs", 3),
        "structure_index": ("num_atoms",),
        "cell": ("num_structures", 3, 3),
    },
    has_scatter=True,
)

LAYOUTS = {layout.name: layout for layout in (NEIGHBOR_TABLE, PAIR_LIST)}


def graph_function(model: nn.Module, layout: GraphLayout, weighted: bool = False) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The function to trace: graph inputs (``layout.input_names`` order) -> energy, forces, virial.

    ``weighted`` (runtime, never exported; a model with ``atomic_energies``): one more input
    ``atom_weights`` [N], and the outputs are those of ``sum_i w_i E_i`` by the pair-vector route
    (domain evaluation of large structures; on the pair list, large structures whole too).
    """
    if layout.name == NEIGHBOR_TABLE.name:

        def weighted_neighbor_table_graph(
            positions, species, neighbor_index, neighbor_shifts, neighbor_mask, reverse_index, structure_index, cell,
            atom_weights,
        ):
            table = NeighborTable(neighbor_index, neighbor_shifts, neighbor_mask, reverse_index)
            return energy_forces_virial_from_pairs(
                model, positions, species, table, structure_index, cell.shape[0], atom_weights=atom_weights
            )

        def neighbor_table_graph(
            positions, species, neighbor_index, neighbor_shifts, neighbor_mask, reverse_index, structure_index, cell
        ):
            return weighted_neighbor_table_graph(
                positions, species, neighbor_index, neighbor_shifts, neighbor_mask, reverse_index, structure_index, cell, None
            )

        return weighted_neighbor_table_graph if weighted else neighbor_table_graph

    def weighted_pair_list_graph(positions, species, pair_index, pair_shifts, structure_index, cell, atom_weights):
        pairs = PairList(pair_index, pair_shifts, positions.shape[0])
        return energy_forces_virial_from_pairs(
            model, positions, species, pairs, structure_index, cell.shape[0], atom_weights=atom_weights
        )

    def pair_list_graph(positions, species, pair_index, pair_shifts, structure_index, cell):
        inputs = AtomicInputs(positions, species, pair_index, pair_shifts, structure_index, cell)
        return energy_forces_virial_by_strain(model, inputs)

    return weighted_pair_list_graph if weighted else pair_list_graph


# Atoms per structure of the tracing example. Sizes that are 0 or 1, equal to each other or to a
# fixed axis (2, 3) get specialised or unified by the tracer, and the graph would silently bake
# them in; these give B=4, N=16, K=5 (largest row), E=58, all distinct.
EXAMPLE_STRUCTURE_SIZES = (2, 3, 5, 6)


def example_inputs(species: tuple[int, ...]) -> AtomicInputs:
    """Deterministic interface inputs for tracing and checking a model (non-periodic clusters).

    Each structure is a zig-zag chain (1.2 Å bonds) with a full pair list between all its atoms.
    """
    positions, numbers, pair_index, structure_index = [], [], [], []
    offset = 0
    for structure, size in enumerate(EXAMPLE_STRUCTURE_SIZES):
        for atom in range(size):
            positions.append([1.2 * atom, 0.4 * (atom % 2), 0.1 * structure])
            numbers.append(species[(atom + structure) % len(species)])
            structure_index.append(structure)
        pair_index += [[offset + i, offset + j] for i in range(size) for j in range(size) if i != j]
        offset += size
    num_pairs = len(pair_index)
    return AtomicInputs(
        positions=torch.tensor(positions, dtype=torch.float32),
        species=torch.tensor(numbers, dtype=torch.int64),
        pair_index=torch.tensor(pair_index, dtype=torch.int64).T.contiguous(),
        pair_shifts=torch.zeros((num_pairs, 3), dtype=torch.float32),
        structure_index=torch.tensor(structure_index, dtype=torch.int64),
        cell=torch.zeros((len(EXAMPLE_STRUCTURE_SIZES), 3, 3), dtype=torch.float32),
    )
