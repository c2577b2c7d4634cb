"""schnetpack's SchNet behind the mlff-export interface: an adapter that only translates inputs."""

import schnetpack as spk
import schnetpack.properties as keys
from torch import nn


class SchNetAdapter(nn.Module):
    """Energy [B] in eV of schnetpack SchNet + Atomwise, from the six interface inputs."""

    def __init__(self, cutoff: float = 5.0, species=(1, 6, 7, 8), n_atom_basis: int = 64, n_interactions: int = 3):
        super().__init__()
        self.cutoff, self.species = cutoff, tuple(species)
        self.pair_vectors = spk.atomistic.PairwiseDistances()
        self.representation = spk.representation.SchNet(
            n_atom_basis=n_atom_basis,
            n_interactions=n_interactions,
            radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=cutoff),
            cutoff_fn=spk.nn.CosineCutoff(cutoff),
        )
        self.readout = spk.atomistic.Atomwise(n_in=n_atom_basis, output_key="energy")

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        inputs = {
            keys.Z: species, keys.R: positions, keys.offsets: pair_shifts,
            keys.idx_i: pair_index[0], keys.idx_j: pair_index[1], keys.idx_m: structure_index,
        }
        return self.readout(self.representation(self.pair_vectors(inputs)))["energy"]


def make_model(**kwargs) -> SchNetAdapter:
    return SchNetAdapter(**kwargs).eval()
