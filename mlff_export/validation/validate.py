"""``validate_artifact``: the whole validation of one deployed artifact against its PyTorch model.

Order: load both calculators (artifact on ``device``; reference in eager float64), check
provenance, evaluate the structures (artifact: one mixed batch, and one by one through ASE's
calculator interface, the path of MD and relaxations; reference: one batch), compare outputs,
check forces against finite differences of the artifact's own energy, run NVE with both, compare
the ONNX graph across runtimes, and write the report.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from torch import nn

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.model_intake import LoadedModel, load_model
from mlff_export.runtime import load_calculator
from mlff_export.runtime.calculator import ARTIFACT_BACKENDS
from mlff_export.validation.comparison import compare_predictions
from mlff_export.validation.physics import check_forces_by_finite_differences, compare_nve
from mlff_export.validation.provenance import check_provenance
from mlff_export.validation.report import ValidationReport, write_report
from mlff_export.validation.runtime_comparison import compare_onnx_runtimes, graph_feeds
from mlff_export.validation.structures import builtin_structures, check_structures, read_structures, supported_structures
from mlff_export.validation.tolerances import default_tolerances

FINITE_DIFFERENCE_STRUCTURES = 8
"""At most this many structures (the first ones) get the finite-difference check."""

NVE_MOLECULE = "C6H6"


def artifact_precision(calculator) -> str:
    """The precision the artifact declares in its metadata (``"fp32"`` for one that declares none)."""
    metadata = getattr(calculator.backend, "metadata", None)
    return getattr(metadata, "precision", None) or getattr(calculator.backend, "precision", "fp32")


def through_ase(calculator, structure: Atoms) -> dict:
    """``calculator``'s results for a copy of ``structure`` through ASE's interface
    (``atoms.get_potential_energy()``): the single-structure path that MD and relaxations take
    (its neighbor list with skin; on a GPU, inputs built on the device), not ``predict``'s."""
    atoms = structure.copy()
    atoms.calc = calculator
    atoms.get_potential_energy()
    return dict(calculator.results)


def validate_artifact(
    artifact: str | Path,
    *,
    reference: str | Path | nn.Module | LoadedModel = REFERENCE_CHECKPOINT,
    structures: str | Path | None = None,
    precision: str | None = None,
    device: str = "cpu",
    backend: str | None = None,
    tolerance_overrides: dict[str, float] | None = None,
    nve_steps: int = 200,
    compare_runtimes: bool = True,
    report_dir: str | Path | None = None,
) -> ValidationReport:
    """Validate ``artifact`` (anything :func:`~mlff_export.runtime.load_calculator` runs, e.g. an
    exported ``.onnx``) against ``reference``: a model specification (checkpoint card, factory, ``.pt2``:
    :func:`~mlff_export.model_intake.load_model`), a loaded model, or an interface module (copied).

    Args:
        structures: a file ASE reads (all its structures), or None for the built-in set.
        precision: which default tolerances apply (``"fp32"``/``"fp16"``); default: the artifact's.
            A checkpoint or module run on a compile or cuda-graphs ``backend`` also runs in it
            (``load_calculator``'s ``precision``: ``"fp16"`` is the exporter's half body).
        device: where the artifact and the reference run (``"cpu"``, ``"cuda"``).
        backend: the artifact's runtime backend (``load_calculator``'s ``backend``; default:
            from the artifact's suffix), e.g. ``"compile"`` to validate torch.compile on a checkpoint.
        tolerance_overrides: tolerance name (see ``tolerances.OVERRIDABLE``) -> value.
        nve_steps: VelocityVerlet steps (0: no NVE check).
        compare_runtimes: run the polygraphy cross-runtime comparison for ``.onnx`` artifacts.
        report_dir: where to write ``report.json``, ``report.md`` and the parity plot (None: nowhere).

    Raises:
        StructureError (a ValueError) for a structure the artifact cannot evaluate, naming it
        (unknown elements, overlapping atoms: :mod:`mlff_export.structure_sanity`); ValueError for
        out-of-range options, before anything is loaded.
    """
    if isinstance(nve_steps, bool) or not isinstance(nve_steps, int) or nve_steps < 0:
        raise ValueError(f"nve_steps | received {nve_steps!r} | expected a number of steps >= 0 (0: no NVE check)")
    runs_in = precision if backend not in (None, "eager") and Path(artifact).suffix not in ARTIFACT_BACKENDS else None
    artifact_calculator = load_calculator(artifact, device=device, backend=backend, precision=runs_in)
    if isinstance(reference, nn.Module):
        reference = LoadedModel(copy.deepcopy(reference), f"<{type(reference).__name__} module>")
    elif not isinstance(reference, LoadedModel):
        reference = load_model(reference)
    reference_model = reference.module
    provenance = check_provenance(artifact, reference_model)
    reference_calculator = load_calculator(reference_model, device=device, dtype="float64")
    precision = precision or artifact_precision(artifact_calculator)
    tolerances = default_tolerances(precision).overridden(tolerance_overrides or {})
    notes = []

    species = tuple(sorted(set(artifact_calculator.species) & set(reference_calculator.species)))
    if structures is None:
        source = "built-in set"
        every_structure = builtin_structures()
        selected = supported_structures(every_structure, species)
        if len(selected) < len(every_structure):
            notes.append(f"built-in structures with elements outside the model's were left out: {sorted(set(every_structure) - set(selected))}")
    else:
        source = str(structures)
        selected = read_structures(structures)
        cutoff, min_distance = artifact_calculator.neighbor_list.cutoff, artifact_calculator.min_distance
        check_structures(selected, artifact_calculator.species, source, cutoff=cutoff, min_distance=min_distance)
        check_structures(selected, reference_calculator.species, f"{source} (reference model)")
    names, atoms = list(selected), list(selected.values())

    batched = artifact_calculator.predict(atoms)
    one_by_one = [through_ase(artifact_calculator, structure) for structure in atoms]
    reference_results = reference_calculator.predict(atoms)
    comparisons = compare_predictions("artifact vs reference", names, atoms, batched, reference_results, tolerances.outputs)
    comparisons += compare_predictions("artifact batched vs one by one", names, atoms, batched, one_by_one, tolerances.outputs)

    finite_difference_set = dict(list(selected.items())[:FINITE_DIFFERENCE_STRUCTURES])
    energy_errors = {name: abs(ours["energy"] - theirs["energy"]) for name, ours, theirs in zip(names, batched, reference_results)}
    finite_differences = check_forces_by_finite_differences(
        artifact_calculator, finite_difference_set, rtol=tolerances.finite_difference_rtol, energy_errors=energy_errors
    )

    nve = None
    nve_atoms = molecule(NVE_MOLECULE)
    if nve_steps <= 0:
        notes.append("NVE check not run (nve_steps=0)")
    elif not set(nve_atoms.numbers.tolist()) <= set(species):
        notes.append(f"NVE check not run: the model lacks elements of {NVE_MOLECULE}")
    else:
        nve = compare_nve(
            artifact_calculator, reference_calculator, nve_atoms, structure="benzene", steps=nve_steps, allowed_excess=tolerances.nve_drift_excess
        )

    runtimes = None
    layout = getattr(artifact_calculator.backend, "layout", None)
    if compare_runtimes and Path(artifact).suffix == ".onnx" and layout is not None:
        feeds = graph_feeds(layout, atoms, artifact_calculator.neighbor_list.cutoff)
        runtimes = compare_onnx_runtimes(artifact, feeds, atol=tolerances.runtime_atol, rtol=tolerances.runtime_rtol)

    report = ValidationReport(
        artifact=str(artifact),
        reference=reference.source,
        precision=precision,
        device=str(device),
        backend=artifact_calculator.backend.name,
        structures_source=source,
        structure_names=names,
        tolerances=tolerances,
        provenance=provenance,
        comparisons=comparisons,
        finite_differences=finite_differences,
        nve=nve,
        runtimes=runtimes,
        notes=notes,
    )
    if report_dir is not None:
        artifact_forces = np.concatenate([result["forces"] for result in batched])
        reference_forces = np.concatenate([result["forces"] for result in reference_results])
        write_report(report, report_dir, artifact_forces, reference_forces)
    return report
