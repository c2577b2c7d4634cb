"""graph-pes's TensorNet behind the mlff-export interface: an adapter that only translates inputs."""

import torch
from graph_pes.atomic_graph import AtomicGraph
from graph_pes.models import TensorNet
from torch import nn


class TensorNetAdapter(nn.Module):
    """Energy [B] in eV of a graph-pes model (here TensorNet), from the six interface inputs.

    graph-pes builds pair vectors as ``R[j] + offsets @ cell - R[i]`` per structure; passing the
    Cartesian shifts as offsets with unit cells gives exactly the interface's pair vectors, for
    molecules and periodic cells alike. The per-atom energies are summed per structure here.
    """

    def __init__(self, model: nn.Module, species):
        super().__init__()
        self.model = model
        self.cutoff = float(model.cutoff)
        self.species = tuple(int(z) for z in species)

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        unit_cells = torch.eye(3, dtype=positions.dtype, device=positions.device).expand(cell.shape[0], 3, 3)
        graph = AtomicGraph(
            Z=species, R=positions, cell=unit_cells, neighbour_list=pair_index, neighbour_cell_offsets=pair_shifts,
            properties={}, cutoff=self.cutoff, other={}, batch=structure_index, ptr=None, pbc=None,
        )
        atom_energies = self.model(graph)["local_energies"].reshape(-1)  # a lone atom comes back as a scalar
        return torch.zeros(cell.shape[0], dtype=positions.dtype, device=positions.device).index_add(0, structure_index, atom_energies)


def make_model(species=(1, 6, 7, 8), cutoff: float = 5.0, channels: int = 32, seed: int = 0) -> TensorNetAdapter:
    """A TensorNet with random weights (a trained graph-pes model is passed to the adapter the same way)."""
    torch.manual_seed(seed)
    return TensorNetAdapter(TensorNet(cutoff=cutoff, channels=channels, layers=2), species).eval()
