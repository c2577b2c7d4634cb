"""How close an exported graph must stay to eager PyTorch, per precision and output.

Compared with the eager float32 model: energy per structure (eV), forces per component (eV/Å),
virial per component (eV). Each value is allowed ``absolute + per_atom * N_b + relative * S_b``,
with ``N_b`` the atoms of its structure and ``S_b`` the largest |reference| value of that output
in that structure (``|E_b|`` for the energy, the largest force component for forces).

* ``fp32``: the issue's bar, 1e-4 for energy and forces (virial 1e-4 eV too). Forces and virial
  differ by 1e-7 to 8e-5 (only the order of float32 sums differs). A total energy is a float32
  of up to thousands of eV, whose spacing is 4.9e-4 eV at 4096-8192 eV, so the energy also allows
  four float32 spacings of its magnitude (``relative = 2**-21``; summing many atoms in another
  order moves a few spacings): 1e-4 eV absolute is unrepresentable there.
* ``fp16``: the body runs with float16's 11-bit mantissa (relative rounding 4.9e-4 per op), so
  the error follows the network's activations and the size of the outputs: energy errors grow with
  the number of atoms (measured up to 1.5e-3 eV per atom on the trained reference model), force
  and virial errors with their magnitude (up to 0.5 % of the largest force, 0.1 % of the largest
  virial component). The values below are those measurements with a margin of 2 or more; the
  numbers are in docs/export.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT32_ENERGY_RESOLUTION = 2.0**-21  # four float32 spacings, relative


@dataclass(frozen=True)
class Tolerance:
    """``absolute + per_atom * N_b + relative * S_b`` for one output (see the module docstring)."""

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
        "energy": Tolerance(1e-3, per_atom=3e-3, relative=FLOAT32_ENERGY_RESOLUTION),
        "forces": Tolerance(5e-3, relative=1e-2),
        "virial": Tolerance(5e-3, relative=2e-3),
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

    ``structure_index`` [N] (int64) gives each atom's structure, for ``N_b`` and ``S_b``.
    """
    structure_index = structure_index.cpu()
    num_structures = expected["energy"].shape[0]
    atoms = torch.bincount(structure_index, minlength=num_structures).double()
    deviations = {}
    for name, tolerance in PARITY_TOLERANCES[precision].items():
        if actual[name].shape != expected[name].shape:
            raise ValueError(f"output {name}: shape {tuple(actual[name].shape)} | expected {tuple(expected[name].shape)}")
        got, want = actual[name].cpu().double(), expected[name].cpu().double()
        # The structure of each leading row: atoms for forces [N, 3], structures otherwise [B, ...].
        rows = structure_index if name == "forces" else torch.arange(num_structures)
        row_largest = want.abs().reshape(len(rows), -1).amax(1)
        largest = torch.zeros(num_structures, dtype=torch.float64).scatter_reduce(0, rows, row_largest, "amax")
        allowed = tolerance.absolute + tolerance.per_atom * atoms[rows] + tolerance.relative * largest[rows]
        allowed = allowed.reshape((-1,) + (1,) * (want.dim() - 1)).expand_as(want)
        difference = (got - want).abs()
        worst = int(torch.argmax((difference - allowed).flatten()))
        deviations[name] = Deviation(float(difference.flatten()[worst]), float(allowed.flatten()[worst]))
    return deviations
