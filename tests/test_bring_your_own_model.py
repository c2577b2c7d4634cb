"""Bring your own model: users' MLFFs written the ordinary way export to scatter-free ONNX graphs.

The distilled student of ``byom_models.py`` runs in the default selection. The three third-party
architectures from PyPI (MACE from mace-torch, HIP-NN-TS from hippynn, TensorNet from graph-pes,
behind the adapters in ``examples/byom/``) are marked ``third_party``: `.ci/run` installs their
packages and runs them after the README's test command (`pytest -m third_party`).

For each model: export through the CLI (``mlff-export export --model FILE.py:FACTORY``; the
Python ``to_onnx`` route is exercised by the FP16, ``.pt2`` and fallback tests); no scatter with a
reduction in the graph, as the CLI reports; ONNX Runtime with 1 and 4 intra-op threads against the
module's own eager output, within the export tolerances; forces against finite differences of the
exported energy; the virial against the strain derivative; ``mlff-export validate --reference``
the model passes, and fails for the same model with one weight scaled by 1.01.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from byom_models import (
    DistilledStudent,
    FixesAtomCount,
    LeaksBeyondTheCutoff,
    ReadsStructureCount,
    SearchesNeighbors,
    make_species_channel_student,
    make_student,
)
from conftest import compiled_versions, make_small_painn, rattled, structure_zoo

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mlff_export.cli import main  # noqa: E402
from mlff_export.export import ExportError, ScatterGraphWarning, read_metadata, to_onnx  # noqa: E402
from mlff_export.export.energy_program import save_energy_program  # noqa: E402
from mlff_export.export.onnx_export import scatters_with_reduction  # noqa: E402
from mlff_export.export.ordinary_code import tracing_ordinary_code  # noqa: E402
from mlff_export.model_intake import ModelIntakeError, load_model  # noqa: E402
from mlff_export.runtime import load_calculator  # noqa: E402
from mlff_export.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from mlff_export.runtime.parity import compare_with_eager  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "byom"
STUDENT = f"{Path(__file__).resolve().parent / 'byom_models.py'}:make_student"
THIRD_PARTY = {  # adapter file -> the PyPI package it needs
    "mace_model.py": "mace",
    "hippynn_hipnn.py": "hippynn",
    "graph_pes_tensornet.py": "graph_pes",
}
ZOO = structure_zoo()
PARITY_SET = [ZOO["H2O"], ZOO["benzene"], ZOO["diamond-primitive"], ZOO["triclinic"], ZOO["mixed-pbc-slab"]]


def model_spec(name: str) -> str:
    """The ``--model`` of a model of :data:`MODELS` (skips where its package is not installed)."""
    if name == "student":
        return STUDENT
    if importlib.util.find_spec(THIRD_PARTY[name]) is None:
        pytest.skip(f"{THIRD_PARTY[name]} is not installed (pip install -e '.[byom-examples]')")
    return f"{EXAMPLES / name}:make_model"


MODELS = [pytest.param("student", id="student")] + [
    pytest.param(adapter, id=adapter.removesuffix(".py"), marks=pytest.mark.third_party) for adapter in THIRD_PARTY
]
# The finite-difference tests of exported graphs also hold the bundled PaiNN (pair-vector route) to them.
PHYSICS_MODELS = [pytest.param("painn", id="painn"), *MODELS]


@dataclass
class Exported:
    model: torch.nn.Module
    path: Path
    spec: str
    printed: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model name -> :class:`Exported`, each exported once, by ``mlff-export export --model``."""
    cache = {}

    def get(name: str) -> Exported:
        if name not in cache:
            if name == "painn":  # the bundled architecture, exported from Python
                model = make_small_painn()
                path = to_onnx(model, tmp_path_factory.mktemp("byom") / "painn.fp32.onnx")
                cache[name] = Exported(model, path, "", "")
                return cache[name]
            spec, out = model_spec(name), tmp_path_factory.mktemp("byom")
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = main(["export", "--model", spec, "--precision", "fp32", "--out", str(out)])
            assert code == 0, printed.getvalue()
            stem = Path(spec.rpartition(":")[0]).stem
            cache[name] = Exported(load_model(spec).module, out / f"{stem}.fp32.onnx", spec, printed.getvalue())
        return cache[name]

    return get


def assert_parity(backend, model, structures, precision):
    for name, deviation in compare_with_eager(backend, model, structures, precision).items():
        assert deviation.passed, f"{precision} {name}: |difference| {deviation.difference:.3g} > {deviation.allowed:.3g}"


@pytest.mark.parametrize("name", MODELS)
def test_export_is_scatter_free_on_the_neighbor_table(exported, name):
    path = exported(name).path
    assert scatters_with_reduction(onnx.load(str(path))) == []
    assert read_metadata(path).input_layout == "neighbor_table"
    assert "layout neighbor_table, 0 scatters with a reduction" in exported(name).printed
    assert read_metadata(path).model_source.startswith(f"factory {exported(name).spec}")


@pytest.mark.parametrize("name", MODELS)
def test_validate_passes_against_the_model_and_fails_with_one_weight_off_by_one_percent(exported, name, tmp_path, capsys):
    model, path, spec = exported(name).model, exported(name).path, exported(name).spec
    assert main(["validate", str(path), "--reference", spec, "--nve-steps", "0"]) == 0, capsys.readouterr().out
    capsys.readouterr()
    state = model.state_dict()
    weight = next(key for key, parameter in model.named_parameters() if parameter.numel() > 1)
    state[weight] = state[weight] * 1.01
    torch.save(state, tmp_path / "scaled.pt")
    code = main(["validate", str(path), "--reference", spec, "--weights", str(tmp_path / "scaled.pt"), "--nve-steps", "0"])
    printed = capsys.readouterr().out
    assert code == 1 and printed.rstrip().endswith("FAILED")
    assert "weights match the reference" in printed, printed


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_matches_the_modules_own_eager_output(exported, name, threads):
    model, path = exported(name).model, exported(name).path
    backend = OnnxRuntimeBackend(path, intra_op_threads=threads)
    assert_parity(backend, model, PARITY_SET, "fp32")  # one batched call of molecules and cells
    assert_parity(backend, model, [ZOO["CH4"]], "fp32")  # one structure
    assert_parity(backend, model, [Atoms("C", positions=[[0.0, 0.0, 0.0]])], "fp32")  # no pairs at all


def hydrogen_only(atoms: Atoms) -> Atoms:
    """``atoms`` with every atom hydrogen: totals of tens of eV, whose float32 spacing (~4e-6 eV)
    lets finite differences of the exported float32 energy resolve forces and stress."""
    atoms = atoms.copy()
    atoms.numbers[:] = 1
    return atoms


@pytest.mark.parametrize("name", PHYSICS_MODELS)
def test_exported_forces_are_minus_the_gradient_of_the_exported_energy(exported, name):
    path = exported(name).path
    atoms = hydrogen_only(rattled(molecule("CH4"), stdev=0.1, seed=4))
    atoms.calc = load_calculator(path)
    forces = atoms.get_forces()
    step = 1e-2  # float32 energies: a large step, central differences (error ~ step^2)
    numeric = np.zeros_like(forces)
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[atom, axis] += sign * step
                displaced.calc = atoms.calc
                energies.append(displaced.get_potential_energy())
            numeric[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
    np.testing.assert_allclose(forces, numeric, atol=1e-3 + 1e-2 * np.abs(forces).max())


@pytest.mark.parametrize("name", PHYSICS_MODELS)
def test_exported_stress_is_the_strain_derivative_of_the_exported_energy(exported, name):
    """The virial of the strain route (every user model takes it; the PaiNN's pair-vector route)
    against energies of strained cells."""
    path = exported(name).path
    atoms = hydrogen_only(ZOO["triclinic"])
    atoms.calc = load_calculator(path)
    stress = atoms.get_stress(voigt=False)
    step, volume = 1e-3, atoms.get_volume()
    for i, j in [(0, 0), (1, 2), (2, 1), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * step
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            strained.calc = atoms.calc
            energies.append(strained.get_potential_energy())
        numeric = (energies[0] - energies[1]) / (2 * step) / volume
        assert abs(numeric - 0.5 * (stress[i, j] + stress[j, i])) < 1e-4 + 1e-2 * np.abs(stress).max(), (i, j)


def test_fp16_export_keeps_the_fp16_tolerances(tmp_path):
    model = make_student()
    path = to_onnx(model, tmp_path / "student.fp16.onnx", precision="fp16")
    proto = onnx.load(str(path))
    assert scatters_with_reduction(proto) == []
    assert any(node.op_type in ("MatMul", "Gemm") for node in proto.graph.node)
    half = {initializer.name for initializer in proto.graph.initializer if initializer.data_type == onnx.TensorProto.FLOAT16}
    assert half, "the weights of the matrix products are float16"
    assert_parity(OnnxRuntimeBackend(path), model, PARITY_SET, "fp16")


def test_a_torch_export_program_exports_like_its_module(tmp_path):
    model = make_student(seed=2)
    program = save_energy_program(model, tmp_path / "student.pt2")
    loaded = load_model(program)
    assert loaded.source.startswith("torch.export program student.pt2")
    path = to_onnx(loaded.module, tmp_path / "student.fp32.onnx")
    assert scatters_with_reduction(onnx.load(str(path))) == []
    assert_parity(OnnxRuntimeBackend(path), model, PARITY_SET, "fp32")


def test_scripted_helpers_run_as_python_while_traced():
    """``scatter_sum`` is a ScriptFunction; traced as one, ``dim_size: int`` would fix the atom count."""
    import byom_models

    scripted = byom_models.scatter_sum
    assert isinstance(scripted, torch.jit.ScriptFunction)
    with tracing_ordinary_code(make_student()):
        assert not isinstance(byom_models.scatter_sum, torch.jit.ScriptFunction)
        assert torch.compiler.is_compiling()
    assert byom_models.scatter_sum is scripted and not torch.compiler.is_compiling()


def test_a_scalar_the_model_makes_in_forward_goes_where_its_graph_runs():
    """The student's ``torch.tensor(0.0)`` is a CPU constant of its traced graph; eager copies it
    to the GPU at each use, which a CUDA graph capture refuses (graph-pes' TensorNet does the same).
    The graph's scalars move to its device once ("meta" stands in for CUDA here); weights stay."""
    from mlff_export.export.joint_graph import scalar_constants_on, trace_joint_graph

    graph, _ = trace_joint_graph(make_student())
    scalars = [node.target for node in graph.graph.nodes if node.op == "get_attr" and getattr(graph, node.target).dim() == 0]
    assert scalars, "the student's graph has no scalar constant: this test would prove nothing"
    weights = dict(graph.named_parameters())
    scalar_constants_on(graph, torch.device("meta"))
    assert all(getattr(graph, name).device.type == "meta" for name in scalars)
    assert all(value.device.type == "cpu" for value in graph.parameters()) and dict(graph.named_parameters()).keys() == weights.keys()


def test_a_sum_the_rewrite_cannot_prove_keeps_the_pair_list_and_says_why(tmp_path):
    model = make_species_channel_student()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        path = to_onnx(model, tmp_path / "channels.fp32.onnx")
    messages = [str(w.message) for w in recorded if issubclass(w.category, ScatterGraphWarning)]
    assert len(messages) == 1
    assert "byom_models.py" in messages[0] and "index_add(0, channel, radial)" in messages[0], messages[0]
    assert read_metadata(path).input_layout == "pair_list"
    backend = OnnxRuntimeBackend(path, intra_op_threads=4)
    assert backend.session.get_session_options().intra_op_num_threads == 1  # ScatterND(add) races otherwise
    assert_parity(backend, model, PARITY_SET, "fp32")


@pytest.mark.slow
def test_a_users_model_keeps_its_eager_numbers_in_both_graphs_of_compile_max_autotune():
    """compile-max-autotune's autotuned static graph (the first bucket) and default symbolic one
    (every other bucket) are made from any traced joint graph, not only our PaiNN's: the student
    (index_add message passing) gives its eager numbers through each."""
    model = make_student(seed=3)
    backend = load_calculator(model, backend="compile-max-autotune", compile_cache=False).backend
    assert_parity(backend, model, [ZOO["H2O"]], "fp32")
    assert_parity(backend, model, PARITY_SET, "fp32")
    assert len(compiled_versions(backend.call.tuned)) == 1 and len(compiled_versions(backend.call.general)) == 1


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (ReadsStructureCount(), r"reads tensor data into Python at .*byom_models\.py:\d+ .*int\(structure_index\[-1\]\)"),
        (FixesAtomCount(), r"num_atoms axis .* became the constant 16 .*byom_models\.py:\d+"),
        (SearchesNeighbors(), "does it search for neighbors itself"),
        (LeaksBeyondTheCutoff(), r"pairs beyond its cutoff \(4\.5 Å\) change the energy"),
    ],
    ids=["data-dependent-read", "size-made-constant", "neighbor-search-inside", "pairs-beyond-the-cutoff-count"],
)
def test_model_code_that_cannot_be_exported_is_named_at_its_line(tmp_path, model, message):
    with pytest.raises(ExportError, match=message):
        to_onnx(model, tmp_path / "out" / "model.onnx")
    assert not (tmp_path / "out").exists()


def test_loaded_factory_records_where_it_came_from_and_its_weights(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "student.safetensors"
    trained = make_student(seed=5)
    save_file(trained.state_dict(), str(weights))
    loaded = load_model("byom_models:make_student", weights=weights, model_kwargs={"layers": 3})
    assert loaded.source.startswith('factory byom_models:make_student {"layers": 3}; weights student.safetensors sha256 ')
    inputs = [molecule("H2O")]
    assert_parity(load_calculator(loaded.module).backend, trained, inputs, "fp32")


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("no_such_package.models:make", {}, r"cannot import module 'no_such_package\.models'"),
        ("byom_models:make_nothing", {}, r"has no callable 'make_nothing'"),
        ("byom_models:make_not_a_module", {}, r"returned str, expected a torch\.nn\.Module"),
        ("byom_models:make_student", {"model_kwargs": {"colour": 1}}, r"make_student\(\*\*\{'colour': 1\}\) failed"),
        ("model.onnx", {}, "does not exist"),
    ],
    ids=["unimportable", "no-factory", "not-a-module", "bad-kwargs", "missing-file"],
)
def test_model_specifications_that_cannot_work_are_one_clear_error(spec, options, message):
    with pytest.raises(ModelIntakeError, match=message):
        load_model(spec, **options)


def test_weights_that_do_not_fit_name_the_first_tensor(tmp_path):
    state = make_student().state_dict()
    state["readout.2.weight"] = torch.zeros(2, 24)
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ModelIntakeError, match=r"'readout\.2\.weight' has shape \(2, 24\) in the file, \(1, 24\) in the model"):
        load_model("byom_models:make_student", weights=path)


def test_a_pickled_object_in_a_weights_file_is_not_loaded(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"embedding.weight": Atoms("H")}, path)  # any non-tensor object needs unpickling code
    with pytest.raises(ModelIntakeError, match="not a readable state dict"):
        load_model("byom_models:make_student", weights=path)


def test_a_program_with_another_signature_lists_the_six_inputs(tmp_path):
    class TwoInputs(torch.nn.Module):
        def forward(self, positions, species):
            return positions.sum().unsqueeze(0)

    program = torch.export.export(TwoInputs(), (torch.ones(3, 3), torch.ones(3, dtype=torch.int64)))
    path = tmp_path / "two.pt2"
    torch.export.save(program, str(path), extra_files={"mlff-interface.json": '{"cutoff": 5.0, "species": [1]}'})
    with pytest.raises(ModelIntakeError, match=r"takes 2 inputs .*\(positions, species, pair_index, pair_shifts, structure_index, cell"):
        load_model(path)


def test_a_program_without_cutoff_and_species_says_how_to_give_them(tmp_path):
    program = torch.export.export(DistilledStudent(), _example())
    path = tmp_path / "bare.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(ModelIntakeError, match="does not say its cutoff and species"):
        load_model(path)
    assert load_model(path, model_kwargs={"cutoff": 4.5, "species": [1, 6, 7, 8]}).module.cutoff == 4.5


def _example():
    from mlff_export.export.graph_layouts import example_inputs

    return example_inputs((1, 6, 7, 8)).as_tuple()


def test_calculator_runs_a_user_model_from_its_specification():
    atoms = bulk("C", "diamond", a=3.57)
    atoms.calc = load_calculator("byom_models:make_student")
    reference = atoms.copy()
    reference.calc = load_calculator(make_student())
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)


class StudentWithSettings(DistilledStudent):
    """A student that keeps settings as a module's extra state (plain data, as hippynn and graph-pes do)."""

    def get_extra_state(self):
        return {"units": "eV", "layers": 2}

    def set_extra_state(self, state):
        self.loaded_settings = state


def test_weights_with_a_modules_extra_state_load_and_a_non_tensor_weight_is_named(tmp_path):
    from mlff_export.model_intake import load_weights

    state = StudentWithSettings().state_dict()
    torch.save(state, tmp_path / "with_settings.pt")
    model = StudentWithSettings()
    load_weights(model, tmp_path / "with_settings.pt")
    assert model.loaded_settings == {"units": "eV", "layers": 2}
    state["readout.2.weight"] = {"not": "a tensor"}
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ModelIntakeError, match="expected a mapping of parameter names to tensors"):
        load_weights(StudentWithSettings(), tmp_path / "broken.pt")
