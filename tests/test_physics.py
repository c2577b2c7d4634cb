"""Physics is the spec: gradients, invariances, extensivity, smoothness and NVE conservation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from conftest import structure_zoo
from scipy.spatial.transform import Rotation

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

ZOO = structure_zoo()
PERIODIC = {name: atoms for name, atoms in ZOO.items() if atoms.pbc.all()}


@pytest.fixture(scope="module")
def calc64(small_model):
    return load_calculator(small_model, dtype="float64")


def evaluate(atoms: Atoms, calc) -> tuple[float, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forces_are_minus_energy_gradient(name, calc64):
    atoms = ZOO[name].copy()
    atoms.calc = calc64
    numeric = calculate_numerical_forces(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PERIODIC))
def test_stress_is_strain_derivative_of_energy(name, calc64):
    atoms = PERIODIC[name].copy()
    atoms.calc = calc64
    numeric = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), numeric, atol=1e-6)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
def test_rotation_rotates_forces_and_keeps_energy(name, calc64):
    atoms = ZOO[name]
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.cell = atoms.cell.array @ rotation.T
    energy, forces = evaluate(atoms, calc64)
    rotated_energy, rotated_forces = evaluate(rotated, calc64)
    assert rotated_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(rotated_forces, forces @ rotation.T, atol=1e-9)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
def test_translation_leaves_energy_and_forces(name, calc64):
    atoms = ZOO[name]
    moved = atoms.copy()
    moved.positions += [1.7, -3.2, 0.4]
    energy, forces = evaluate(atoms, calc64)
    moved_energy, moved_forces = evaluate(moved, calc64)
    assert moved_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(moved_forces, forces, atol=1e-9)


@pytest.mark.parametrize("name", ["benzene", "triclinic"])
def test_permutation_permutes_forces_and_keeps_energy(name, calc64):
    atoms = ZOO[name]
    order = np.random.default_rng(7).permutation(len(atoms))
    energy, forces = evaluate(atoms, calc64)
    permuted_energy, permuted_forces = evaluate(atoms[order], calc64)
    assert permuted_energy == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(permuted_forces, forces[order], atol=1e-9)


@pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 2), (1, 2, 3)])
@pytest.mark.parametrize("name", sorted(PERIODIC))
def test_supercell_is_extensive(name, repeat, calc64):
    """Also for cells smaller than the cutoff, where an atom sees many images of itself."""
    atoms = PERIODIC[name]
    supercell = atoms.repeat(repeat)
    energy, forces = evaluate(atoms, calc64)
    super_energy, super_forces = evaluate(supercell, calc64)
    assert super_energy == pytest.approx(energy * np.prod(repeat), rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(super_forces, np.tile(forces, (np.prod(repeat), 1)), atol=1e-9)
    atoms, supercell = atoms.copy(), supercell.copy()
    atoms.calc, supercell.calc = calc64, calc64
    np.testing.assert_allclose(supercell.get_stress(), atoms.get_stress(), atol=1e-9)


def test_energy_and_force_are_continuous_at_the_cutoff(small_model, calc64):
    cutoff = small_model.cutoff
    energies, forces = [], []
    for distance in (cutoff - 1e-6, cutoff + 1e-6):
        energy, force = evaluate(Atoms("HH", positions=[[0, 0, 0], [distance, 0, 0]]), calc64)
        energies.append(energy)
        forces.append(force)
    assert energies[0] == pytest.approx(energies[1], abs=1e-9)
    assert np.abs(forces[0]).max() < 1e-6 and np.abs(forces[1]).max() == 0.0


def test_float32_agrees_with_float64(small_model):
    atoms = ZOO["benzene"]
    energy64, forces64 = evaluate(atoms, load_calculator(small_model, dtype="float64"))
    energy32, forces32 = evaluate(atoms, load_calculator(small_model, dtype="float32"))
    assert energy32 == pytest.approx(energy64, abs=1e-3)
    np.testing.assert_allclose(forces32, forces64, atol=1e-4)
    small_model.double()  # load_calculator moved the shared fixture to float32


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


def test_batched_call_equals_single_calls(small_model):
    from mlff_export.forces import energy_forces_virial
    from mlff_export.neighbors import batch_inputs, compute_pairs

    structures = list(ZOO.values())
    pairs = [compute_pairs(atoms, small_model.cutoff) for atoms in structures]
    model = small_model.double()
    energy, forces, virial = energy_forces_virial(model, batch_inputs(structures, pairs, dtype=torch.float64))
    start = 0
    for index, (atoms, atom_pairs) in enumerate(zip(structures, pairs)):
        single = energy_forces_virial(model, batch_inputs([atoms], [atom_pairs], dtype=torch.float64))
        stop = start + len(atoms)
        torch.testing.assert_close(energy[index], single[0][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(forces[start:stop], single[1], rtol=0, atol=1e-10)
        torch.testing.assert_close(virial[index], single[2][0], rtol=0, atol=1e-10)
        start = stop
