"""mlff-export validate: a correct export passes; broken artifacts fail, naming what broke."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from ase.build import molecule
from ase.io import write
from conftest import make_small_painn
from onnx import numpy_helper

from mlff_export.checkpoint import save_checkpoint
from mlff_export.cli import main
from mlff_export.validation.comparison import OutputValues, compare_output
from mlff_export.validation.provenance import check_provenance
from mlff_export.validation.tolerances import OutputTolerance, default_tolerances
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


def negate_forces(model_proto) -> None:
    graph = model_proto.graph
    for node in graph.node:
        node.output[:] = ["forces_before_negation" if name == "forces" else name for name in node.output]
    graph.node.append(onnx.helper.make_node("Neg", ["forces_before_negation"], ["forces"]))


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
