"""mace-torch's MACE behind the mlff-export interface: an adapter that only translates inputs."""

import numpy as np
import torch
from mace import modules  # before e3nn: mace allows e3nn 0.4's constants file under torch.load(weights_only=True)
import e3nn  # noqa: E402
from e3nn import o3  # noqa: E402
from torch import nn


class MACEAdapter(nn.Module):
    """Energy [B] in eV of a MACE model, from the six interface inputs.

    MACE takes one-hot species (``node_attrs``), ``edge_index`` (sender, receiver) and Cartesian
    ``shifts``. All atoms are passed as one graph and the per-atom energies MACE returns are summed
    per structure here: MACE's own per-graph sum reads the number of graphs with ``int()``, which
    would fix the number of structures when the model is traced.
    """

    def __init__(self, mace: nn.Module, species):
        super().__init__()
        self.mace = mace
        self.cutoff = float(mace.r_max)
        self.species = tuple(int(z) for z in species)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_lookup", lookup, persistent=False)

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        node_attrs = nn.functional.one_hot(self.species_lookup[species], len(self.species)).to(positions.dtype)
        one_graph = torch.zeros_like(structure_index)
        data = {
            "positions": positions, "node_attrs": node_attrs, "edge_index": pair_index, "shifts": pair_shifts,
            "batch": one_graph, "ptr": torch.tensor([0, 1], device=positions.device), "cell": cell[:1],
        }
        # ScaleShiftMACE adds its per-atom energies in float64; the interface's energies are in the positions' dtype
        atom_energies = self.mace(data, compute_force=False)["node_energy"].to(positions.dtype)
        return torch.zeros(cell.shape[0], dtype=positions.dtype, device=positions.device).index_add(0, structure_index, atom_energies)


def make_model(species=(1, 6, 7, 8), r_max: float = 5.0, channels: int = 32, max_ell: int = 2, seed: int = 0) -> MACEAdapter:
    """A MACE with random weights (any trained MACE works the same way: pass it to MACEAdapter).

    The class is ``ScaleShiftMACE`` (scale 1, shift 0), the one trained MACE models such as MACE-MP
    are: mace-torch's cuEquivariance conversion (``MACECalculator(enable_cueq=True)``) accepts only it.

    e3nn compiles its generated code to TorchScript by default, which no Python tracer can enter;
    ``jit_script_fx=False`` keeps it as Python (set it before building or loading a MACE).
    """
    e3nn.set_optimization_defaults(jit_script_fx=False)
    torch.manual_seed(seed)
    mace = modules.ScaleShiftMACE(
        r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(species), hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([-13.6, -1029.0, -1485.0, -2042.0][: len(species)]),
        avg_num_neighbors=8.0, atomic_numbers=list(species), correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )
    return MACEAdapter(mace.float().eval(), species)
