"""Output-by-output comparison of predictions with a reference: error statistics and pass/fail.

Outputs, in ASE units: ``energy_per_atom`` (eV/atom, one value per structure), ``forces`` (eV/Å,
three components per atom) and ``stress`` (eV/Å³, six Voigt components per 3-D periodic structure;
1 eV/Å³ = 160.2 GPa). A comparison passes when every value satisfies
``|predicted - reference| <= atol + rtol * |reference|`` (numpy's ``allclose`` rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from mlff_export.validation.tolerances import OutputTolerance

COMPARED_OUTPUTS = ("energy_per_atom", "forces", "stress")
OUTPUT_UNITS = {"energy_per_atom": "eV/atom", "forces": "eV/Å", "stress": "eV/Å³"}


@dataclass
class OutputValues:
    """One output of many structures, flattened: ``values[k]`` belongs to structure
    ``structure_names[k]`` and, for forces, atom ``atom_indices[k]`` (else -1)."""

    values: np.ndarray
    structure_names: list[str]
    atom_indices: np.ndarray


def output_values(output: str, names: Sequence[str], structures: Sequence[Atoms], results: Sequence[dict]) -> OutputValues:
    """Collect ``output`` from calculator results (``MLFFCalculator.predict``), one row per value.

    ``energy_per_atom`` is ``energy / len(atoms)``; ``stress`` exists only for 3-D periodic
    structures (others contribute no rows).
    """
    rows, row_names, row_atoms = [], [], []
    for name, atoms, result in zip(names, structures, results):
        if output == "energy_per_atom":
            rows.append(np.array([[result["energy"] / len(atoms)]]))
            row_atoms.append([-1])
        elif output == "forces":
            rows.append(np.asarray(result["forces"]))
            row_atoms.append(np.arange(len(atoms)))
        elif output == "stress" and "stress" in result:
            rows.append(np.asarray(result["stress"]).reshape(1, 6))
            row_atoms.append([-1])
        else:
            continue
        row_names += [name] * len(rows[-1])
    if not rows:
        return OutputValues(np.zeros((0, 1)), [], np.zeros(0, dtype=np.int64))
    return OutputValues(np.concatenate(rows), row_names, np.concatenate(row_atoms).astype(np.int64))


@dataclass
class OutputComparison:
    """Errors of one output of ``predicted`` against ``reference`` over all structures.

    Attributes:
        label: what was compared, e.g. ``"artifact vs reference"``.
        output: one of :data:`COMPARED_OUTPUTS`; ``unit`` its unit.
        count: number of compared values (0: nothing to compare, e.g. stress without cells).
        max_abs_error, mean_abs_error: over all values (components), in ``unit``.
        relative_error: ``||predicted - reference||_2 / ||reference||_2`` over all values.
        worst_structure, worst_atom: where the largest absolute error is (atom -1: per structure).
        atol, rtol: the tolerance applied; ``violations``: values outside it; ``passed``.
    """

    label: str
    output: str
    unit: str
    count: int
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    worst_structure: str | None
    worst_atom: int
    atol: float
    rtol: float
    violations: int
    passed: bool

    @property
    def worst_location(self) -> str:
        """``"<structure> atom <i>"``, ``"<structure>"`` for per-structure outputs, ``"-"`` if empty."""
        if not self.count:
            return "-"
        return self.worst_structure + (f" atom {self.worst_atom}" if self.worst_atom >= 0 else "")


def compare_output(label: str, output: str, predicted: OutputValues, reference: OutputValues, tolerance: OutputTolerance) -> OutputComparison:
    """Compare one output; rows of ``predicted`` and ``reference`` must correspond."""
    if predicted.values.shape != reference.values.shape:
        raise ValueError(f"{label} {output}: predicted shape {predicted.values.shape} != reference {reference.values.shape}")
    errors = np.abs(predicted.values - reference.values)
    if errors.size == 0:
        return OutputComparison(label, output, OUTPUT_UNITS[output], 0, 0.0, 0.0, 0.0, None, -1, tolerance.atol, tolerance.rtol, 0, True)
    allowed = tolerance.atol + tolerance.rtol * np.abs(reference.values)
    # NaN errors fail (a comparison with NaN is False, so count them explicitly)
    violations = int((~(errors <= allowed)).sum())
    row_errors = errors.max(axis=1)  # NaN or inf where a row holds one: the worst there is
    not_finite = ~np.isfinite(row_errors)
    worst_row = int(np.argmax(not_finite)) if not_finite.any() else int(np.argmax(row_errors))
    reference_norm = float(np.linalg.norm(reference.values))
    return OutputComparison(
        label=label,
        output=output,
        unit=OUTPUT_UNITS[output],
        count=int(errors.size),
        max_abs_error=float(np.max(errors)),
        mean_abs_error=float(np.mean(errors)),
        relative_error=float(np.linalg.norm(predicted.values - reference.values) / reference_norm) if reference_norm else 0.0,
        worst_structure=predicted.structure_names[worst_row],
        worst_atom=int(predicted.atom_indices[worst_row]),
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        violations=violations,
        passed=violations == 0,
    )


def compare_predictions(
    label: str,
    names: Sequence[str],
    structures: Sequence[Atoms],
    predicted: Sequence[dict],
    reference: Sequence[dict],
    tolerances: dict[str, OutputTolerance],
) -> list[OutputComparison]:
    """One :class:`OutputComparison` per output in :data:`COMPARED_OUTPUTS`."""
    return [
        compare_output(
            label,
            output,
            output_values(output, names, structures, predicted),
            output_values(output, names, structures, reference),
            tolerances[output],
        )
        for output in COMPARED_OUTPUTS
    ]
