"""hippynn's HIP-NN-TS behind the mlff-export interface: an adapter that only translates inputs."""

import hippynn
import torch
from hippynn.layers.targets import HEnergy
from hippynn.networks.hipnn import HipnnVec
from torch import nn


class HipnnAdapter(nn.Module):
    """Energy [B] in eV of a HIP-NN-TS (tensor sensitivities, l=1) network with hippynn's HEnergy
    readout, from the six interface inputs. hippynn takes one-hot species, both pair ends,
    distances and pair vectors (its ``pair_coord``)."""

    def __init__(self, network: HipnnVec, readout: HEnergy, species, cutoff: float):
        super().__init__()
        self.network, self.readout = network, readout
        self.cutoff, self.species = float(cutoff), tuple(int(z) for z in species)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_lookup", lookup, persistent=False)

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        first, second = pair_index[0], pair_index[1]
        pair_coord = positions[second] - positions[first] + pair_shifts
        pair_dist = torch.linalg.vector_norm(pair_coord, dim=1)
        one_hot = nn.functional.one_hot(self.species_lookup[species], len(self.species))
        features = self.network(one_hot, first, second, pair_dist, pair_coord)
        return self.readout(features, structure_index, cell.shape[0])[0].squeeze(1)


def make_model(species=(1, 6, 7, 8), cutoff: float = 5.0, width: int = 32, seed: int = 0) -> HipnnAdapter:
    """A HIP-NN-TS with random weights (a trained one is passed to HipnnAdapter the same way).

    Two hippynn settings for a traceable model: its sensitivity layers warn about short distances
    by reading tensor values into Python (``settings.WARN_LOW_DISTANCES``), and its message
    passing may run as precompiled kernels that no tracer can enter; the plain PyTorch kernels
    ("pytorch") compute the same sums.
    """
    hippynn.settings.WARN_LOW_DISTANCES = False
    hippynn.custom_kernels.set_custom_kernels("pytorch")
    torch.manual_seed(seed)
    network = HipnnVec(
        n_features=width, n_sensitivities=16, dist_soft_min=0.7, dist_soft_max=cutoff - 1.0, dist_hard_max=cutoff,
        n_atom_layers=2, n_interaction_layers=2, possible_species=[0, *species],  # 0: hippynn's blank atom
    )
    readout = HEnergy(feature_sizes=network.feature_sizes, first_is_interacting=False)
    return HipnnAdapter(network, readout, species, cutoff).eval()
