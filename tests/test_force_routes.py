"""Both force routes, on both pair layouts, give forces and virials that are the derivatives of
their own energy, and agree with each other (float64, small structures: a fast, sharp check).

Routes (:mod:`mlff_export.forces`): the pair-vector route on a pair list and on a neighbor table
(PaiNN), and the strain route (PaiNN through its interface ``forward``, a user's model written
with ``index_add``, and one whose energy also reads the cell). Forces are checked against central differences of the route's energy in
seeded random directions of all coordinates; the virial ``W = -dE/d(strain)`` against central
differences under random homogeneous strains of each structure's positions, shifts and cell. One
batch holds a triclinic cell smaller than the cutoff, a molecule and a slab, so per-structure sums
and periodic images are exercised.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk, molecule
from byom_models import make_student
from conftest import make_small_painn, rattled, triclinic_cell
from torch import nn

from mlff_export.forces import energy_forces_virial, energy_forces_virial_by_strain, energy_forces_virial_from_pairs
from mlff_export.interface import AtomicInputs
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.pair_layouts import NeighborTable, PairList

ROUTES = ("pair-vector/pair-list", "pair-vector/neighbor-table", "strain/painn", "strain/student", "strain/cell-reader")
STEP = 1e-5  # Å (and strain): central differences in float64 are good to ~1e-7 eV/Å here


class CellReader(nn.Module):
    """A user's model whose energy also reads the cell: the student plus ``0.05 eV/Å³ * det(cell)``
    (a volume term; zero for molecules). Its virial needs the strain applied to the cell too."""

    def __init__(self):
        super().__init__()
        self.student = make_student(seed=3)
        self.cutoff, self.species = self.student.cutoff, self.student.species

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        return self.student(positions, species, pair_index, pair_shifts, structure_index, cell) + 0.05 * torch.linalg.det(cell)


@pytest.fixture(scope="module")
def models():
    return {
        "painn": make_small_painn(seed=2).double(),
        "student": make_student(seed=1).double(),
        "cell-reader": CellReader().double().eval(),
    }


@pytest.fixture(scope="module")
def inputs(models) -> AtomicInputs:
    slab = rattled(bulk("C", "diamond", a=3.57), seed=4)
    slab.pbc = [True, False, True]
    structures = [triclinic_cell(), rattled(molecule("H2O"), seed=5), slab]
    cutoff = models["student"].cutoff  # the larger of the two: the PaiNN ignores the extra pairs
    return batch_inputs(structures, [compute_pairs(atoms, cutoff) for atoms in structures], dtype=torch.float64)


def evaluate(route: str, models, inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [B], forces [N, 3], virial [B, 3, 3] of ``inputs`` by ``route``."""
    layout_name = route.partition("/")[2]
    if route.startswith("strain/"):
        return tuple(t.detach() for t in energy_forces_virial_by_strain(models[layout_name], inputs))
    if layout_name == "pair-list":
        layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
    else:  # two padding slots per row beyond the longest: padding must add nothing
        width = int(torch.bincount(inputs.pair_index[0], minlength=inputs.num_atoms).max()) + 2
        layout = NeighborTable.from_pair_list(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms, width)
    outputs = energy_forces_virial_from_pairs(
        models["painn"], inputs.positions, inputs.species, layout, inputs.structure_index, inputs.num_structures
    )
    return tuple(t.detach() for t in outputs)


def strained(inputs: AtomicInputs, structure: int, strain: torch.Tensor) -> AtomicInputs:
    """``inputs`` with structure ``structure`` deformed by ``I + strain`` (positions, shifts, cell)."""
    deformation = torch.eye(3, dtype=strain.dtype) + strain
    atoms = inputs.structure_index == structure
    pairs = atoms[inputs.pair_index[0]]
    positions, shifts, cell = inputs.positions.clone(), inputs.pair_shifts.clone(), inputs.cell.clone()
    positions[atoms] = positions[atoms] @ deformation
    shifts[pairs] = shifts[pairs] @ deformation
    cell[structure] = cell[structure] @ deformation
    return AtomicInputs(positions, inputs.species, inputs.pair_index, shifts, inputs.structure_index, cell)


def random_directions(shape: tuple[int, ...], count: int = 3) -> list[torch.Tensor]:
    """Seeded random unit directions: a force or virial error is seen along almost every one."""
    generator = torch.Generator().manual_seed(0)
    directions = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(count)]
    return [direction / direction.norm() for direction in directions]


@pytest.mark.parametrize("route", ROUTES)
def test_forces_are_minus_the_gradient_of_the_routes_energy(route, models, inputs):
    _, forces, _ = evaluate(route, models, inputs)
    for direction in random_directions(tuple(forces.shape)):
        energies = []
        for sign in (1.0, -1.0):
            moved = inputs.positions + sign * STEP * direction
            energies.append(evaluate(route, models, AtomicInputs(moved, *inputs.as_tuple()[1:]))[0].sum())
        numeric = -(energies[0] - energies[1]) / (2 * STEP)
        assert float((forces * direction).sum()) == pytest.approx(float(numeric), abs=1e-6)
    assert forces.abs().max() > 1e-2  # forces large enough to show a wrong sign or factor


@pytest.mark.parametrize("route", ROUTES)
def test_virial_is_minus_the_strain_derivative_of_each_structures_energy(route, models, inputs):
    _, _, virial = evaluate(route, models, inputs)
    for structure in range(inputs.num_structures):
        for direction in random_directions((3, 3), count=2):
            energies = [
                evaluate(route, models, strained(inputs, structure, sign * STEP * direction))[0][structure]
                for sign in (1.0, -1.0)
            ]
            numeric = -(energies[0] - energies[1]) / (2 * STEP)
            assert float((virial[structure] * direction).sum()) == pytest.approx(float(numeric), abs=1e-6)
    assert virial.abs().max() > 1e-2  # large enough to show a wrong sign or factor


def test_the_routes_agree_on_the_same_model(models, inputs):
    reference = evaluate("pair-vector/pair-list", models, inputs)
    for route in ("pair-vector/neighbor-table", "strain/painn"):
        for name, want, got in zip(("energy", "forces", "virial"), reference, evaluate(route, models, inputs)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"{route} {name}")


@pytest.mark.parametrize("route", [route for route in ROUTES if route.startswith("strain/")])
def test_the_strain_route_energy_is_the_modules_own(route, models, inputs):
    """The strain is zero where the route evaluates: the module sees its inputs as they are."""
    model = models[route.partition("/")[2]]
    with torch.no_grad():
        expected = model(*inputs.as_tuple())
    torch.testing.assert_close(evaluate(route, models, inputs)[0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("route", ROUTES)
def test_each_structure_of_a_batch_gets_its_own_results(route, models, inputs):
    energy, forces, virial = evaluate(route, models, inputs)
    for structure in range(inputs.num_structures):
        atoms = inputs.structure_index == structure
        pairs = atoms[inputs.pair_index[0]]
        offset = int(torch.nonzero(atoms)[0, 0])
        alone = AtomicInputs(
            inputs.positions[atoms],
            inputs.species[atoms],
            inputs.pair_index[:, pairs] - offset,
            inputs.pair_shifts[pairs],
            torch.zeros(int(atoms.sum()), dtype=torch.int64),
            inputs.cell[structure : structure + 1],
        )
        single = evaluate(route, models, alone)
        torch.testing.assert_close(energy[structure : structure + 1], single[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(forces[atoms], single[1], rtol=0, atol=1e-10)
        torch.testing.assert_close(virial[structure : structure + 1], single[2], rtol=0, atol=1e-10)


@pytest.mark.parametrize("layout_name", ["pair-list", "neighbor-table"])
def test_atom_weights_give_the_outputs_of_the_weighted_energy(layout_name, models, inputs):
    """Domain evaluation weights halo atoms 0: energy, forces and virial of ``sum_i w_i E_i``."""
    weights = torch.rand(inputs.num_atoms, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = NeighborTable.from_pair_list(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
    layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms) if layout_name == "pair-list" else table

    def weighted(positions: torch.Tensor):
        return energy_forces_virial_from_pairs(
            models["painn"], positions, inputs.species, layout, inputs.structure_index, inputs.num_structures, atom_weights=weights
        )

    energy, forces, _ = weighted(inputs.positions)
    vectors = layout.gather_neighbors(inputs.positions) - layout.gather_centers(inputs.positions) + layout.shifts
    with torch.no_grad():
        atom_energies = models["painn"].atomic_energies(vectors, inputs.species, layout)
    expected = torch.zeros(inputs.num_structures, dtype=torch.float64).index_add(0, inputs.structure_index, weights * atom_energies)
    torch.testing.assert_close(energy.detach(), expected, rtol=0, atol=1e-10)
    (direction,) = random_directions(tuple(forces.shape), count=1)
    energies = [weighted(inputs.positions + sign * STEP * direction)[0].sum() for sign in (1.0, -1.0)]
    numeric = -(energies[0] - energies[1]) / (2 * STEP)
    assert float((forces * direction).sum()) == pytest.approx(float(numeric), abs=1e-6)


@pytest.mark.parametrize("model_name", ["painn", "student"])
def test_forces_and_virials_keep_no_graph_unless_asked(model_name, models, inputs):
    """By default the derivatives are plain tensors (no autograd history kept alive: memory, and
    a runtime's outputs must not carry it); ``create_graph=True`` keeps it, for training on forces."""
    model = models[model_name]
    for create_graph in (False, True):
        _, forces, virial = energy_forces_virial(model, inputs, create_graph=create_graph)
        assert forces.requires_grad == virial.requires_grad == create_graph
    _, forces, virial = energy_forces_virial(model, inputs)
    assert not forces.requires_grad and not virial.requires_grad
    _, forces, virial = energy_forces_virial_by_strain(model, inputs)
    assert not forces.requires_grad and not virial.requires_grad
    if model_name == "painn":
        layout = PairList(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms)
        _, forces, virial = energy_forces_virial_from_pairs(
            model, inputs.positions, inputs.species, layout, inputs.structure_index, inputs.num_structures
        )
        assert not forces.requires_grad and not virial.requires_grad


class VolumeTerm(nn.Module):
    """A term that reads only the cell, ``0.05 eV/Å³ * det(cell)`` per structure (a p·V term):
    positions take no part in its energy."""

    cutoff, species = 3.0, [6]

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        return 0.05 * torch.linalg.det(cell)


def test_an_energy_that_reads_only_the_cell():
    """Zero forces (not an autograd error) and the virial of the volume term,
    W = -dE/d(strain) = -0.05 eV/Å³ * V * I."""
    atoms = bulk("C", "sc", a=10.0)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, VolumeTerm.cutoff)], dtype=torch.float64)
    _, forces, virial = energy_forces_virial_by_strain(VolumeTerm(), inputs)
    assert torch.equal(forces, torch.zeros_like(forces))
    torch.testing.assert_close(virial[0], -0.05 * 1000.0 * torch.eye(3, dtype=torch.float64))
