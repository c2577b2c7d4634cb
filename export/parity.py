"""How close an exported graph must stay to eager PyTorch, per precision and output.

Compared with the eager float32 model: energy per structure (eV), forces and virial per
component (eV/Å, eV), as the largest absolute difference.

* ``fp32``: the issue's bar, 1e-4 for energy and forces (virial: 1e-4 eV too). Forces and virial
  differ by ~1e-7 (only the order of float32 sums differs). A total energy is a float32 of
  thousands of eV (per-species reference energies of ~-1000 eV per heavy atom), whose spacing is
  already 4.9e-4 eV at 4096-8192 eV, so the energy also allows two float32 spacings of its
  magnitude (:data:`ENERGY_RELATIVE_RESOLUTION`): 1e-4 eV absolute is unrepresentable there.
* ``fp16``: the body runs with float16's 11-bit mantissa (relative rounding 4.9e-4 per op); the
  error is set by the network's activations, not by geometry (float32). Tolerances are measured
  errors with a margin; the numbers are in docs/export.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PARITY_TOLERANCES = {
    "fp32": {"energy": 1e-4, "forces": 1e-4, "virial": 1e-4},
    "fp16": {"energy": 5e-3, "forces": 5e-3, "virial": 1e-2},
}

ENERGY_RELATIVE_RESOLUTION = 2.0**-22
"""Two float32 spacings, relative: the energy tolerance is ``absolute + this * |E|`` per structure."""


@dataclass(frozen=True)
class Deviation:
    """|actual - expected| of one output where it comes nearest to (or goes furthest beyond) its
    allowance, and that allowance (for forces and virial: the largest difference)."""

    difference: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.difference <= self.allowed


def compare_with_tolerances(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], precision: str
) -> dict[str, Deviation]:
    """Deviation per output (``energy``, ``forces``, ``virial``) under ``precision``'s tolerances."""
    deviations = {}
    for name, tolerance in PARITY_TOLERANCES[precision].items():
        got, want = actual[name].cpu().double().flatten(), expected[name].cpu().double().flatten()
        if actual[name].shape != expected[name].shape:
            raise ValueError(f"output {name}: shape {tuple(actual[name].shape)} | expected {tuple(expected[name].shape)}")
        difference = (got - want).abs()
        allowed = torch.full_like(want, tolerance)
        if name == "energy":
            allowed = allowed + ENERGY_RELATIVE_RESOLUTION * want.abs()
        worst = int(torch.argmax(difference - allowed))
        deviations[name] = Deviation(difference=float(difference[worst]), allowed=float(allowed[worst]))
    return deviations
