"""validate's output comparison (mlff_export/validation/comparison.py) on numbers worked out by
hand: what is collected per output, the error statistics, where the worst error is, and the
allclose rule at its boundary."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_export.validation.comparison import OutputValues, compare_output, output_values
from mlff_export.validation.tolerances import OutputTolerance

WATER, METHANE, DIAMOND = molecule("H2O"), molecule("CH4"), bulk("C", "diamond", a=3.57)
STRUCTURES = [WATER, METHANE, DIAMOND]
NAMES = ["water", "methane", "diamond"]
RESULTS = [
    {"energy": -9.0, "forces": np.arange(9.0).reshape(3, 3)},
    {"energy": -10.0, "forces": np.ones((5, 3))},
    {"energy": -16.0, "forces": np.zeros((2, 3)), "stress": np.arange(6.0)},
]


def test_energy_per_atom_is_the_energy_over_the_atom_count():
    values = output_values("energy_per_atom", NAMES, STRUCTURES, RESULTS)
    np.testing.assert_allclose(values.values, [[-3.0], [-2.0], [-8.0]])
    assert values.structure_names == NAMES and values.atom_indices.tolist() == [-1, -1, -1]


def test_forces_are_one_row_per_atom_and_stress_only_for_cells():
    forces = output_values("forces", NAMES, STRUCTURES, RESULTS)
    assert forces.values.shape == (10, 3)
    assert forces.structure_names == ["water"] * 3 + ["methane"] * 5 + ["diamond"] * 2
    assert forces.atom_indices.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    stress = output_values("stress", NAMES, STRUCTURES, RESULTS)
    np.testing.assert_allclose(stress.values, [np.arange(6.0)])
    assert stress.structure_names == ["diamond"] and stress.atom_indices.tolist() == [-1]
    no_stress = output_values("stress", NAMES[:2], STRUCTURES[:2], RESULTS[:2])
    assert no_stress.values.size == 0 and no_stress.structure_names == [] and no_stress.atom_indices.size == 0


def values(rows, names, atoms) -> OutputValues:
    return OutputValues(np.array(rows, dtype=float), names, np.array(atoms))


def test_statistics_and_the_worst_atom():
    reference = values([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], ["a", "b"], [0, 1])
    predicted = values([[1.0, 0.1, 0.0], [0.0, 2.0, -0.4]], ["a", "b"], [0, 1])
    comparison = compare_output("test", "forces", predicted, reference, OutputTolerance(atol=0.1, rtol=0.0))
    assert comparison.count == 6
    assert comparison.max_abs_error == pytest.approx(0.4)
    assert comparison.mean_abs_error == pytest.approx(0.5 / 6)
    assert comparison.relative_error == pytest.approx(np.sqrt(0.01 + 0.16) / np.sqrt(5.0))
    assert comparison.worst_location == "b atom 1"
    assert comparison.violations == 1 and not comparison.passed  # 0.1 is allowed (<=), 0.4 is not


def test_rtol_scales_with_the_reference():
    """An error of 0.5 on a reference of 10: allowed at rtol 0.06 (0.6 + atol), refused at 0.04
    (0.4 + atol); 0.2 on a reference of 20 is allowed at both (1.2, 0.8). The atol, 1e-3, alone
    would refuse both errors, so rtol decides; no value sits near a boundary, where the last bit of
    a product would decide."""
    reference = values([[10.0], [20.0]], ["a", "b"], [-1, -1])
    predicted = values([[10.5], [20.2]], ["a", "b"], [-1, -1])
    assert compare_output("t", "energy_per_atom", predicted, reference, OutputTolerance(atol=1e-3, rtol=0.06)).passed
    failed = compare_output("t", "energy_per_atom", predicted, reference, OutputTolerance(atol=1e-3, rtol=0.04))
    assert failed.violations == 1 and failed.worst_location == "a"


def test_an_empty_comparison_passes_with_zero_statistics():
    empty = values(np.zeros((0, 6)), [], np.zeros(0, dtype=int))
    comparison = compare_output("t", "stress", empty, empty, OutputTolerance(atol=1e-3, rtol=0.0))
    assert (comparison.count, comparison.max_abs_error, comparison.mean_abs_error, comparison.relative_error) == (0, 0.0, 0.0, 0.0)
    assert comparison.violations == 0 and comparison.passed and comparison.worst_location == "-"
    assert (comparison.worst_structure, comparison.worst_atom) == (None, -1)  # as report.json shows them


def test_a_zero_reference_has_zero_relative_error_not_a_division_by_zero():
    zero = values([[0.0, 0.0]], ["a"], [0])
    comparison = compare_output("t", "forces", values([[0.0, 0.5]], ["a"], [0]), zero, OutputTolerance(atol=1.0, rtol=0.0))
    assert comparison.relative_error == 0.0 and comparison.passed


def test_shapes_that_do_not_correspond_are_refused():
    one, two = values([[0.0, 0.0, 0.0]], ["a"], [0]), values(np.zeros((2, 3)), ["a", "a"], [0, 1])
    for predicted, reference in ((one, two), (two, one)):
        with pytest.raises(ValueError, match="predicted shape"):
            compare_output("t", "forces", predicted, reference, OutputTolerance(atol=1.0, rtol=0.0))


def test_the_worst_location_is_a_non_finite_value_when_there_is_one():
    """A NaN or inf among finite errors is where to look, however large the finite ones are."""
    reference = values([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], ["a", "b", "c"], [0, 1, 2])
    predicted = values([[5.0, 0.0], [0.0, np.nan], [0.0, np.inf]], ["a", "b", "c"], [0, 1, 2])
    comparison = compare_output("t", "forces", predicted, reference, OutputTolerance(atol=1.0))
    assert comparison.worst_location == "b atom 1" and comparison.violations == 3
    all_nan = values([[np.nan], [np.nan]], ["a", "b"], [0, 1])
    assert compare_output("t", "forces", all_nan, values([[0.0], [0.0]], ["a", "b"], [0, 1]),
                          OutputTolerance(atol=1.0)).worst_location == "a atom 0"
