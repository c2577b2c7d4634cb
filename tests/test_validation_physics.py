"""The physics checks of validate on hand-solvable force fields, no exported artifact needed.

* Finite differences on a harmonic well ``E = E0 + k/2 · |x - x0|²`` (forces ``-k (x - x0)``):
  central differences of a quadratic are exact, so every number the check reports (analytic
  derivative, allowed error, noise floor, chosen step) is known in closed form.
* NVE under a constant force ``F`` on atoms of equal mass with zero potential energy: velocity
  Verlet integrates a constant acceleration exactly and the initial momentum is zero, so the total
  energy grows as ``E(t) = E(0) + N |F|² t² / 2m``; both its linear-fit drift over the run and its
  maximum deviation are ``|F|² T² / 2m`` per atom (the least-squares slope of ``k²`` over
  ``k = 0..n`` is exactly ``n``).

Defaults (steps, directions, NVE length) are checked against docs/validation.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from mlff_export.validation.physics import (
    FINITE_DIFFERENCE_STEPS,
    RANDOM_DIRECTIONS,
    check_forces_by_finite_differences,
    compare_nve,
    run_nve,
)

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text()
FLOAT32_ULP_64_TO_128 = 2.0**-17  # float32 spacing of numbers in [64, 128): 2^(6 - 23)
RTOL = 1e-2


class HarmonicWell:
    """``predict`` of ``E = E0 + k/2 |x - x0|²`` in float64, with the reported forces
    ``force_factor · (-k (x - x0))`` (1: the true gradient; anything else: wrong forces)."""

    def __init__(self, minimum: np.ndarray, stiffness: float = 1.0, offset: float = -100.0, force_factor: float = 1.0):
        self.minimum, self.stiffness, self.offset, self.force_factor = minimum, stiffness, offset, force_factor

    def predict(self, structures: list[Atoms]) -> list[dict]:
        results = []
        for atoms in structures:
            displacement = atoms.positions - self.minimum
            energy = self.offset + 0.5 * self.stiffness * float(np.sum(displacement**2))
            results.append({"energy": energy, "forces": -self.force_factor * self.stiffness * displacement})
        return results


def water_like(displacement: float = 0.0) -> tuple[Atoms, np.ndarray]:
    """Three atoms and the harmonic minimum they sit ``displacement`` Å from (per component, fixed pattern)."""
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    pattern = np.array([[1.0, -2.0, 0.5], [0.0, 1.5, -1.0], [-0.5, 0.0, 2.0]])
    return atoms, atoms.positions - displacement * pattern


def test_documented_steps_and_directions():
    """Steps 1e-2, 1e-3, 1e-4 Å in that order and two random directions, as docs/validation.md says."""
    steps = re.search(r"\*\*Finite differences along directions, steps ([0-9e, -]+) Å\.\*\*", DOCS).group(1)
    assert FINITE_DIFFERENCE_STEPS == tuple(float(step) for step in steps.split(", "))
    assert "and two seeded random ones" in DOCS and RANDOM_DIRECTIONS == 2


def test_exact_forces_pass_at_the_first_step_with_the_documented_allowance():
    """Every direction passes at h = 1e-2 Å (the first step that passes is reported), with
    ``allowed = rtol·|F| + 2·ulp32(|E|)/h`` and, along the forces, ``analytic = -|F|``."""
    atoms, minimum = water_like(displacement=0.1)
    well = HarmonicWell(minimum)
    force_norm = 0.1 * np.sqrt(1 + 4 + 0.25 + 0 + 2.25 + 1 + 0.25 + 0 + 4)  # k = 1: |F| = |x - x0|
    energy = -100.0 + 0.5 * force_norm**2
    assert 64 <= abs(energy) < 128
    checks = check_forces_by_finite_differences(well, {"water": atoms}, rtol=RTOL)
    assert [check.direction for check in checks] == ["forces", "random-1", "random-2"]
    for check in checks:
        assert check.structure == "water" and check.passed and check.step == FINITE_DIFFERENCE_STEPS[0]
        assert check.force_norm == pytest.approx(force_norm, rel=1e-12)
        assert check.noise_floor == pytest.approx(2 * FLOAT32_ULP_64_TO_128 / 1e-2, rel=1e-12)
        assert check.allowed == pytest.approx(RTOL * force_norm + 2 * FLOAT32_ULP_64_TO_128 / 1e-2, rel=1e-12)
        assert check.error < 1e-6  # exact central difference of a quadratic, float64 energies
        assert check.finite_difference == pytest.approx(check.analytic, abs=1e-6)
    assert checks[0].analytic == pytest.approx(-force_norm, rel=1e-12)


def test_random_directions_come_from_seed_zero():
    """The random directions are normalised draws of ``numpy.random.default_rng(0)``, one per
    direction after the structure's forces are known: reports are reproducible run to run."""
    atoms, minimum = water_like(displacement=0.1)
    forces = -(atoms.positions - minimum)
    rng = np.random.default_rng(0)
    expected = []
    for _ in range(2):
        draw = rng.normal(size=forces.shape)
        expected.append(-float(np.sum(forces * draw / np.linalg.norm(draw))))
    checks = check_forces_by_finite_differences(HarmonicWell(minimum), {"water": atoms}, rtol=RTOL)
    assert [check.analytic for check in checks[1:]] == pytest.approx(expected, rel=1e-12)


def test_a_structure_with_zero_forces_gets_only_the_random_directions():
    """At the minimum |F| = 0: there is no force direction to test (dividing by |F| would give
    NaN); the random directions have analytic derivative 0 and pass."""
    atoms, minimum = water_like(displacement=0.0)
    checks = check_forces_by_finite_differences(HarmonicWell(minimum), {"at-minimum": atoms}, rtol=RTOL)
    assert [check.direction for check in checks] == ["random-1", "random-2"]
    for check in checks:
        assert check.passed and check.force_norm == 0.0 and check.analytic == 0.0
        assert np.isfinite(check.finite_difference) and abs(check.finite_difference) < 1e-9


def test_energy_errors_raise_the_noise_floor_of_their_structure_only():
    """``δE = max(ulp32(|E|), |E - E_reference|)``: 0.01 eV for ``"loose"`` gives a floor of
    2·0.01/h; ``"plain"`` (not in ``energy_errors``) keeps float32's ulp."""
    atoms, minimum = water_like(displacement=0.1)
    checks = check_forces_by_finite_differences(
        HarmonicWell(minimum), {"loose": atoms, "plain": atoms.copy()}, rtol=RTOL, energy_errors={"loose": 0.01}
    )
    floors = {(check.structure, check.direction): check.noise_floor for check in checks}
    for direction in ("forces", "random-1", "random-2"):
        assert floors["loose", direction] == pytest.approx(2 * 0.01 / 1e-2, rel=1e-12)
        assert floors["plain", direction] == pytest.approx(2 * FLOAT32_ULP_64_TO_128 / 1e-2, rel=1e-12)


def test_an_energy_error_below_the_ulp_leaves_the_ulp():
    atoms, minimum = water_like(displacement=0.1)
    (check, *_) = check_forces_by_finite_differences(HarmonicWell(minimum), {"w": atoms}, rtol=RTOL, energy_errors={"w": 1e-9})
    assert check.noise_floor == pytest.approx(2 * FLOAT32_ULP_64_TO_128 / 1e-2, rel=1e-12)


@pytest.mark.parametrize(("force_factor", "relative_error"), [(1.5, 0.5 / 1.5), (-1.0, 2.0)], ids=["scaled-1.5", "negated"])
def test_wrong_forces_fail_along_the_forces_reporting_the_step_closest_to_passing(force_factor, relative_error):
    """Reported forces ``c·F_true``: along their direction the analytic derivative is ``-|c|·|F|``
    while the energy's is ``-sign(c)·|F|``, an error of ``|c - 1|·|F|``, i.e. 1/3 (c = 1.5) or 2
    (c = -1) of the reported |F|: far above ``rtol·|F| + floor`` at every step. No step passes, so
    the one with the smallest error/allowed is reported: 1e-4 Å (same error, largest floor)."""
    atoms, minimum = water_like(displacement=0.1)
    (along_forces, *_) = check_forces_by_finite_differences(HarmonicWell(minimum, force_factor=force_factor), {"w": atoms}, rtol=RTOL)
    assert along_forces.direction == "forces" and not along_forces.passed
    assert along_forces.error == pytest.approx(relative_error * along_forces.force_norm, rel=1e-6)
    assert along_forces.step == FINITE_DIFFERENCE_STEPS[-1]
    assert along_forces.allowed == pytest.approx(RTOL * along_forces.force_norm + 2 * FLOAT32_ULP_64_TO_128 / 1e-4, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# NVE


class ConstantForce(Calculator):
    """Zero potential energy and the same force on every atom: not conservative, so the total
    energy grows by exactly ``N |F|² t² / 2m`` (equal masses, zero total momentum)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, force):
        super().__init__()
        self.force = np.asarray(force, dtype=float)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.tile(self.force, (len(self.atoms), 1))}


def argon_cluster() -> Atoms:
    """Four argon atoms (equal masses), not coplanar, 4 Å apart."""
    return Atoms("Ar4", positions=[[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])


def energy_gain_per_atom(force: np.ndarray, duration_fs: float) -> float:
    mass = argon_cluster().get_masses()[0]
    return float(np.sum(force**2)) * (duration_fs * units.fs) ** 2 / (2 * mass)


def test_nve_under_a_constant_force_drifts_as_worked_out():
    """10 steps of 0.5 fs under 0.3 eV/Å: drift and max deviation are both |F|² T² / 2m per atom
    (T = 5 fs), one energy per step plus the start."""
    force = np.array([0.3, 0.0, 0.0])
    run = run_nve(ConstantForce(force), argon_cluster(), structure="argon", steps=10, timestep_fs=0.5)
    expected = energy_gain_per_atom(force, 10 * 0.5)
    assert expected > 1e-4
    assert (run.structure, run.steps, run.timestep_fs, run.temperature_K) == ("argon", 10, 0.5, 300.0)
    assert len(run.total_energies) == 11
    assert run.max_deviation_per_atom == pytest.approx(expected, rel=1e-6)
    assert run.drift_per_atom == pytest.approx(expected, rel=1e-6)
    kinetic_at_start = 1.5 * (4 - 1) * units.kB * 300.0  # 300 K after removing the centre-of-mass motion
    assert run.total_energies[0] == pytest.approx(kinetic_at_start, rel=0.5)
    gained = np.array(run.total_energies) - run.total_energies[0]
    after_each_step = [4 * energy_gain_per_atom(force, step * 0.5) for step in range(11)]
    np.testing.assert_allclose(gained, after_each_step, rtol=1e-6, atol=1e-12)  # E(k·dt) for k = 0..10, in order


def test_nve_without_forces_conserves_energy_exactly():
    """No force: free flight, the total (kinetic) energy never changes, drift and deviation 0."""
    run = run_nve(ConstantForce([0.0, 0.0, 0.0]), argon_cluster(), structure="free", steps=6)
    assert len(run.total_energies) == 7 and run.total_energies[0] > 0
    assert run.max_deviation_per_atom == pytest.approx(0.0, abs=1e-12)
    assert run.drift_per_atom == pytest.approx(0.0, abs=1e-12)


def test_nve_defaults_are_the_documented_run():
    """docs/validation.md: "200 VelocityVerlet steps of 0.5 fs on benzene from 300 K": the
    defaults run exactly that (201 energies, T = 100 fs)."""
    match = re.search(r"\*\*NVE\*\*: (\d+) VelocityVerlet steps of ([\d.]+) fs on benzene from (\d+) K", DOCS)
    steps, timestep_fs, temperature_K = int(match.group(1)), float(match.group(2)), float(match.group(3))
    force = np.array([0.0, 0.05, 0.0])
    run = run_nve(ConstantForce(force), argon_cluster(), structure="argon")
    assert (run.steps, run.timestep_fs, run.temperature_K) == (steps, timestep_fs, temperature_K)
    assert len(run.total_energies) == steps + 1
    assert run.drift_per_atom == pytest.approx(energy_gain_per_atom(force, steps * timestep_fs), rel=1e-6)


@pytest.mark.parametrize(("allowed_excess", "passed"), [(1e-6, False), (1e-2, True)])
def test_nve_comparison_measures_the_artifacts_excess_drift(allowed_excess, passed):
    """Artifact under a constant force, reference without: the excess is the artifact's whole
    drift, |F|² T² / 2m per atom (here 2.4e-4 eV/atom over 5 fs)."""
    force = np.array([0.0, 0.0, 0.4])
    comparison = compare_nve(
        ConstantForce(force), ConstantForce([0.0, 0.0, 0.0]), argon_cluster(), structure="argon", steps=10, allowed_excess=allowed_excess
    )
    assert comparison.excess == pytest.approx(energy_gain_per_atom(force, 5.0), rel=1e-6)
    assert comparison.passed is passed and comparison.allowed_excess == allowed_excess
    assert comparison.artifact.total_energies[0] == pytest.approx(comparison.reference.total_energies[0], rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Round 2: the call signatures, the choice among failing steps, the bounds, NVE comparisons


def test_options_are_keyword_only():
    """Everything after the calculator and the structures (atoms) is passed by name: a tolerance
    or structure id passed by position is refused before anything runs, while naming every
    argument, the first ones included, works."""
    atoms, minimum = water_like(displacement=0.1)
    well = HarmonicWell(minimum)
    with pytest.raises(TypeError):
        check_forces_by_finite_differences(well, {"w": atoms}, RTOL)
    with pytest.raises(TypeError):
        run_nve(ConstantForce([0.0, 0.0, 0.0]), argon_cluster(), "argon")
    with pytest.raises(TypeError):
        compare_nve(ConstantForce([0.0, 0.0, 0.0]), ConstantForce([0.0, 0.0, 0.0]), argon_cluster(), "argon", 1e-3)
    named = check_forces_by_finite_differences(calculator=well, structures={"w": atoms}, rtol=RTOL)
    assert [check.direction for check in named] == ["forces", "random-1", "random-2"]
    run = run_nve(calculator=ConstantForce([0.0, 0.0, 0.0]), atoms=argon_cluster(), structure="argon", steps=2)
    assert len(run.total_energies) == 3
    comparison = compare_nve(
        artifact_calculator=ConstantForce([0.0, 0.0, 0.0]), reference_calculator=ConstantForce([0.0, 0.0, 0.0]), atoms=argon_cluster(),
        structure="argon", allowed_excess=1e-3, steps=2,
    )
    assert comparison.passed


class OddEnergyAroundZeroForce:
    """``predict`` with zero forces everywhere and an energy odd in the displacement ``d`` from
    ``center``: ``E(center ± h u) = ±magnitudes[h]`` (the sign of ``d · w`` for a fixed ``w``, the
    step ``h = |d|`` matched to the nearest key). Central differences are then exactly
    ``magnitudes[h] / h`` in absolute value along any direction, against an analytic derivative of 0."""

    def __init__(self, center: np.ndarray, magnitudes: dict[float, float]):
        self.center, self.magnitudes = center, magnitudes
        self.sign_vector = np.arange(1.0, center.size + 1).reshape(center.shape)

    def predict(self, structures: list[Atoms]) -> list[dict]:
        results = []
        for atoms in structures:
            displacement = atoms.positions - self.center
            length = float(np.linalg.norm(displacement))
            energy = 0.0
            if length > 0:
                step = min(self.magnitudes, key=lambda h: abs(np.log(length / h)))
                energy = float(np.sign(np.sum(displacement * self.sign_vector))) * self.magnitudes[step]
            results.append({"energy": energy, "forces": np.zeros_like(displacement)})
        return results


def test_when_no_step_passes_the_smallest_error_to_allowed_ratio_is_reported():
    """No force, so ``allowed = 2 δE / h``; with δE = 1e-4 eV that is 0.02, 0.2 and 2 eV/Å at
    h = 1e-2, 1e-3, 1e-4 Å. Energies ±4e-4, ±3e-4, ±4e-4 eV give differences of 0.04, 0.3 and
    4 eV/Å: error/allowed = 2, 1.5, 2, so the middle step is closest to passing (measured in
    allowed errors: the difference error - allowed, 0.02 at 1e-2 Å, would pick another)."""
    atoms, _ = water_like()
    calculator = OddEnergyAroundZeroForce(atoms.positions.copy(), {1e-2: 4e-4, 1e-3: 3e-4, 1e-4: 4e-4})
    checks = check_forces_by_finite_differences(calculator, {"odd": atoms}, rtol=RTOL, energy_errors={"odd": 1e-4})
    assert [check.direction for check in checks] == ["random-1", "random-2"]  # |F| = 0: no force direction
    for check in checks:
        assert not check.passed and check.step == 1e-3
        assert check.error == pytest.approx(0.3, rel=1e-9)
        assert check.allowed == pytest.approx(0.2, rel=1e-12) and check.noise_floor == check.allowed


def test_an_error_exactly_at_the_allowance_passes():
    """The bound is inclusive (``error <= rtol·|F| + 2 δE / h``). With no force and E(±h u) = ±2 δE
    the difference quotient is 4 δE / 2h, the same floating-point number as the floor 2 δE / h
    (only exact doublings differ), so the error equals the allowance exactly and passes."""
    atoms, _ = water_like()
    resolution = 0.01
    calculator = OddEnergyAroundZeroForce(atoms.positions.copy(), {1e-2: 2 * resolution})
    checks = check_forces_by_finite_differences(calculator, {"edge": atoms}, rtol=RTOL, energy_errors={"edge": resolution}, steps=(1e-2,))
    for check in checks:
        assert check.error == check.allowed == pytest.approx(2.0, rel=1e-12)
        assert check.passed and check.step == 1e-2


def test_identical_runs_have_no_excess_and_pass_without_allowance():
    """The same (drifting) force field as artifact and reference: from the same start both runs
    are the same, the excess |drift| - |reference drift| is exactly 0 and passes even when no
    excess at all is allowed. The drift itself is not the excess."""
    force = np.array([0.3, 0.0, 0.0])
    comparison = compare_nve(ConstantForce(force), ConstantForce(force), argon_cluster(), structure="argon", steps=10, allowed_excess=0.0)
    assert comparison.reference.drift_per_atom == pytest.approx(energy_gain_per_atom(force, 5.0), rel=1e-6)
    assert comparison.excess == 0.0 and comparison.passed


@pytest.mark.parametrize(("artifact_force", "reference_force"), [(0.4, 0.3), (0.3, 0.4)], ids=["artifact-drifts-more", "reference-drifts-more"])
def test_the_excess_is_the_difference_of_the_absolute_drifts(artifact_force, reference_force):
    """Both drift (|F|² T² / 2m per atom each): the excess is their difference, positive when the
    artifact drifts more (failing a tiny allowance), negative when it drifts less (passing)."""
    artifact, reference = np.array([0.0, artifact_force, 0.0]), np.array([0.0, reference_force, 0.0])
    comparison = compare_nve(ConstantForce(artifact), ConstantForce(reference), argon_cluster(), structure="argon", steps=10, allowed_excess=1e-6)
    expected = energy_gain_per_atom(artifact, 5.0) - energy_gain_per_atom(reference, 5.0)
    assert abs(expected) > 1e-5
    assert comparison.excess == pytest.approx(expected, rel=1e-6)
    assert comparison.passed is bool(expected < 0)


class SpringsReportingNoEnergy(Calculator):
    """Each atom on its own spring ``F = -k (x - x_rest)`` while the reported potential energy is
    0: the total energy is the kinetic energy alone, which rises and falls as the atoms oscillate."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, rest_positions: np.ndarray, stiffness: float):
        super().__init__()
        self.rest_positions, self.stiffness = rest_positions, stiffness

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": -self.stiffness * (self.atoms.positions - self.rest_positions)}


def test_max_deviation_is_measured_from_the_first_energy():
    """Argon atoms released at rest (0 K) 0.1 Å from their springs' rest points, period 40 fs:
    x = a cos ωt, so the total (kinetic) energy is ``N · k a²/2 · sin² ωt``, starting at 0. A
    run of 30 steps of 0.5 fs (3/8 of a period) passes the maximum k a²/2 per atom at 10 fs and
    ends at half of it: the deviation from E(0) is k a²/2 per atom (from the last energy it
    would be only k a²/4)."""
    atoms = argon_cluster()
    mass = atoms.get_masses()[0]
    omega = 2 * np.pi / (40.0 * units.fs)
    stiffness = mass * omega**2
    amplitude = 0.1
    calculator = SpringsReportingNoEnergy(atoms.positions - [amplitude, 0.0, 0.0], stiffness)
    run = run_nve(calculator, atoms, structure="springs", steps=30, timestep_fs=0.5, temperature_K=0.0)
    peak_per_atom = 0.5 * stiffness * amplitude**2
    energies = np.array(run.total_energies)
    assert energies[0] == pytest.approx(0.0, abs=1e-12)
    assert energies[20] / 4 == pytest.approx(peak_per_atom, rel=1e-2)  # t = 10 fs, a quarter period
    assert energies[-1] / 4 == pytest.approx(peak_per_atom / 2, rel=1e-2)  # t = 15 fs: sin²(3π/4) = 1/2
    assert run.max_deviation_per_atom == pytest.approx(peak_per_atom, rel=1e-2)
