"""The ASE calculator: results, caching, bad input and setup errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import CalculatorSetupError, PropertyNotImplementedError
from conftest import make_small_painn, structure_zoo

from mlff_export.interface import AtomicInputs, InterfaceError
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.neighbors import StructureError
from mlff_export.runtime import load_calculator
from mlff_export.runtime.calculator import all_finite
from mlff_export.runtime.eager import EagerBackend
from mlff_export.runtime.shape_buckets import ShapeOutOfRangeError


def test_default_is_the_reference_model():
    atoms = molecule("C6H6")
    atoms.calc = load_calculator()
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (12, 3)
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)


def test_new_positions_give_new_forces(small_model):
    """The anti-pattern to avoid: a cache that returns stale forces after a move."""
    atoms = molecule("H2O")
    atoms.calc = load_calculator(small_model, dtype="float64")
    before = atoms.get_forces().copy()
    atoms.positions[0] += [0.05, 0.0, 0.0]
    assert not np.allclose(atoms.get_forces(), before)


def test_skin_reuse_gives_the_same_forces_along_a_trajectory(small_model):
    atoms = structure_zoo()["triclinic"]
    fresh = load_calculator(small_model, dtype="float64")
    reusing = load_calculator(small_model, dtype="float64", skin=0.6)
    rng = np.random.default_rng(0)
    for _ in range(8):
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = fresh, reusing
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-10)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-10)
    assert reusing.neighbor_list.builds < fresh.neighbor_list.builds


def test_stress_needs_a_periodic_cell(small_model):
    atoms = molecule("CH4")
    atoms.calc = load_calculator(small_model)
    with pytest.raises(PropertyNotImplementedError, match="3-D periodic"):
        atoms.get_stress()


def test_unknown_element_reaches_the_user(small_model):
    atoms = molecule("SiH4")
    atoms.calc = load_calculator(small_model)
    with pytest.raises(StructureError, match="Si"):
        atoms.get_potential_energy()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, "device must be"),
        ({"device": "cuda:17"}, "cuda"),
        ({"dtype": "float16"}, "dtype must be one of"),
    ],
)
def test_setup_errors(small_model, kwargs, message):
    if kwargs.get("device", "").startswith("cuda") and torch.cuda.device_count() > 17:
        pytest.skip("this machine has a cuda:17")
    with pytest.raises(CalculatorSetupError, match=message):
        load_calculator(small_model, **kwargs)


def test_module_without_cutoff_is_refused():
    with pytest.raises(CalculatorSetupError, match="lacks"):
        load_calculator(torch.nn.Linear(3, 1))


def test_interface_check_names_the_tensor():
    inputs = AtomicInputs(
        positions=torch.zeros(2, 3),
        species=torch.ones(2, dtype=torch.int64),
        pair_index=torch.tensor([[0, 1], [1, 0]]),
        pair_shifts=torch.zeros(2, 3),
        structure_index=torch.zeros(2, dtype=torch.int64),
        cell=torch.zeros(1, 3, 3),
    )
    inputs.check()
    inputs.pair_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(InterfaceError, match="pair_index"):
        inputs.check()
    inputs.pair_index = torch.tensor([[0, 1], [1, 0]])
    inputs.positions = torch.full((2, 3), float("nan"))
    with pytest.raises(InterfaceError, match="positions.*NaN"):
        inputs.check()


def test_predict_equals_one_by_one(small_model):
    structures = list(structure_zoo().values())
    calc = load_calculator(small_model, dtype="float64")
    batched = calc.predict(structures)
    for atoms, result in zip(structures, batched):
        atoms = atoms.copy()
        atoms.calc = calc
        assert result["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), atol=1e-10)
        if atoms.pbc.all():
            np.testing.assert_allclose(result["stress"], atoms.get_stress(), atol=1e-10)
        else:
            assert "stress" not in result


def test_predict_names_the_bad_structure(small_model):
    calc = load_calculator(small_model)
    with pytest.raises(StructureError, match="structure 1: element"):
        calc.predict([molecule("CH4"), molecule("SiH4")])


def test_one_calculator_per_thread_gives_the_same_numbers(small_model):
    from concurrent.futures import ThreadPoolExecutor

    structures = list(structure_zoo().values())
    expected = load_calculator(small_model, dtype="float64").predict(structures)

    def evaluate_all(_):
        calc = load_calculator(small_model, dtype="float64")
        results = []
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calc
            results.append(atoms.get_forces())
        return results

    with ThreadPoolExecutor(max_workers=4) as pool:
        for forces_per_thread in pool.map(evaluate_all, range(4)):
            for forces, want in zip(forces_per_thread, expected):
                np.testing.assert_allclose(forces, want["forces"], atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "magic"}, "backend must be one of"),
        ({"backend": "onnxruntime"}, "export first"),
        ({"backend": "compile", "dtype": "float64"}, "runs float32"),
    ],
)
def test_backend_choice_errors(small_model, kwargs, message):
    with pytest.raises(CalculatorSetupError, match=message):
        load_calculator(small_model, **kwargs)


def test_compile_backend_matches_eager(small_model):
    """torch.compile of the traced joint graph (padded to a shape bucket) gives eager's numbers."""
    structures = [structure_zoo()[name] for name in ("benzene", "triclinic")]
    eager = load_calculator(small_model).predict(structures)
    compiled_calc = load_calculator(small_model, backend="compile")
    assert compiled_calc.backend.name == "compile"
    compiled = compiled_calc.predict(structures)
    for want, have in zip(eager, compiled):
        assert have["energy"] == pytest.approx(want["energy"], abs=1e-4)
        np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-4)


class LimitedEagerBackendForTests(EagerBackend):
    """A fake engine limit for testing the calculator's splitting: eager, but refuses > 20 atoms."""

    calls: list[int]

    def evaluate(self, inputs):
        self.calls.append(inputs.num_atoms)
        if inputs.num_atoms > 20:
            raise ShapeOutOfRangeError(f"call with {inputs.num_atoms} atoms fits no profile (max 20)")
        return super().evaluate(inputs)


def test_predict_splits_a_batch_larger_than_the_engine(small_model):
    from mlff_export.runtime.calculator import MLFFCalculator

    structures = [structure_zoo()[name] for name in ("benzene", "CH4", "H2O", "benzene")]
    backend = LimitedEagerBackendForTests(small_model, torch.device("cpu"), torch.float64)
    backend.calls = []
    calc = MLFFCalculator(backend, cutoff=small_model.cutoff, species=small_model.species)
    expected = load_calculator(small_model, dtype="float64").predict(structures)
    for want, have in zip(expected, calc.predict(structures)):
        np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-10)
    assert backend.calls[0] == 32 and max(backend.calls[1:]) <= 20
    with pytest.raises(ShapeOutOfRangeError, match="fits no profile"):
        calc.predict([structure_zoo()["triclinic"].repeat((2, 2, 2))])  # 32 atoms in one structure


def test_raw_inputs_are_checked_before_the_model_runs(small_model):
    from mlff_export.forces import energy_forces_virial

    inputs = AtomicInputs(
        positions=torch.zeros(2, 3, dtype=torch.float64),
        species=torch.ones(2, dtype=torch.int64),
        pair_index=torch.tensor([[0, 1], [1, 5]]),
        pair_shifts=torch.zeros(2, 3, dtype=torch.float64),
        structure_index=torch.zeros(2, dtype=torch.int64),
        cell=torch.zeros(1, 3, 3, dtype=torch.float64),
    )
    with pytest.raises(InterfaceError, match="pair_index"):
        energy_forces_virial(small_model.double(), inputs)


def test_domain_decomposition_gives_whole_structure_results():
    """A periodic water box evaluated in slab domains (halo = receptive_hops pair hops) gives the
    whole-structure energy, forces and virial: what lets structures larger than the GPU run. A
    halo one hop short gives wrong forces, so the comparison can tell."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.neighbors import batch_inputs, compute_pairs
    from mlff_export.runtime.domains import evaluate_in_domains
    from mlff_export.runtime.eager import EagerBackend

    model = make_small_painn()
    atoms = water_box(1000)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)], dtype=torch.float64)
    backend = EagerBackend(model, torch.device("cpu"), torch.float64)
    whole = backend.evaluate(inputs)
    budget = int(0.7 * inputs.num_pairs)  # a 21.7 Å box with 2 x 4 Å halos: 32 slab domains
    split = EagerBackend(model, torch.device("cpu"), torch.float64, max_pairs=budget).evaluate(inputs)
    assert split["energy"].item() == pytest.approx(whole["energy"].item(), abs=1e-8)
    np.testing.assert_allclose(split["forces"].numpy(), whole["forces"].numpy(), atol=1e-9)
    np.testing.assert_allclose(split["virial"].numpy(), whole["virial"].numpy(), atol=1e-8)
    short_halo = evaluate_in_domains(backend.evaluate_weighted, inputs, model.receptive_hops - 1, budget)
    assert np.abs(short_halo["forces"].numpy() - whole["forces"].numpy()).max() > 1e-4


@pytest.mark.parametrize(
    ("num_domains", "widths", "halo", "expected"),
    [
        (8, (21.7, 21.7, 21.7), 8.0, (8, 1, 1)),  # the halo spans most of the box: slabs
        (8, (100.0, 100.0, 100.0), 10.0, (4, 2, 1)),  # 100k-atom water: 45 x 70 x 100 Å beats cubes of 70 Å
        (64, (215.0, 215.0, 215.0), 10.0, (4, 4, 4)),  # a 1M-atom water box: slabs would be all halo
        (4, (200.0, 50.0, 50.0), 10.0, (4, 1, 1)),  # a long box: across its length
        (1, (30.0, 30.0, 30.0), 5.0, (1, 1, 1)),
        (6, (100.0, 100.0, 100.0), 10.0, (6, 1, 1)),  # any count, not only powers of two: 37 x 100 x 100 Å
        (12, (215.0, 215.0, 215.0), 10.0, (4, 3, 1)),  # 74 x 92 x 215 Å beats 2 x 2 x 3 and 12 slabs; ties: the first axes split most
        (27, (215.0, 215.0, 215.0), 10.0, (3, 3, 3)),
    ],
)
def test_domain_grids_carry_the_least_halo(num_domains, widths, halo, expected):
    from mlff_export.runtime.domains import _grid_shape

    assert _grid_shape(num_domains, torch.tensor(widths), halo) == expected


def test_cube_domains_give_whole_structure_results():
    """A box several halos wide splits into a 3-D grid of cores (not slabs) and still gives the
    whole-structure numbers."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.neighbors import batch_inputs, compute_pairs
    from mlff_export.runtime.domains import _grid_coordinates, _grid_shape, evaluate_in_domains
    from mlff_export.runtime.eager import EagerBackend

    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=16, num_interactions=1, num_radial=4, cutoff=2.5)).double().eval()
    atoms = water_box(2700)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)], dtype=torch.float64)
    backend = EagerBackend(model, torch.device("cpu"), torch.float64)
    whole = backend.evaluate(inputs)
    split = evaluate_in_domains(backend.evaluate_weighted, inputs, model.receptive_hops, int(0.1 * inputs.num_pairs))
    assert min(_grid_shape(64, _grid_coordinates(inputs)[1], 2.5)) > 1, "cores are cubes here, not slabs"
    assert split["energy"].item() == pytest.approx(whole["energy"].item(), abs=1e-8)
    np.testing.assert_allclose(split["forces"].numpy(), whole["forces"].numpy(), atol=1e-9)
    np.testing.assert_allclose(split["virial"].numpy(), whole["virial"].numpy(), atol=1e-8)


def test_joint_graph_domains_give_whole_structure_results():
    """The joint-graph backends' domain path (a weighted trace of the graph, padded per domain)
    gives the whole-structure numbers."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.neighbors import batch_inputs, compute_pairs
    from mlff_export.runtime.joint_graph import JointGraphBackend

    model = make_small_painn()
    atoms = water_box(1000)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    backend = JointGraphBackend(model, torch.device("cpu"))
    whole = backend.evaluate(inputs)
    backend.domains.max_pairs = int(0.7 * inputs.num_pairs)
    split = backend.evaluate(inputs)
    assert backend._weighted_call is not None, "the domain path ran"
    assert split["energy"].item() == pytest.approx(whole["energy"].item(), rel=1e-6)
    np.testing.assert_allclose(split["forces"].numpy(), whole["forces"].numpy(), atol=1e-5)
    np.testing.assert_allclose(split["virial"].numpy(), whole["virial"].numpy(), atol=1e-3)


def test_domains_refuse_a_budget_below_one_neighborhood(small_model):
    from mlff_export.neighbors import batch_inputs, compute_pairs
    from mlff_export.runtime.eager import EagerBackend

    atoms = structure_zoo()["diamond-primitive"]
    inputs = batch_inputs([atoms], [compute_pairs(atoms, small_model.cutoff)])
    with pytest.raises(ValueError, match="max_pairs"):
        EagerBackend(small_model, torch.device("cpu"), torch.float32, max_pairs=10).evaluate(inputs)


def test_a_traced_numel_compiles_as_the_method():
    """A model's ``x.numel()`` traced with symbolic sizes is ``aten.sym_numel``, which Dynamo
    refuses in a full graph (MACE's graphs have them); the compile backend makes it the method."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from mlff_export.runtime.joint_graph import with_numel_as_method

    graph = make_fx(lambda x: x * x.numel(), tracing_mode="symbolic")(torch.ones(3, 2))
    assert any(node.target is torch.ops.aten.sym_numel.default for node in graph.graph.nodes)
    compiled = torch.compile(with_numel_as_method(graph), fullgraph=True, dynamic=False, backend="eager")
    assert torch.equal(compiled(torch.ones(4, 2)), torch.full((4, 2), 8.0))


@pytest.mark.parametrize(
    "bad",
    [[np.nan], [np.inf], [-np.inf], [np.inf, -np.inf]],  # the last sums to NaN, not inf
    ids=["nan", "inf", "minus-inf", "inf-and-minus-inf"],
)
def test_all_finite_sees_any_non_finite_entry(bad):
    forces = np.ones((5, 3))
    forces.flat[: len(bad)] = bad
    assert not all_finite([np.zeros(1), forces, np.zeros((1, 3, 3))])
    assert all_finite([np.zeros(1), np.ones((5, 3)), np.zeros((1, 3, 3))])


def test_finite_results_whose_sum_overflows_are_returned():
    """all_finite's sum overflows for huge finite numbers; the calculator then looks closer and
    returns them (refusing them would be another check's job), without a NonFiniteResultError."""
    huge = np.full((2, 3), 1e308)
    assert not all_finite([huge])
    calc = load_calculator(make_small_painn())
    atoms = molecule("H2")
    outputs = {"energy": np.array([1e308]), "forces": huge, "virial": np.zeros((1, 3, 3))}
    (result,) = calc._results([atoms], outputs, [None])
    assert result["energy"] == 1e308 and np.array_equal(result["forces"], huge)


def test_the_calculator_recomputes_after_any_change_of_what_the_model_sees():
    """``check_state`` names exactly what changed (a 1e-12 Å move, an element, the cell, the
    periodicity) and nothing for an equal copy; a moved atom gets new forces, not cached ones."""
    atoms = structure_zoo()["triclinic"]
    calc = load_calculator()
    atoms.calc = calc
    forces = atoms.get_forces()
    assert calc.check_state(atoms.copy()) == []
    changes = {
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-12),
        "numbers": lambda a: a.numbers.__setitem__(0, 8 if a.numbers[0] != 8 else 6),
        "cell": lambda a: a.set_cell(a.cell.array * (1 + 1e-12)),
        "pbc": lambda a: a.set_pbc([True, True, False]),
    }
    for name, change in changes.items():
        changed = atoms.copy()
        change(changed)
        assert calc.check_state(changed) == [name], name
    atoms.positions[0, 0] += 0.01
    moved = atoms.get_forces()
    assert not np.allclose(moved, forces, atol=1e-6), "new geometry, new forces"
    np.testing.assert_allclose(moved, load_calculator().get_forces(atoms), atol=1e-6)
