"""Eager PyTorch backend: the reference every other backend is compared with."""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.forces import energy_forces_virial
from mlff_export.interface import AtomicInputs


class EagerBackend:
    """Runs an interface model in eager PyTorch on ``device`` in ``dtype``.

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV).
    """

    name = "eager"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.dtype = dtype

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        energy, forces, virial = energy_forces_virial(self.model, inputs.to(self.device, self.dtype))
        return {"energy": energy.detach(), "forces": forces.detach(), "virial": virial.detach()}
