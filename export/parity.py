"""How close an exported graph must stay to eager PyTorch, per precision and output.

Compared with the eager float32 model: energy per structure (eV), forces per component (eV/Å),
virial per component (eV). Each output is allowed ``absolute + per_atom * N_b + relative * |ref|``
(``N_b`` the atoms of the structure; ``relative`` applies to energy only, elementwise).

* ``fp32``: the issue's bar, 1e-4 for energy and forces (virial 1e-4 eV too). Forces and virial
  differ by ~1e-7 (only the order of float32 sums differs). A total energy is a float32 of
  thousands of eV (per-species reference energies of ~-1000 eV per heavy atom), whose spacing is
  already 4.9e-4 eV at 4096-8192 eV, so the energy also allows four float32 spacings of its
  magnitude (``relative = 2**-21``; summing many atoms in another order moves a few spacings,
  2 were measured on a 64-atom cell on the CUDA EP): 1e-4 eV absolute is unrepresentable there.
* ``fp16``: the body runs with float16's 11-bit mantissa (relative rounding 4.9e-4 per op); its
  error is set by the network's activations, not by geometry (float32). Energy and virial are
  sums over atoms, so their error grows with N (measured ~1e-4 eV per atom); forces do not. The
  values below are measured errors with a margin; the numbers are in docs/export.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT32_ENERGY_RESOLUTION = 2.0**-21  # four float32 spacings, relative


@dataclass(frozen=True)
class Tolerance:
    """``absolute + per_atom * N_b + relative * |reference|`` for one output."""

    absolute: float
    per_atom: float = 0.0
    relative: float = 0.0


PARITY_TOLERANCES = {
    "fp32": {
        "energy": Tolerance(1e-4, relative=FLOAT32_ENERGY_RESOLUTION),
        "forces": Tolerance(1e-4),
        "virial": Tolerance(1e-4),
    },
    "fp16": {
        "energy": Tolerance(1e-3, per_atom=1e-3, relative=FLOAT32_ENERGY_RESOLUTION),
        "forces": Tolerance(5e-3),
        "virial": Tolerance(1e-3, per_atom=2e-3),
    },
}


@dataclass(frozen=True)
class Deviation:
    """|actual - expected| of one output where it comes nearest to (or goes furthest beyond) its
    allowance, and that allowance (for forces: the largest difference)."""

    difference: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.difference <= self.allowed


def compare_with_tolerances(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], precision: str, structure_index: torch.Tensor
) -> dict[str, Deviation]:
    """Deviation per output (``energy``, ``forces``, ``virial``) under ``precision``'s tolerances.

    ``structure_index`` [N] (int64) gives each structure's atom count for the per-atom terms.
    """
    num_structures = expected["energy"].shape[0]
    atoms = torch.bincount(structure_index.cpu(), minlength=num_structures).double()
    deviations = {}
    for name, tolerance in PARITY_TOLERANCES[precision].items():
        if actual[name].shape != expected[name].shape:
            raise ValueError(f"output {name}: shape {tuple(actual[name].shape)} | expected {tuple(expected[name].shape)}")
        got, want = actual[name].cpu().double(), expected[name].cpu().double()
        difference = (got - want).abs()
        allowed = tolerance.absolute + tolerance.relative * want.abs()
        if tolerance.per_atom:  # energy [B] and virial [B, 3, 3]: per structure
            allowed = allowed + tolerance.per_atom * atoms.reshape((-1,) + (1,) * (want.dim() - 1))
        worst = int(torch.argmax((difference - allowed).flatten()))
        deviations[name] = Deviation(float(difference.flatten()[worst]), float(allowed.flatten()[worst]))
    return deviations
