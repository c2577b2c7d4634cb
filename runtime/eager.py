"""Eager PyTorch backend: the reference every other backend is compared with."""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.forces import energy_forces_virial, energy_forces_virial_from_pairs, has_pair_energy
from mlff_export.interface import AtomicInputs
from mlff_export.memory import MemoryBudget, model_bytes_per_pair
from mlff_export.pair_layouts import PairList
from mlff_export.runtime.domains import DomainSplitter


class EagerBackend:
    """Runs an interface model in eager PyTorch on ``device`` in ``dtype``.

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV).
    A single structure too large for the device (estimated before the call from ``memory``, the
    free memory by default, and ``bytes_per_pair``; or found by an out-of-memory) is evaluated in
    spatial domains (:mod:`~mlff_export.runtime.domains`; ``max_pairs`` per domain) for models that
    declare ``receptive_hops`` and ``atomic_energies``.
    """

    name = "eager"

    def __init__(
        self, model: nn.Module, device: torch.device, dtype: torch.dtype, max_pairs: int | None = None, memory: MemoryBudget | None = None
    ):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = dtype
        self.bytes_per_pair = model_bytes_per_pair(model, dtype)
        self.domains = DomainSplitter(max_pairs, memory or MemoryBudget(device), self.bytes_per_pair)
        self._hops = getattr(model, "receptive_hops", None) if has_pair_energy(model) else None

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        return self.domains.evaluate(inputs.to(self.device, self.dtype), self._hops, self._whole, self.evaluate_weighted)

    def _whole(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        energy, forces, virial = energy_forces_virial(self.model, inputs)
        return {"energy": energy.detach(), "forces": forces.detach(), "virial": virial.detach()}

    def evaluate_weighted(self, inputs: AtomicInputs, weights: torch.Tensor):
        """Energy [1], forces, virial of ``sum_i w_i E_i`` for one structure (domain evaluation)."""
        layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
        return energy_forces_virial_from_pairs(
            self.model, inputs.positions, inputs.species, layout, inputs.structure_index, 1, atom_weights=weights
        )
