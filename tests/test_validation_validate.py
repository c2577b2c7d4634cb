"""validate_artifact's own decisions, on tiny eager models (no ONNX export, each test ~1 s):
which structures get which check, which notes are written, and the documented defaults.

The artifact is a checkpoint card of a narrow PaiNN run by the eager backend, the reference the
same module: every numerical check passes, so the tests look at what was checked, not at numbers.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest
from ase.build import molecule
from ase.io import write

from mlff_export.checkpoint import save_checkpoint
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.validation.structures import builtin_structures
from mlff_export.validation.validate import FINITE_DIFFERENCE_STRUCTURES, validate_artifact

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text()
QUICK = {"nve_steps": 0, "compare_runtimes": False}


def tiny_painn(species: tuple[int, ...]) -> PaiNN:
    """The narrowest PaiNN that runs (any weights: validation of a model against itself passes)."""
    import torch

    torch.manual_seed(0)
    return PaiNN(PaiNNConfig(species=species, num_features=8, num_interactions=1, num_radial=4, cutoff=3.0)).eval()


def checkpoint_of(species: tuple[int, ...], folder: Path) -> tuple[Path, PaiNN]:
    model = tiny_painn(species)
    return save_checkpoint(model, folder / f"tiny-{'-'.join(map(str, species))}.json"), model


def documented_finite_difference_structures() -> int:
    return int(re.search(r"\*\*Forces vs finite differences of the artifact's own energy\*\* \(first (\d+) structures\)", DOCS).group(1))


def documented_nve_steps() -> int:
    return int(re.search(r"^\| `--nve-steps N` \| VelocityVerlet steps \(default (\d+); 0 skips the NVE check\) \|$", DOCS, re.MULTILINE).group(1))


def test_defaults_are_the_documented_ones():
    """docs/validation.md: finite differences on the first 8 structures, 200 NVE steps by default
    (the function's default and the command line's)."""
    from mlff_export.cli.validate import add_arguments

    assert FINITE_DIFFERENCE_STRUCTURES == documented_finite_difference_structures()
    assert inspect.signature(validate_artifact).parameters["nve_steps"].default == documented_nve_steps()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.get_default("nve_steps") == documented_nve_steps()


def test_options_are_keyword_only(tmp_path):
    """Only the artifact is positional: a reference passed by position is refused before anything
    is loaded (options in the wrong order would otherwise be taken for others)."""
    with pytest.raises(TypeError):
        validate_artifact(tmp_path / "absent.onnx", "reference.json")
    parameters = inspect.signature(validate_artifact).parameters
    assert parameters["artifact"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(parameter.kind is inspect.Parameter.KEYWORD_ONLY for name, parameter in parameters.items() if name != "artifact")


def test_finite_differences_cover_the_first_structures_only(tmp_path):
    """Ten structures in a file: all ten are compared, only the first eight (documented) get the
    finite-difference check, three directions each."""
    card, model = checkpoint_of((1, 6, 7, 8), tmp_path)
    names = ["H2O", "CH4", "NH3", "H2", "CO", "HCN", "CH3OH", "N2", "H2CO", "C2H2"]
    frames = []
    for seed, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    structures = write_frames(tmp_path / "ten.extxyz", frames)
    report = validate_artifact(card, reference=model, structures=structures, **QUICK)
    first = documented_finite_difference_structures()
    assert len(report.structure_names) == 10 and first < 10
    checked = [check.structure for check in report.finite_differences]
    assert sorted(set(checked), key=checked.index) == report.structure_names[:first]
    assert len(checked) == 3 * first  # the force direction and two random ones, every structure here has forces
    assert report.passed, report.failures()


def write_frames(path: Path, frames: list) -> Path:
    write(path, frames)
    return path


def test_a_model_without_carbon_leaves_out_structures_and_the_nve_check(tmp_path):
    """A model for H and O only: built-in structures with C or N are left out, named in a note;
    benzene has carbon, so the NVE check is not run (with a note) even though steps were asked for.
    A checkpoint artifact gets no cross-runtime comparison (an ONNX-only check)."""
    card, model = checkpoint_of((1, 8), tmp_path)
    report = validate_artifact(card, reference=model, nve_steps=5, compare_runtimes=True)
    every = builtin_structures()
    left_out = sorted(name for name, atoms in every.items() if not set(atoms.get_chemical_symbols()) <= {"H", "O"})
    kept = [name for name in every if name not in left_out]
    assert left_out and kept and report.structure_names == kept
    assert f"built-in structures with elements outside the model's were left out: {left_out}" in report.notes
    assert "NVE check not run: the model lacks elements of C6H6" in report.notes and report.nve is None
    assert report.runtimes is None
    assert report.passed, report.failures()


def test_a_model_with_exactly_hydrogen_and_carbon_runs_the_nve_check(tmp_path):
    """Benzene needs H and C: a model with exactly those runs NVE (a subset check, not equality
    with a larger set); the structures without them are left out."""
    card, model = checkpoint_of((1, 6), tmp_path)
    report = validate_artifact(card, reference=model, nve_steps=3, compare_runtimes=False)
    assert report.nve is not None and report.nve.artifact.steps == 3 and len(report.nve.artifact.total_energies) == 4
    assert not any(note.startswith("NVE check not run") for note in report.notes)
    assert any(note.startswith("built-in structures with elements outside the model's were left out") for note in report.notes)


def test_a_model_with_every_built_in_element_uses_the_whole_set_without_notes(tmp_path):
    card, model = checkpoint_of((1, 6, 7, 8), tmp_path)
    report = validate_artifact(card, reference=model, nve_steps=0, compare_runtimes=False)
    assert report.structure_names == list(builtin_structures())
    assert report.notes == ["NVE check not run (nve_steps=0)"] and report.nve is None


def test_a_checkpoint_on_a_compile_backend_is_validated_in_the_precision_asked(tmp_path):
    """``precision="fp16"`` with a compile backend runs the FP16 body (not float32 judged by FP16
    tolerances: its forces differ from the float64 reference by more than float32's rounding)."""
    card, model = checkpoint_of((1, 6, 7, 8), tmp_path)
    structures = write_frames(tmp_path / "two.extxyz", [molecule("CH4"), molecule("H2O")])
    options = {"reference": model, "structures": structures, "backend": "compile", **QUICK}
    half = validate_artifact(card, precision="fp16", **options)
    assert (half.precision, half.backend) == ("fp16", "compile")
    assert half.passed, half.failures()
    forces = next(c for c in half.comparisons if c.label == "artifact vs reference" and c.output == "forces")
    assert forces.max_abs_error > 1e-6, "float32's error: the checkpoint did not run its FP16 body"
