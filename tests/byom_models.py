"""Users' models written the ordinary way (not on our pair layouts), for the bring-your-own-model tests.

* :class:`DistilledStudent`: what a distilled student looks like in practice: precomputed pairs,
  a radial basis of edge features, several message-passing layers that sum onto both pair ends
  with ``index_add`` and ``scatter_reduce(sum)``, a ``@torch.jit.script`` helper taking
  ``dim_size: int``, an input check skipped under ``torch.compiler.is_compiling()``, a cutoff
  by ``torch.where`` against a ``torch.tensor(0.0)`` made in ``forward`` (on the CPU, whatever the
  device), and a per-structure energy by ``index_add`` over ``structure_index``.
* :class:`SpeciesChannelStudent`: sums pairs onto (atom, element) channels through a computed
  index, which the scatter-free rewrite does not take: exported on the pair list, with the reason.
* Models that break the interface in one way each.

Factories (``make_*``) are what ``--model byom_models:make_student`` calls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SPECIES = (1, 6, 7, 8)


@torch.jit.script
def scatter_sum(values: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``values`` onto ``dim_size`` rows by ``index`` (scripted, as many packages do)."""
    shape = [dim_size] + list(values.shape[1:])
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, index, values)


class DistilledStudent(nn.Module):
    """A small student MLFF over precomputed pairs (energy [B] in eV)."""

    def __init__(self, cutoff: float = 4.5, width: int = 24, num_radial: int = 8, layers: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.cutoff, self.species = cutoff, SPECIES
        self.embedding = nn.Embedding(max(SPECIES) + 1, width)
        self.register_buffer("frequencies", torch.arange(1, num_radial + 1) * math.pi / cutoff)
        self.filters = nn.ModuleList(nn.Linear(num_radial, width) for _ in range(layers))
        self.updates = nn.ModuleList(nn.Sequential(nn.Linear(3 * width, width), nn.SiLU()) for _ in range(layers))
        self.readout = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))
        self.register_buffer("atom_energies", torch.tensor([-13.6, 0.0, 0.0, 0.0, 0.0, 0.0, -1029.0, -1485.0, -2042.0]))

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        if not torch.compiler.is_compiling() and bool((species > 8).any()):  # reads data: skipped when traced
            raise ValueError("this student knows H, C, N, O only")
        centers, neighbors = pair_index[0], pair_index[1]
        vectors = positions[neighbors] - positions[centers] + pair_shifts
        distances = torch.linalg.vector_norm(vectors, dim=1)
        cosine = 0.5 * (torch.cos(distances * (math.pi / self.cutoff)) + 1.0)
        envelope = torch.where(distances < self.cutoff, cosine, torch.tensor(0.0))  # a CPU scalar, made per call
        radial = torch.sin(distances.unsqueeze(1) * self.frequencies) / distances.unsqueeze(1)
        features = self.embedding(species)
        num_atoms = positions.shape[0]
        for filter_layer, update in zip(self.filters, self.updates):
            edge_filter = filter_layer(radial) * envelope.unsqueeze(1)  # after the bias: 0 at and beyond the cutoff
            messages = features[neighbors] * edge_filter
            onto_centers = scatter_sum(messages, centers, num_atoms)
            onto_neighbors = torch.zeros_like(features).scatter_reduce(
                0, neighbors.unsqueeze(1).expand_as(messages), features[centers] * edge_filter, reduce="sum"
            )
            features = features + update(torch.cat([features, onto_centers, onto_neighbors], dim=1))
        atom_energies = self.readout(features).squeeze(1) + self.atom_energies[species]
        return torch.zeros(cell.shape[0], dtype=positions.dtype, device=positions.device).index_add(0, structure_index, atom_energies)


class SpeciesChannelStudent(DistilledStudent):
    """Sums radial terms per (center, neighbor element), as descriptor models (ANI, Behler-Parrinello)
    do, through a flattened index ``center * 4 + element``: index arithmetic the scatter-free
    rewrite does not take, so this model is exported on the pair list, with the reason."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        centers, neighbors = pair_index[0], pair_index[1]
        distances = torch.linalg.vector_norm(positions[neighbors] - positions[centers] + pair_shifts, dim=1)
        envelope = 0.5 * (torch.cos(distances * (math.pi / self.cutoff)) + 1.0) * (distances < self.cutoff)
        radial = torch.sin(distances.unsqueeze(1) * self.frequencies) / distances.unsqueeze(1) * envelope.unsqueeze(1)
        element = torch.bucketize(species, torch.tensor([1, 6, 7], device=species.device))  # H, C, N, O -> 0..3
        channel = centers * 4 + element[neighbors]
        num_atoms = positions.shape[0]
        descriptor = torch.zeros(num_atoms * 4, radial.shape[1], dtype=radial.dtype).index_add(0, channel, radial)
        hidden = self.updates[0](descriptor.reshape(num_atoms, -1)[:, : 3 * self.filters[0].out_features])
        atom_energies = self.readout(hidden).squeeze(1)
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index, atom_energies)


def pair_repulsion(positions, pair_index, pair_shifts, cutoff: float) -> torch.Tensor:
    """Per-atom energies [N] of a smooth pair repulsion, zero beyond ``cutoff``."""
    distances = torch.linalg.vector_norm(positions[pair_index[1]] - positions[pair_index[0]] + pair_shifts, dim=1)
    pair_energies = torch.exp(-distances) * (torch.cos(distances * (math.pi / cutoff)) + 1.0) * (distances < cutoff)
    return torch.zeros(positions.shape[0], dtype=positions.dtype).index_add(0, pair_index[0], pair_energies)


class PairRepulsionOnly(DistilledStudent):
    """A correct model with no weights in its energy: nothing for FP16 to run in float16."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        atom_energies = pair_repulsion(positions, pair_index, pair_shifts, self.cutoff)
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index, atom_energies)


class ReadsStructureCount(DistilledStudent):
    """Reads the number of structures from tensor data (``int(structure_index[-1]) + 1``)."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        num_structures = int(structure_index[-1]) + 1
        atom_energies = pair_repulsion(positions, pair_index, pair_shifts, self.cutoff)
        return torch.zeros(num_structures, dtype=positions.dtype).index_add(0, structure_index, atom_energies)


class FixesAtomCount(DistilledStudent):
    """Turns the atom count into a Python int and builds a tensor of that size."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        num_atoms = int(positions.shape[0])
        atom_energies = torch.ones(num_atoms, dtype=positions.dtype) * pair_repulsion(positions, pair_index, pair_shifts, self.cutoff)
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index, atom_energies)


class LeaksBeyondTheCutoff(DistilledStudent):
    """Multiplies the radial basis by the envelope *before* a biased filter: a pair at or beyond
    the cutoff still sends ``features[j] * bias`` (the energy jumps when a pair crosses the cutoff)."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        centers, neighbors = pair_index[0], pair_index[1]
        distances = torch.linalg.vector_norm(positions[neighbors] - positions[centers] + pair_shifts, dim=1)
        envelope = 0.5 * (torch.cos(distances * (math.pi / self.cutoff)) + 1.0) * (distances < self.cutoff)
        radial = torch.sin(distances.unsqueeze(1) * self.frequencies) / distances.unsqueeze(1) * envelope.unsqueeze(1)
        features = self.embedding(species)
        messages = features[neighbors] * self.filters[0](radial)
        features = features + torch.zeros_like(features).index_add(0, centers, messages)
        atom_energies = self.readout(features).squeeze(1)
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index, atom_energies)


class SearchesNeighbors(DistilledStudent):
    """Ignores the pair list and takes every pair of atoms itself (a neighbor search inside)."""

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        distances = torch.cdist(positions, positions) + torch.eye(positions.shape[0], dtype=positions.dtype)
        same = (structure_index.unsqueeze(0) == structure_index.unsqueeze(1)).to(positions.dtype)
        atom_energies = (same * torch.exp(-distances)).sum(1)
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index, atom_energies)


def make_student(**kwargs) -> DistilledStudent:
    return DistilledStudent(**kwargs).eval()


def make_species_channel_student() -> SpeciesChannelStudent:
    return SpeciesChannelStudent(num_radial=24, width=8).eval()


def make_not_a_module() -> str:
    return "a string"
