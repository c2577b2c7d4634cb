"""Physics is the spec: gradients, invariances, extensivity, smoothness and NVE conservation.

Every force route and model family is held to it:

* ``pair-vector``: the bundled PaiNN (``atomic_energies`` on a pair layout), eager float64;
* ``strain``: a user's model written with ``index_add`` (the distilled student of
  ``byom_models.py``), forces and virial by the strain route, eager float64;
* exported graphs of both (the student's rewritten from the pair list to the neighbor table),
  run by ONNX Runtime in float32: invariances and extensivity here; finite differences of the
  exported energies (forces, and stress by the strain derivative) in
  ``test_bring_your_own_model.py``, parametrized over the PaiNN and the users' models.

``test_force_routes.py`` holds the fast float64 checks of each route on both pair layouts.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from byom_models import make_student
from conftest import make_small_painn, structure_zoo
from scipy.spatial.transform import Rotation

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

ZOO = structure_zoo()
PERIODIC = {name: atoms for name, atoms in ZOO.items() if atoms.pbc.all()}

MAKE_MODEL = {"pair-vector": make_small_painn, "strain": make_student}
"""Force route -> a model that takes it (the calculator picks the route from the model)."""
ROUTES = sorted(MAKE_MODEL)
# Finite differences are the slow tests: the strain route gets one molecule and the periodic cells.
FINITE_DIFFERENCE_CASES = [("pair-vector", name) for name in sorted(ZOO)] + [
    ("strain", name) for name in ("CH4", "diamond-primitive", "triclinic")
]


@functools.cache
def calc64(route: str):
    """An eager float64 calculator of the model taking ``route`` (one per test session)."""
    return load_calculator(MAKE_MODEL[route](), dtype="float64")


def evaluate(atoms: Atoms, calc) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def stress_of(atoms: Atoms, calc) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_stress()


@pytest.mark.parametrize(("route", "name"), FINITE_DIFFERENCE_CASES)
def test_forces_are_minus_energy_gradient(route, name):
    atoms = ZOO[name].copy()
    atoms.calc = calc64(route)
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PERIODIC))
@pytest.mark.parametrize("route", ROUTES)
def test_stress_is_strain_derivative_of_energy(route, name):
    """For the strain route this is what catches a flipped virial sign: ONNX-vs-eager cannot
    (both trace the same function)."""
    atoms = PERIODIC[name].copy()
    atoms.calc = calc64(route)
    numeric = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), numeric, atol=1e-6)
    assert np.abs(numeric).max() > 1e-3, "a stress this small would not show a sign error"


# ---------------------------------------------------------------------------------------------
# Invariances and extensivity, eager float64 and exported float32, for both routes.

EXPORTED = {f"exported-{route}": route for route in ROUTES}
"""Exported graph -> the route its model takes (both run on the scatter-free neighbor table)."""
CALCULATORS = [*ROUTES, *EXPORTED]


@pytest.fixture(scope="module")
def calculator(tmp_path_factory):
    """Calculator kind -> calculator: eager float64 for a route, ONNX Runtime for an exported graph."""
    exported = {}

    def get(kind: str):
        if kind not in EXPORTED:
            return calc64(kind)
        if kind not in exported:
            from mlff_export.export import to_onnx

            path = to_onnx(MAKE_MODEL[EXPORTED[kind]](), tmp_path_factory.mktemp(kind) / "model.fp32.onnx")
            exported[kind] = load_calculator(path)
        return exported[kind]

    return get


def assert_same_energy(got: float, want: float, kind: str) -> None:
    """float64: 1e-9 eV; float32 graphs: 1e-4 eV plus four float32 spacings of the total."""
    allowed = 1e-9 if kind in ROUTES else 1e-4 + 2.0**-21 * abs(want)
    assert abs(got - want) <= allowed, f"{kind}: energy {got} vs {want} (allowed {allowed:.2g})"


def assert_same_forces(got: np.ndarray, want: np.ndarray, kind: str) -> None:
    np.testing.assert_allclose(got, want, atol=1e-9 if kind in ROUTES else 1e-4, err_msg=kind)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
@pytest.mark.parametrize("kind", CALCULATORS)
def test_rotation_rotates_forces_and_keeps_energy(kind, name, calculator):
    atoms = ZOO[name]
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.cell = atoms.cell.array @ rotation.T
    energy, forces = evaluate(atoms, calculator(kind))
    rotated_energy, rotated_forces = evaluate(rotated, calculator(kind))
    assert_same_energy(rotated_energy, energy, kind)
    assert_same_forces(rotated_forces, forces @ rotation.T, kind)
    if atoms.pbc.all():  # stress is a rank-2 tensor: it rotates as R S R^T
        stress = voigt_6_to_full_3x3_stress(stress_of(atoms, calculator(kind)))
        expected = full_3x3_to_voigt_6_stress(rotation @ stress @ rotation.T)
        np.testing.assert_allclose(stress_of(rotated, calculator(kind)), expected, atol=1e-9 if kind in ROUTES else 1e-5)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
@pytest.mark.parametrize("kind", CALCULATORS)
def test_translation_leaves_energy_and_forces(kind, name, calculator):
    atoms = ZOO[name]
    moved = atoms.copy()
    moved.positions += [1.7, -3.2, 0.4]
    energy, forces = evaluate(atoms, calculator(kind))
    moved_energy, moved_forces = evaluate(moved, calculator(kind))
    assert_same_energy(moved_energy, energy, kind)
    assert_same_forces(moved_forces, forces, kind)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
@pytest.mark.parametrize("kind", CALCULATORS)
def test_permutation_permutes_forces_and_keeps_energy(kind, name, calculator):
    atoms = ZOO[name]
    order = np.random.default_rng(7).permutation(len(atoms))
    energy, forces = evaluate(atoms, calculator(kind))
    permuted_energy, permuted_forces = evaluate(atoms[order], calculator(kind))
    assert_same_energy(permuted_energy, energy, kind)
    assert_same_forces(permuted_forces, forces[order], kind)


@pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 2), (1, 2, 3)])
@pytest.mark.parametrize("name", sorted(PERIODIC))
@pytest.mark.parametrize("kind", CALCULATORS)
def test_supercell_is_extensive(kind, name, repeat, calculator):
    """Also for cells smaller than the cutoff, where an atom sees many images of itself."""
    atoms = PERIODIC[name]
    supercell = atoms.repeat(repeat)
    energy, forces = evaluate(atoms, calculator(kind))
    super_energy, super_forces = evaluate(supercell, calculator(kind))
    assert_same_energy(super_energy, energy * np.prod(repeat), kind)
    assert_same_forces(super_forces, np.tile(forces, (np.prod(repeat), 1)), kind)
    np.testing.assert_allclose(
        stress_of(supercell, calculator(kind)), stress_of(atoms, calculator(kind)), atol=1e-9 if kind in ROUTES else 1e-5
    )


# ---------------------------------------------------------------------------------------------
# Smoothness, precision, batching and NVE.


@pytest.mark.parametrize("route", ROUTES)
def test_energy_and_force_are_continuous_at_the_cutoff(route):
    calc = calc64(route)
    cutoff = calc.neighbor_list.cutoff
    energies, forces = [], []
    for distance in (cutoff - 1e-6, cutoff + 1e-6):
        energy, force = evaluate(Atoms("HH", positions=[[0, 0, 0], [distance, 0, 0]]), calc)
        energies.append(energy)
        forces.append(force)
    assert energies[0] == pytest.approx(energies[1], abs=1e-9)
    assert np.abs(forces[0]).max() < 1e-6 and np.abs(forces[1]).max() == 0.0


@pytest.mark.parametrize("route", ROUTES)
def test_float32_agrees_with_float64(route):
    atoms = ZOO["benzene"]
    energy64, forces64 = evaluate(atoms, load_calculator(MAKE_MODEL[route](), dtype="float64"))
    energy32, forces32 = evaluate(atoms, load_calculator(MAKE_MODEL[route](), dtype="float32"))
    assert energy32 == pytest.approx(energy64, abs=2e-3)
    np.testing.assert_allclose(forces32, forces64, atol=1e-4)


def test_nve_conserves_energy_with_the_reference_model():
    atoms = molecule("C6H6")
    atoms.calc = load_calculator(REFERENCE_CHECKPOINT, skin=0.5)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    totals = []
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=5)
    dynamics.run(400)
    kinetic = atoms.get_kinetic_energy()
    drift = max(totals) - min(totals)
    assert kinetic > 0.05  # the molecule moved
    assert drift < 5e-3, f"total energy wandered by {drift:.2e} eV over 200 fs"


@pytest.mark.parametrize("route", ROUTES)
def test_batched_call_equals_single_calls(route):
    from mlff_export.forces import energy_forces_virial
    from mlff_export.neighbors import batch_inputs, compute_pairs

    model = MAKE_MODEL[route]().double()
    structures = list(ZOO.values())
    pairs = [compute_pairs(atoms, model.cutoff) for atoms in structures]
    energy, forces, virial = energy_forces_virial(model, batch_inputs(structures, pairs, dtype=torch.float64))
    start = 0
    for index, (atoms, atom_pairs) in enumerate(zip(structures, pairs)):
        single = energy_forces_virial(model, batch_inputs([atoms], [atom_pairs], dtype=torch.float64))
        stop = start + len(atoms)
        torch.testing.assert_close(energy[index], single[0][0], rtol=0, atol=1e-9)
        torch.testing.assert_close(forces[start:stop], single[1], rtol=0, atol=1e-10)
        torch.testing.assert_close(virial[index], single[2][0], rtol=0, atol=1e-10)
        start = stop
