"""Eager PyTorch backend: the reference every other backend is compared with."""

from __future__ import annotations

import logging

import torch
from torch import nn

from mlff_export.forces import energy_forces_virial, energy_forces_virial_from_pairs, has_pair_energy
from mlff_export.interface import AtomicInputs
from mlff_export.pair_layouts import PairList
from mlff_export.runtime.domains import evaluate_in_domains

logger = logging.getLogger("mlff_export")

MIN_DOMAIN_PAIRS = 10_000  # below this, a GPU that still runs out of memory is not the structure's fault


class EagerBackend:
    """Runs an interface model in eager PyTorch on ``device`` in ``dtype``.

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV).
    A single structure too large for the GPU is evaluated in spatial domains of at most
    ``max_pairs`` pairs (:mod:`~mlff_export.runtime.domains`), for models that declare
    ``receptive_hops`` and ``atomic_energies``; after an out-of-memory, ``max_pairs`` is set to a
    quarter of the failed call's pairs (and quartered again if needed) and kept for later calls.
    """

    name = "eager"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, max_pairs: int | None = None):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = dtype
        self.max_pairs = max_pairs

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        inputs = inputs.to(self.device, self.dtype)
        hops = getattr(self.model, "receptive_hops", None)
        splittable = hops is not None and has_pair_energy(self.model) and inputs.num_structures == 1
        while True:
            try:
                if splittable and self.max_pairs is not None and inputs.num_pairs > self.max_pairs:
                    return evaluate_in_domains(self.evaluate_weighted, inputs, hops, self.max_pairs)
                energy, forces, virial = energy_forces_virial(self.model, inputs)
                return {"energy": energy.detach(), "forces": forces.detach(), "virial": virial.detach()}
            except torch.cuda.OutOfMemoryError:
                limit = min(self.max_pairs or inputs.num_pairs, inputs.num_pairs) // 4
                if not splittable or limit < MIN_DOMAIN_PAIRS:
                    raise
                torch.cuda.empty_cache()
                logger.warning("mlff-export: out of GPU memory at %d pairs; evaluating in domains of <= %d pairs",
                               inputs.num_pairs, limit)
                self.max_pairs = limit

    def evaluate_weighted(self, inputs: AtomicInputs, weights: torch.Tensor):
        """Energy [1], forces, virial of ``sum_i w_i E_i`` for one structure (domain evaluation)."""
        layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
        return energy_forces_virial_from_pairs(
            self.model, inputs.positions, inputs.species, layout, inputs.structure_index, 1, atom_weights=weights
        )
