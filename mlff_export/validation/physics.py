"""Physics checks of an artifact on its own: conservative forces and energy conservation in NVE.

**Finite differences.** For each structure, the artifact's forces ``F`` (a 3N vector) must be
minus the derivative of its own energy. Per-component central differences at 1e-3 Å cannot test
that for a float32 energy: a total energy of -6300 eV (benzene) has a float32 spacing (ulp) of
4.9e-4 eV, so one rounding alone moves a 1e-3 Å difference quotient by 0.24 eV/Å. Instead we take
the directional derivative along a few unit directions ``u`` in 3N space (the force direction,
where the signal is the whole force norm ``|F|``, and seeded random ones) with a central
difference of step ``h`` in :data:`FINITE_DIFFERENCE_STEPS` (1e-2 Å first: every atom moves at most
1e-2 Å, the truncation error ``h²/6 · E'''`` stays below 1e-3 eV/Å for smooth potentials; then 1e-3
and 1e-4 Å for models whose energy curves sharply, e.g. HIP-NN-TS near its sensitivities' onset,
where 1e-2 Å is off by 50 % and 1e-4 Å agrees to 0.3 %) and require, at one of the steps::

    |(E(x + h u) - E(x - h u)) / 2h  -  (-F · u)|  <=  rtol · |F|  +  2 δE / h

The second term is the noise floor of the difference quotient, from the energy's resolution
``δE = max(ulp32(|E|), |E - E_reference|)``: a float32 energy is good to about one ulp, and an
FP16 body adds rounding noise of the size of its error against the float64 reference (the
comparison measures it; a smooth bias would not disturb the difference, so the floor errs on
the lenient side). A sign error in the forces gives an error of ``2 |F|`` along the force
direction, far above both terms; a force off by a factor fails likewise.

**NVE.** VelocityVerlet from a Maxwell-Boltzmann start (fixed seed, no drift or rotation); the
total energy is recorded every step. The reported *drift* is the slope of a linear fit times the
run's duration, the *max deviation* ``max_t |E(t) - E(0)|``, both per atom. The artifact passes
when its absolute drift exceeds the reference model's (run from the same start) by at most the
precision's tolerance. Drift, not max deviation, decides: a float32 total energy fluctuates by a
few ulp from step to step (benzene: ~2e-3 eV, 2e-4 eV/atom) without any systematic error, and the
linear fit averages that noise away while a non-conservative force field drifts steadily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

FINITE_DIFFERENCE_STEPS = (1e-2, 1e-3, 1e-4)
"""Central-difference steps along a unit direction in 3N space, Å, tried in turn (see above)."""

RANDOM_DIRECTIONS = 2
"""Random unit directions per structure, besides the force direction."""


@dataclass
class FiniteDifferenceCheck:
    """One directional derivative of one structure's energy, eV/Å.

    Attributes:
        structure: structure id; ``direction``: ``"forces"`` or ``"random-<k>"``.
        analytic: ``-F · u`` from the artifact's forces; ``finite_difference``: the central
            difference of its energies; ``error``: their absolute difference.
        force_norm: ``|F|`` over all atoms; ``noise_floor``: ``2 δE / h``; ``allowed``:
            ``rtol * force_norm + noise_floor``; ``passed``; ``step``: the step ``h`` (Å) of this
            result (the first that passed, else the one closest to passing).
    """

    structure: str
    direction: str
    analytic: float
    finite_difference: float
    error: float
    force_norm: float
    noise_floor: float
    allowed: float
    passed: bool
    step: float = FINITE_DIFFERENCE_STEPS[0]


def float32_ulp(value: float) -> float:
    """Spacing of float32 numbers at ``value`` (eV for an energy)."""
    return float(np.spacing(np.float32(abs(value))))


def _unit_directions(forces: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    directions = {}
    norm = np.linalg.norm(forces)
    if norm > 0:
        directions["forces"] = forces / norm
    for index in range(RANDOM_DIRECTIONS):
        random = rng.normal(size=forces.shape)
        directions[f"random-{index + 1}"] = random / np.linalg.norm(random)
    return directions


def check_forces_by_finite_differences(
    calculator,
    structures: dict[str, Atoms],
    *,
    rtol: float,
    energy_errors: dict[str, float] | None = None,
    steps: tuple[float, ...] = FINITE_DIFFERENCE_STEPS,
    seed: int = 0,
) -> list[FiniteDifferenceCheck]:
    """Directional finite-difference checks of ``calculator``'s forces (see the module docstring).

    ``energy_errors``: structure id -> ``|E - E_reference|`` in eV, raising the noise floor
    above float32's ulp where it is larger (FP16 bodies). Each direction passes if the central
    difference at one of ``steps`` agrees. All displaced structures go through one
    ``calculator.predict`` call.
    """
    rng = np.random.default_rng(seed)
    names = list(structures)
    centers = calculator.predict(list(structures.values()))
    displaced, plan = [], []
    for name, result in zip(names, centers):
        atoms = structures[name]
        for direction_name, direction in _unit_directions(result["forces"], rng).items():
            for step in steps:
                for sign in (1.0, -1.0):
                    moved = atoms.copy()
                    moved.positions = atoms.positions + sign * step * direction
                    displaced.append(moved)
            plan.append((name, result, direction_name, direction))
    energies = iter(result["energy"] for result in calculator.predict(displaced))
    checks = []
    for name, result, direction_name, direction in plan:
        analytic = -float(np.sum(result["forces"] * direction))
        force_norm = float(np.linalg.norm(result["forces"]))
        energy_resolution = max(float32_ulp(result["energy"]), (energy_errors or {}).get(name, 0.0))
        candidates = []
        for step in steps:
            plus, minus = next(energies), next(energies)
            finite_difference = (plus - minus) / (2 * step)
            noise_floor = 2 * energy_resolution / step
            allowed = rtol * force_norm + noise_floor
            error = abs(finite_difference - analytic)
            candidates.append(FiniteDifferenceCheck(name, direction_name, analytic, finite_difference, error, force_norm,
                                                    noise_floor, allowed, bool(error <= allowed), step))
        passing = [check for check in candidates if check.passed]
        checks.append(passing[0] if passing else min(candidates, key=lambda check: check.error / check.allowed))
    return checks


@dataclass
class NVERun:
    """Energy conservation of one NVE trajectory.

    Attributes:
        structure: structure id; ``steps``, ``timestep_fs`` (fs), ``temperature_K`` (initial, K).
        total_energies: total energy after each step, eV (``steps + 1`` values).
        drift_per_atom: linear-fit slope of the total energy times the run time, eV/atom.
        max_deviation_per_atom: ``max |E(t) - E(0)| / N``, eV/atom.
    """

    structure: str
    steps: int
    timestep_fs: float
    temperature_K: float
    total_energies: list[float]
    drift_per_atom: float
    max_deviation_per_atom: float


def run_nve(
    calculator, atoms: Atoms, *, structure: str, steps: int = 200, timestep_fs: float = 0.5, temperature_K: float = 300.0, seed: int = 0
) -> NVERun:
    """Run ``steps`` of VelocityVerlet on a copy of ``atoms`` with ``calculator``."""
    atoms = atoms.copy()
    atoms.calc = calculator
    # MaxwellBoltzmannDistribution, not thermalize_momenta (ASE >= 3.29 only): we support ASE >= 3.23.
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = [atoms.get_total_energy()]
    dynamics.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dynamics.run(steps)
    # The last steps + 1: ASE versions that also call observers before the first step record E(0) twice.
    energies = np.array(energies[-(steps + 1) :])
    times = np.arange(len(energies)) * timestep_fs
    slope = np.polyfit(times, energies, 1)[0] if np.isfinite(energies).all() else np.nan
    return NVERun(
        structure=structure,
        steps=steps,
        timestep_fs=timestep_fs,
        temperature_K=temperature_K,
        total_energies=energies.tolist(),
        drift_per_atom=float(slope * times[-1] / len(atoms)),
        max_deviation_per_atom=float(np.max(np.abs(energies - energies[0])) / len(atoms)),
    )


@dataclass
class NVEComparison:
    """The artifact's NVE run against the reference model's, from the same start.

    ``excess``: ``|artifact drift| - |reference drift|``, eV/atom; passes when
    ``excess <= allowed_excess`` (NaN energies fail).
    """

    artifact: NVERun
    reference: NVERun
    excess: float
    allowed_excess: float
    passed: bool


def compare_nve(artifact_calculator, reference_calculator, atoms: Atoms, *, structure: str, allowed_excess: float, **run_options) -> NVEComparison:
    """Run NVE with both calculators from the same initial state and compare their conservation."""
    artifact = run_nve(artifact_calculator, atoms, structure=structure, **run_options)
    reference = run_nve(reference_calculator, atoms, structure=structure, **run_options)
    excess = abs(artifact.drift_per_atom) - abs(reference.drift_per_atom)
    return NVEComparison(artifact, reference, float(excess), allowed_excess, bool(excess <= allowed_excess))
