"""Energy, forces and virial from one backward pass: the function every backend computes.

Two routes, same results:

* **pair-vector route**, for models with ``atomic_energies(pair_vectors, species, layout)`` (such
  as :class:`mlff_export.model.PaiNN`): ``g_e = dE/dr_e`` gives forces
  ``F_i = sum_{e: center i} g_e - sum_{e: neighbor i} g_e`` and virial ``W = -sum_e r_e (x) g_e``.
  With a :class:`~mlff_export.pair_layouts.NeighborTable` every step is a gather or a sum, which
  is what the exporter traces.
* **strain route**, for any module obeying the interface (``forward(*inputs) -> energy [B]``):
  gradients of the energy with respect to positions and a homogeneous strain of each structure.

The virial is ``W = -dE/d(strain)`` in eV; ASE's stress is ``-W / volume`` in eV/Å³.
"""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.interface import AtomicInputs
from mlff_export.pair_layouts import NeighborTable, PairList


def has_pair_energy(model: nn.Module) -> bool:
    """Whether ``model`` exposes ``atomic_energies(pair_vectors, species, layout)``."""
    return callable(getattr(model, "atomic_energies", None))


def pair_vectors(positions: torch.Tensor, layout: PairList | NeighborTable) -> torch.Tensor:
    """``r_e = positions[neighbor] - positions[center] + shift`` for every pair slot, [E, 3] in Å."""
    return layout.gather_neighbors(positions) - layout.gather_centers(positions) + layout.shifts


def energy_forces_virial_from_pairs(
    model: nn.Module,
    positions: torch.Tensor,
    species: torch.Tensor,
    layout: PairList | NeighborTable,
    structure_index: torch.Tensor,
    num_structures: int,
    create_graph: bool = False,
    atom_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV) by the pair-vector route.

    ``atom_weights`` [N] (default 1): all three outputs are those of ``sum_i w_i E_i`` (domain
    decomposition weights halo atoms 0, :mod:`mlff_export.runtime.domains`).
    """
    vectors = pair_vectors(positions, layout).detach().requires_grad_(True)
    with torch.enable_grad():
        atom_energies = model.atomic_energies(vectors, species, layout)
        if atom_weights is not None:
            atom_energies = atom_energies * atom_weights
        (pair_gradients,) = torch.autograd.grad(atom_energies.sum(), vectors, create_graph=create_graph)
    energy = layout.sum_to_structures(atom_energies, structure_index, num_structures)
    forces = layout.sum_to_centers(pair_gradients) - layout.sum_to_neighbors(pair_gradients)
    atom_virials = -layout.sum_to_centers(vectors.detach().unsqueeze(2) * pair_gradients.unsqueeze(1))  # no graph unless asked
    virial = layout.sum_to_structures(atom_virials, structure_index, num_structures)
    return energy, forces, virial


def energy_forces_virial_by_strain(
    model: nn.Module, inputs: AtomicInputs, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [B], forces [N, 3] and virial [B, 3, 3] of any interface module, by autograd."""
    num_structures = inputs.num_structures
    positions = inputs.positions.detach().requires_grad_(True)
    strain = torch.zeros((num_structures, 3, 3), dtype=positions.dtype, device=positions.device, requires_grad=True)
    with torch.enable_grad():
        atom_strain = strain[inputs.structure_index]
        strained_positions = positions + torch.einsum("na,nab->nb", positions, atom_strain)
        pair_strain = atom_strain[inputs.pair_index[0]]
        strained_shifts = inputs.pair_shifts + torch.einsum("ea,eab->eb", inputs.pair_shifts, pair_strain)
        strained_cell = inputs.cell + torch.bmm(inputs.cell, strain)
        energy = model(
            strained_positions, inputs.species, inputs.pair_index, strained_shifts, inputs.structure_index, strained_cell
        )
        if not energy.requires_grad:  # depends on no coordinate (a lone atom, no pairs): no force, no virial
            return energy, torch.zeros_like(positions), torch.zeros_like(strain)
        position_gradients, strain_gradients = torch.autograd.grad(
            energy.sum(), [positions, strain], create_graph=create_graph, allow_unused=True, materialize_grads=True
        )
    return energy, -position_gradients, -strain_gradients


def energy_forces_virial(
    model: nn.Module, inputs: AtomicInputs, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [B] (eV), forces [N, 3] (eV/Å), virial [B, 3, 3] (eV) for a pair list input.

    Checks ``inputs`` against the interface first (:class:`~mlff_export.interface.InterfaceError`
    naming the tensor), then takes the pair-vector route where the model offers it, else the
    strain route.
    """
    inputs.check()
    if has_pair_energy(model):
        layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
        return energy_forces_virial_from_pairs(
            model, inputs.positions, inputs.species, layout, inputs.structure_index, inputs.num_structures, create_graph
        )
    return energy_forces_virial_by_strain(model, inputs, create_graph)
