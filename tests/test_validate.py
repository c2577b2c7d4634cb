"""mlff-export validate: a correct export passes; broken artifacts fail, naming what broke.

Each check has an adversarial artifact: the exported graph, edited to be wrong in exactly the way
that check exists to catch and right otherwise (the graph hash re-recorded, as an exporter bug
would leave it), and the test asserts that this check and only it fails.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ase.build import molecule
from ase.io import write
from conftest import make_small_painn
from onnx import TensorProto, helper, numpy_helper

from mlff_export.export import ArtifactMetadataError
from mlff_export.checkpoint import save_checkpoint
from mlff_export.cli import main
from mlff_export.validation.comparison import OutputValues, compare_output
from mlff_export.validation.provenance import check_provenance
from mlff_export.validation.tolerances import OVERRIDABLE, OutputTolerance, default_tolerances
from mlff_export.validation.validate import validate_artifact

FAST = {"nve_steps": 0, "compare_runtimes": False}


@pytest.fixture(scope="module")
def model():
    """The small PaiNN with a larger energy scale: forces of ~1 eV/Å, like a trained model's, so
    that sign and weight errors stand well above float32 noise."""
    painn = make_small_painn(seed=5)
    painn.energy_scale.fill_(10.0)
    return painn


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    from mlff_export.export import to_onnx

    return to_onnx(model, tmp_path_factory.mktemp("validate") / "small.fp32.onnx")


def edited_graph(source, destination, edit):
    """Apply ``edit(model_proto)`` and re-record the graph hash and the seal, as an exporter bug
    would produce: the integrity check passes and only the numerical checks can catch it."""
    from mlff_export.export.metadata import INTEGRITY_KEY, graph_sha256, sealed_model_bytes

    model_proto = onnx.load(str(source))
    edit(model_proto)
    props = {prop.key: prop.value for prop in model_proto.metadata_props if prop.key != INTEGRITY_KEY}
    props["model_sha256"] = graph_sha256(model_proto)
    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, props)
    destination.write_bytes(sealed_model_bytes(model_proto))
    return destination


def scale_largest_weight(model_proto, factor: float = 1.01) -> None:
    initializer = max(model_proto.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    weight = numpy_helper.to_array(initializer)
    initializer.CopyFrom(numpy_helper.from_array((weight * factor).astype(weight.dtype), initializer.name))


def rewire_output(model_proto, output: str, nodes: list, constants: dict[str, np.ndarray] | None = None) -> None:
    """Let graph output ``output`` be computed by ``nodes`` from ``"<output>_as_exported"`` (its
    exported value) and the graph inputs; ``constants`` become initializers."""
    graph = model_proto.graph
    for node in graph.node:
        node.output[:] = [f"{output}_as_exported" if name == output else name for name in node.output]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in (constants or {}).items())


def negate_forces(model_proto) -> None:
    rewire_output(model_proto, "forces", [helper.make_node("Neg", ["forces_as_exported"], ["forces"])])


def offset(output: str, value) -> callable:
    """An edit adding ``value`` (broadcast) to ``output``."""

    def edit(model_proto) -> None:
        constants = {f"{output}_offset": np.asarray(value, dtype=np.float32)}
        rewire_output(model_proto, output, [helper.make_node("Add", [f"{output}_as_exported", f"{output}_offset"], [output])], constants)

    return edit


def energy_off_when_alone(model_proto) -> None:
    """+0.01 eV on the energy when the call holds a single structure (B = 1): right in a batch."""
    nodes = [
        helper.make_node("Shape", ["cell"], ["cell_shape"]),
        helper.make_node("Gather", ["cell_shape", "zero"], ["num_structures"]),
        helper.make_node("Equal", ["num_structures", "one"], ["alone"]),
        helper.make_node("Cast", ["alone"], ["alone_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["alone_float", "alone_offset"], ["energy_shift"]),
        helper.make_node("Add", ["energy_as_exported", "energy_shift"], ["energy"]),
    ]
    constants = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "alone_offset": np.array(0.01, np.float32)}
    rewire_output(model_proto, "energy", nodes, constants)


def energy_with_a_field_the_forces_lack(model_proto) -> None:
    """``E_b += g · sum_{i in b} x_i`` (g = 1 eV/Å per axis) with forces left as they are: forces
    that are not minus the gradient of the energy. The term vanishes for a structure centred on
    the origin, so there energy and forces still equal the reference's."""
    nodes = [
        helper.make_node("MatMul", ["positions", "field"], ["field_energy_per_atom"]),
        helper.make_node("Shape", ["cell"], ["cell_shape"]),
        helper.make_node("Gather", ["cell_shape", "zero"], ["num_structures"]),
        helper.make_node("Range", ["zero", "num_structures", "one"], ["structures"]),
        helper.make_node("Unsqueeze", ["structures", "axis_one"], ["structure_column"]),
        helper.make_node("Unsqueeze", ["structure_index", "axis_zero"], ["structure_row"]),
        helper.make_node("Equal", ["structure_column", "structure_row"], ["membership"]),
        helper.make_node("Cast", ["membership"], ["membership_float"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["membership_float", "field_energy_per_atom"], ["field_energy"]),
        helper.make_node("Add", ["energy_as_exported", "field_energy"], ["energy"]),
    ]
    constants = {
        "field": np.ones(3, np.float32),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "axis_zero": np.array([0], np.int64),
        "axis_one": np.array([1], np.int64),
    }
    rewire_output(model_proto, "energy", nodes, constants)


def molecule_virial_through_a_miscomputed_fusion(model_proto) -> None:
    """Virials of non-periodic structures (cell all zero) plus ``sum(X^T v)``, which is exactly 0
    (rows 0 and 1 of ``X`` are equal, ``v = a (1, -1, 0)``; ``X`` and ``v`` are scaled by ``a``
    from the inputs, so nothing folds them away), written as ``MatMul(Transpose(X), v)`` with a 1-D ``v``: ONNX Runtime's
    optimiser fuses that into a FusedMatMul that miscomputes it, so the optimised CPU session
    disagrees with the unoptimised one. A runtime bug where no other check looks (validate
    compares the stress of 3-D periodic cells only)."""
    nodes = [
        helper.make_node("Abs", ["cell"], ["cell_abs"]),
        helper.make_node("ReduceSum", ["cell_abs", "cell_axes"], ["cell_size"], keepdims=0),
        helper.make_node("Equal", ["cell_size", "zero_float"], ["no_cell"]),
        helper.make_node("Cast", ["no_cell"], ["no_cell_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["no_cell_float", "cell_axes"], ["molecule_mask"]),
        helper.make_node("ReduceSum", ["cell_abs"], ["cell_total"], keepdims=0),
        helper.make_node("Add", ["cell_total", "one_float"], ["scale"]),
        helper.make_node("Mul", ["scale", "difference"], ["vector"]),
        helper.make_node("Mul", ["scale", "equal_rows"], ["matrix"]),
        helper.make_node("Transpose", ["matrix"], ["matrix_transposed"], perm=[1, 0]),
        helper.make_node("MatMul", ["matrix_transposed", "vector"], ["zero_vector"]),
        helper.make_node("ReduceSum", ["zero_vector"], ["zero_scalar"], keepdims=0),
        helper.make_node("Mul", ["molecule_mask", "zero_scalar"], ["molecule_term"]),
        helper.make_node("Add", ["virial_as_exported", "molecule_term"], ["virial"]),
    ]
    constants = {
        "cell_axes": np.array([1, 2], np.int64),
        "zero_float": np.array(0.0, np.float32),
        "one_float": np.array(1.0, np.float32),
        "difference": np.array([1.0, -1.0, 0.0], np.float32),
        "equal_rows": np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], np.float32),
    }
    rewire_output(model_proto, "virial", nodes, constants)


def onnxruntime_miscomputes_the_fusion() -> bool:
    """Whether this ONNX Runtime's optimised CPU session still gets ``MatMul(Transpose(X), v)``
    with a 1-D ``v`` wrong (seen up to onnxruntime 1.32)."""
    import onnxruntime

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]), helper.make_node("MatMul", ["xt", "v"], ["y"])],
        "fusion",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]), helper.make_tensor_value_info("v", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "v": np.array([1.0, -2.0, 3.0], np.float32)}
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return not np.allclose(session.run(None, feeds)[0], feeds["x"].T @ feeds["v"])


def renamed_first_node(model_proto) -> None:
    model_proto.graph.node[0].name = "renamed_after_export"


def failed_checks(report) -> set[str]:
    """The checks of ``report`` that failed, one name each."""
    failed = {f"provenance: {check.name}" for check in report.provenance if not check.passed}
    failed |= {f"{c.label}: {c.output}" for c in report.comparisons if not c.passed}
    if not all(check.passed for check in report.finite_differences):
        failed.add("finite differences")
    if report.nve is not None and not report.nve.passed:
        failed.add("NVE")
    if report.runtimes is not None and not report.runtimes.passed:
        failed.add("runtimes")
    assert len(report.failures()) >= len(failed) and report.passed == (not failed)
    return failed


def test_correct_export_passes_with_report(exported, model, tmp_path, capsys):
    reference = save_checkpoint(model, tmp_path / "small.json")
    report_dir = tmp_path / "report"
    status = main(["validate", str(exported), "--reference", str(reference), "--report", str(report_dir), "--nve-steps", "20"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.strip().splitlines()[-1] == "PASSED"
    summary = json.loads((report_dir / "report.json").read_text())
    assert summary["passed"] and summary["failures"] == []
    assert summary["nve"] is not None and summary["runtimes"]["skipped"] is None
    assert "PASSED" in (report_dir / "report.md").read_text()
    assert (report_dir / "force_parity.png").stat().st_size > 10_000


def test_one_weight_off_by_one_percent_fails_naming_the_outputs(exported, model, tmp_path):
    perturbed = edited_graph(exported, tmp_path / "perturbed.onnx", scale_largest_weight)
    report = validate_artifact(perturbed, reference=model, **FAST)
    assert not report.passed
    failed = {(c.label, c.output) for c in report.comparisons if not c.passed}
    assert ("artifact vs reference", "forces") in failed
    assert all(check.passed for check in report.provenance)  # the hash was re-recorded
    assert any(line.startswith("artifact vs reference: forces") for line in report.failures())


def test_a_graph_edited_after_export_fails_integrity(exported, model, tmp_path):
    model_proto = onnx.load(str(exported))
    scale_largest_weight(model_proto)
    onnx.save(model_proto, str(tmp_path / "tampered.onnx"))
    (integrity,) = check_provenance(tmp_path / "tampered.onnx", model)
    assert integrity.name == "graph integrity" and not integrity.passed and "modified" in integrity.detail


def test_negated_forces_fail_the_finite_difference_check(exported, model, tmp_path):
    negated = edited_graph(exported, tmp_path / "negated.onnx", negate_forces)
    report = validate_artifact(negated, reference=model, **FAST)
    along_forces = [check for check in report.finite_differences if check.direction == "forces"]
    assert along_forces and not any(check.passed for check in along_forces)
    assert any(line.startswith("finite differences:") for line in report.failures())


def test_unknown_element_in_structure_file_is_one_clear_line(exported, model, tmp_path, capsys):
    reference = save_checkpoint(model, tmp_path / "small.json")
    structures = tmp_path / "with_silicon.extxyz"
    write(structures, [molecule("H2O"), molecule("SiH4")])
    status = main(["validate", str(exported), "--reference", str(reference), "--structures", str(structures)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert len(err.splitlines()) == 1
    assert "Si" in err and "1:H4Si" in err and "H, C, N, O" in err


def test_nan_outputs_fail_the_comparison():
    reference = OutputValues(np.ones((2, 3)), ["a", "a"], np.array([0, 1]))
    predicted = OutputValues(np.array([[1.0, 1.0, 1.0], [1.0, np.nan, 1.0]]), ["a", "a"], np.array([0, 1]))
    comparison = compare_output("nan", "forces", predicted, reference, OutputTolerance(atol=1.0))
    assert not comparison.passed and comparison.violations == 1


def test_tolerances_are_per_precision_and_overridable():
    fp32, fp16 = default_tolerances("fp32"), default_tolerances("fp16")
    assert fp16.outputs["forces"].atol > fp32.outputs["forces"].atol
    custom = fp32.overridden({"forces.atol": 0.5, "nve_drift_excess": 0.1})
    assert custom.outputs["forces"] == OutputTolerance(atol=0.5) and custom.nve_drift_excess == 0.1
    with pytest.raises(ValueError, match="unknown tolerance"):
        fp32.overridden({"force.atol": 1.0})
    with pytest.raises(ValueError, match="precision must be one of"):
        default_tolerances("int8")


def test_tolerance_overrides_accept_zero_and_refuse_negative_or_nan():
    fp32 = default_tolerances("fp32")
    assert fp32.overridden({"forces.atol": 0.0, "runtime_rtol": 0.0}).outputs["forces"].atol == 0.0
    for value in (-1e-9, -0.5, float("nan")):
        with pytest.raises(ValueError, match="must be >= 0"):
            fp32.overridden({"forces.atol": value})


def test_species_check_compares_for_equality(exported, model):
    """Fewer or more declared species both fail (an ordering of the tuples would pass one side)."""
    for species in ((1, 6, 7), (1, 6, 7, 8, 9), (1, 6, 8, 7)):
        checks = {check.name: check.passed for check in check_provenance(exported, reference_declaring(model, species=species))}
        assert checks["species and cutoff match"] is False, species


def centred_molecules(path: Path) -> Path:
    """Molecules (rattled) each centred on the origin: the field term of
    :func:`energy_with_a_field_the_forces_lack` is zero there."""
    structures = []
    for seed, name in enumerate(["H2O", "CH4", "NH3", "C6H6", "CH3OH"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=seed)
        atoms.positions -= atoms.positions.mean(axis=0)
        structures.append(atoms)
    write(path, structures)
    return path


# check -> (graph edit, validate options)
NVE_STEPS = 200  # 100 fs (validate's default): the energy a net force adds grows with the square of the time
ADVERSARIES = {
    "artifact vs reference: energy_per_atom": (offset("energy", 1e-3), {}),
    # 3e-4 eV/Å: three times the FP32 force tolerance (1e-4), so a tolerance loosened 100x lets it pass.
    "artifact vs reference: forces": (offset("forces", 3e-4), {}),
    "artifact vs reference: stress": (offset("virial", 0.01 * np.eye(3)), {}),
    "artifact batched vs one by one: energy_per_atom": (energy_off_when_alone, {}),
    "finite differences": (energy_with_a_field_the_forces_lack, {"structures": "centred"}),
    # A net force of 0.015 eV/Å per component (within the FP16 force tolerance, 2e-2) on every atom:
    # benzene's centre of mass accelerates and the total energy grows by ~5e-3 eV/atom in 100 fs.
    "NVE": (offset("forces", [0.015, 0.015, 0.015]), {"precision": "fp16", "nve_steps": NVE_STEPS}),
    "runtimes": (molecule_virial_through_a_miscomputed_fusion, {"compare_runtimes": True}),
    "provenance: graph integrity": (renamed_first_node, {"keep_hash": False}),
}


@pytest.mark.parametrize("check", [pytest.param(check, marks=[pytest.mark.slow] if check == "NVE" else []) for check in ADVERSARIES])
def test_each_check_alone_fails_its_adversarial_artifact(check, exported, model, tmp_path):
    edit, options = ADVERSARIES[check]
    if check == "runtimes" and not onnxruntime_miscomputes_the_fusion():
        pytest.skip("this onnxruntime computes the fused Transpose + 1-D MatMul correctly: no runtime bug to build on")
    options = {**FAST, **options}
    if options.pop("structures", None) == "centred":
        options["structures"] = centred_molecules(tmp_path / "centred.extxyz")
    if options.pop("keep_hash", True):
        artifact = edited_graph(exported, tmp_path / "adversary.onnx", edit)
    else:  # edited after export: the recorded hash no longer matches
        model_proto = onnx.load(str(exported))
        edit(model_proto)
        artifact = tmp_path / "adversary.onnx"
        onnx.save(model_proto, str(artifact))
    if check == "provenance: graph integrity":  # every load checks the seal: refused before any number exists
        with pytest.raises(ArtifactMetadataError, match="modified after export"):
            validate_artifact(artifact, reference=model, **options)
        return
    report = validate_artifact(artifact, reference=model, **options)
    assert failed_checks(report) == {check}, report.failures()


def reference_declaring(model, **changes):
    """A copy of ``model`` that differs from the artifact's source only as ``changes`` say."""
    reference = copy.deepcopy(model)
    if "species" in changes:  # a declaration: the embedding (and every number) stays as it is
        reference.config = dataclasses.replace(reference.config, species=changes["species"])
    if "cutoff" in changes:  # a declaration too: the radial basis stays; numbers move by far less than any tolerance
        reference.config = dataclasses.replace(reference.config, cutoff=changes["cutoff"])
    if "one_ulp" in changes:  # entry (index, toward) of the largest weight moved by one float32 spacing: numbers within 1e-6
        index, toward = changes["one_ulp"]
        weight = max(reference.parameters(), key=lambda p: p.numel())
        with torch.no_grad():
            weight.view(-1)[index] = torch.nextafter(weight.view(-1)[index], torch.tensor(toward))
    return reference


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"one_ulp": (0, np.inf)}, "provenance: weights match the reference"),
        ({"species": (1, 6, 7, 8, 9)}, "provenance: species and cutoff match"),
        ({"cutoff": make_small_painn().cutoff + 1e-5}, "provenance: species and cutoff match"),
    ],
    ids=["other-weights", "other-species", "other-cutoff"],
)
def test_a_reference_that_is_not_the_source_fails_provenance_alone(exported, model, changes, check):
    report = validate_artifact(exported, reference=reference_declaring(model, **changes), **FAST)
    assert failed_checks(report) == {check}, report.failures()


def test_provenance_details_say_what_was_found(exported, model):
    """The weights check shows both hashes (12 hex digits) and, only when they differ, what to do."""
    from mlff_export.export import read_metadata
    from mlff_export.export.precision import weights_sha256

    digest = weights_sha256(model)[:12]
    same = {check.name: check.detail for check in check_provenance(exported, model)}
    assert same["graph integrity"].endswith(f"(graph {read_metadata(exported).model_sha256[:12]}…)")
    assert same["weights match the reference"] == f"artifact exported from weights {digest}…, reference weights {digest}…"
    other = {check.name: check.detail for check in check_provenance(exported, reference_declaring(model, one_ulp=(0, np.inf)))}
    assert other["weights match the reference"].endswith(": pass --reference the checkpoint it was exported from")


def documented_tolerances() -> dict[str, dict[str, float]]:
    """precision -> tolerance key (``tolerances.OVERRIDABLE``) -> value, from docs/validation.md's table."""
    by_cli_name = {key.replace(".", "-").replace("_", "-"): key for key in OVERRIDABLE}
    table = {"fp32": {}, "fp16": {}}
    text = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text()
    for row in re.findall(r"^\| (`[a-z-]+`.*?) \| (.*?) \| (.*?) \| .*\|$", text, flags=re.MULTILINE):
        names = re.findall(r"`([a-z-]+)`", row[0])
        base = names[0].rsplit("-", 1)[0]
        names = [base + name if name.startswith("-") else name for name in names]  # `-rtol` after `x-atol`
        for precision, cell in zip(("fp32", "fp16"), row[1:]):
            for name, value in zip(names, cell.split(", ")):
                table[precision][by_cli_name[name]] = float(value)
    return table


def tolerance_value(tolerances, key: str) -> float:
    output, _, kind = key.partition(".")
    return getattr(tolerances.outputs[output], kind) if kind else getattr(tolerances, key)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_default_tolerances_are_the_documented_ones(precision):
    documented = documented_tolerances()[precision]
    assert set(documented) == set(OVERRIDABLE)
    defaults = default_tolerances(precision)
    assert {key: tolerance_value(defaults, key) for key in OVERRIDABLE} == documented


def test_default_tolerances_cannot_be_changed_by_a_caller():
    """A caller that edits what it was given (by mistake) changes nothing for the next validation."""
    tolerances = default_tolerances("fp32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tolerances.nve_drift_excess = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        tolerances.outputs["forces"].atol = 1.0
    tolerances.outputs["forces"] = OutputTolerance(atol=1.0)
    assert default_tolerances("fp32").outputs["forces"] == OutputTolerance(atol=1e-4)


def test_weights_check_fails_for_any_other_weights(exported, model):
    """Four references, each one float32 step away from the source in another weight or direction:
    the check compares the hashes for equality (an ordering would pass some of them)."""
    for index in (0, 1):
        for direction in (np.inf, -np.inf):
            reference = reference_declaring(model, one_ulp=(index, direction))
            checks = {check.name: check for check in check_provenance(exported, reference)}
            assert {name: check.passed for name, check in checks.items()} == {
                "graph integrity": True, "weights match the reference": False, "species and cutoff match": True
            }
            assert checks["weights match the reference"].detail.endswith("pass --reference the checkpoint it was exported from")


def test_artifacts_other_than_onnx_get_no_provenance_checks(model, tmp_path):
    for name in ("model.plan", "model.engine", "model.pt2"):
        assert check_provenance(tmp_path / name, model) == []



def test_the_single_structure_path_of_md_is_the_one_compared(exported, model, monkeypatch):
    """A neighbor list that loses a pair in ASE's calculator path only (the path of
    ``atoms.get_forces()``, MD and relaxations; ``predict`` searches its own pairs) fails
    "batched vs one by one" and nothing else: the one-by-one results come through ASE."""
    from mlff_export.neighbors import Pairs, VerletNeighborList

    searched = VerletNeighborList.pairs

    def one_pair_lost(self, atoms):  # the first pair and its reverse: still a full list
        pairs = searched(self, atoms)
        (center, neighbor), shift = pairs.pair_index[:, 0], pairs.cell_shifts[0]
        reverse = (pairs.pair_index[0] == neighbor) & (pairs.pair_index[1] == center) & (pairs.cell_shifts == -shift).all(axis=1)
        kept = np.ones(pairs.pair_index.shape[1], dtype=bool)
        kept[0] = False
        kept[np.flatnonzero(reverse)[0]] = False
        return Pairs(pairs.pair_index[:, kept], pairs.cell_shifts[kept])

    monkeypatch.setattr(VerletNeighborList, "pairs", one_pair_lost)
    report = validate_artifact(exported, reference=model, **FAST)
    failed = failed_checks(report)
    assert failed and {check.split(":")[0] for check in failed} == {"artifact batched vs one by one"}, failed
