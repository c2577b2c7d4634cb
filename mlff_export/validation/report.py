"""The validation report: one dataclass, written as JSON, Markdown and a force parity plot (PNG)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlff_export.validation.comparison import OutputComparison
from mlff_export.validation.physics import FiniteDifferenceCheck, NVEComparison
from mlff_export.validation.provenance import ProvenanceCheck
from mlff_export.validation.runtime_comparison import RuntimeComparison
from mlff_export.validation.tolerances import Tolerances

PARITY_PLOT = "force_parity.png"


@dataclass
class ValidationReport:
    """Everything one ``mlff-export validate`` run found; :attr:`passed` is the verdict."""

    artifact: str
    reference: str
    precision: str
    device: str
    backend: str
    structures_source: str
    structure_names: list[str]
    tolerances: Tolerances
    provenance: list[ProvenanceCheck] = field(default_factory=list)
    comparisons: list[OutputComparison] = field(default_factory=list)
    finite_differences: list[FiniteDifferenceCheck] = field(default_factory=list)
    nve: NVEComparison | None = None
    runtimes: RuntimeComparison | None = None
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """One line per failed check, naming it and the numbers that failed it."""
        lines = [f"provenance: {check.name}: {check.detail}" for check in self.provenance if not check.passed]
        lines += [
            f"{c.label}: {c.output} max |error| {c.max_abs_error:.3g} {c.unit} at {c.worst_location}"
            f" ({c.violations} of {c.count} values beyond atol {c.atol:g} + rtol {c.rtol:g} * |reference|)"
            for c in self.comparisons
            if not c.passed
        ]
        lines += [
            f"finite differences: {f.structure} along {f.direction}: -F·u = {f.analytic:.4g}, dE/dh = "
            f"{f.finite_difference:.4g} eV/Å (error {f.error:.3g} > allowed {f.allowed:.3g})"
            for f in self.finite_differences
            if not f.passed
        ]
        if self.nve is not None and not self.nve.passed:
            lines.append(
                f"NVE ({self.nve.artifact.structure}): energy drift {self.nve.artifact.drift_per_atom:.3g} eV/atom vs "
                f"reference {self.nve.reference.drift_per_atom:.3g} (allowed excess {self.nve.allowed_excess:g})"
            )
        if self.runtimes is not None:
            lines += [
                f"runtimes {o.runners}: {o.output} max |difference| {o.max_abs_difference:.3g}"
                for o in self.runtimes.outputs
                if not o.passed
            ]
        return lines

    @property
    def passed(self) -> bool:
        return not self.failures()

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failures": self.failures(), **asdict(self)}


def _mark(passed: bool) -> str:
    return "[pass]" if passed else "[FAIL]"


def text_summary(report: ValidationReport) -> str:
    """A few terminal lines: one per check, then the failures (no verdict line)."""
    lines = [
        f"artifact   {report.artifact} ({report.precision}, {report.backend} on {report.device})",
        f"reference  {report.reference} (eager float64)",
        f"structures {report.structures_source}: {len(report.structure_names)}",
    ]
    lines += [f"note       {note}" for note in report.notes]
    lines += [f"{_mark(c.passed)} provenance: {c.name}" for c in report.provenance]
    lines += [
        f"{_mark(c.passed)} {c.label}: {c.output:<15} max {c.max_abs_error:9.3g}  mean {c.mean_abs_error:9.3g} {c.unit:<7}"
        f" (atol {c.atol:g}, rtol {c.rtol:g}) at {c.worst_location}"
        for c in report.comparisons
    ]
    if report.finite_differences:
        worst = max(report.finite_differences, key=lambda f: f.error / f.allowed)
        lines.append(
            f"{_mark(all(f.passed for f in report.finite_differences))} finite differences: "
            f"{len(report.finite_differences)} directional derivatives, worst error/allowed {worst.error / worst.allowed:.2g} "
            f"({worst.structure}, {worst.direction})"
        )
    if report.nve is not None:
        lines.append(
            f"{_mark(report.nve.passed)} NVE {report.nve.artifact.structure}: drift {report.nve.artifact.drift_per_atom:.3g} eV/atom "
            f"(reference {report.nve.reference.drift_per_atom:.3g}, allowed excess {report.nve.allowed_excess:g})"
        )
    if report.runtimes is not None:
        if report.runtimes.skipped:
            lines.append(f"[skip] runtimes: {report.runtimes.skipped}")
        else:
            largest = max((o.max_abs_difference for o in report.runtimes.outputs), default=0.0)
            lines.append(f"{_mark(report.runtimes.passed)} runtimes {', '.join(report.runtimes.runners)}: max |difference| {largest:.3g}")
    lines += [f"failure: {line}" for line in report.failures()]
    return "\n".join(lines)


def write_json(report: ValidationReport, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=True) + "\n")
    return path


def _verdict(passed: bool) -> str:
    return "pass" if passed else "**FAIL**"


def markdown(report: ValidationReport) -> str:
    """The report as Markdown: verdict, failures, then one table per check."""
    lines = [
        f"# Validation of `{report.artifact}`: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"- reference: `{report.reference}` (eager PyTorch, float64)",
        f"- precision: {report.precision}; device: {report.device}; backend: {report.backend}",
        f"- structures: {report.structures_source} ({len(report.structure_names)}: {', '.join(report.structure_names)})",
    ]
    lines += [f"- note: {note}" for note in report.notes]
    if report.failures():
        lines += ["", "## Failures", ""] + [f"- {line}" for line in report.failures()]
    if report.provenance:
        lines += ["", "## Provenance", "", "| check | result | detail |", "| --- | --- | --- |"]
        lines += [f"| {c.name} | {_verdict(c.passed)} | {c.detail} |" for c in report.provenance]
    lines += [
        "",
        "## Outputs",
        "",
        "| comparison | output | max abs error | mean abs error | relative error | worst | atol | rtol | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {c.label} | {c.output} ({c.unit}) | {c.max_abs_error:.3g} | {c.mean_abs_error:.3g} | "
        f"{c.relative_error:.3g} | {c.worst_location} | {c.atol:g} | {c.rtol:g} | {_verdict(c.passed)} |"
        for c in report.comparisons
    ]
    if report.finite_differences:
        lines += [
            "",
            "## Forces vs finite differences of the artifact's energy (eV/Å)",
            "",
            "| structure | direction | -F·u | dE/dh | error | allowed | result |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {f.structure} | {f.direction} | {f.analytic:.5g} | {f.finite_difference:.5g} | {f.error:.3g} | {f.allowed:.3g} | {_verdict(f.passed)} |"
            for f in report.finite_differences
        ]
    if report.nve is not None:
        nve = report.nve
        run = nve.artifact
        lines += [
            "",
            f"## NVE: {run.structure}, {run.steps} steps of {run.timestep_fs} fs from {run.temperature_K:g} K",
            "",
            "| model | drift (eV/atom) | max deviation (eV/atom) |",
            "| --- | --- | --- |",
            f"| artifact | {run.drift_per_atom:.3g} | {run.max_deviation_per_atom:.3g} |",
            f"| reference | {nve.reference.drift_per_atom:.3g} | {nve.reference.max_deviation_per_atom:.3g} |",
            "",
            f"Excess |drift| {nve.excess:.3g} eV/atom, allowed {nve.allowed_excess:g}: {_verdict(nve.passed)}.",
        ]
    if report.runtimes is not None:
        runtimes = report.runtimes
        lines += ["", "## ONNX across runtimes (polygraphy)", ""]
        if runtimes.skipped:
            lines.append(f"Skipped: {runtimes.skipped}")
        else:
            lines += [
                f"Runners: {', '.join(runtimes.runners)}; atol {runtimes.atol:g}, rtol {runtimes.rtol:g}.",
                "",
                "| runners | output | max abs difference | mean abs difference | max rel difference | result |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {o.runners} | {o.output} | {o.max_abs_difference:.3g} | {o.mean_abs_difference:.3g} | {o.max_rel_difference:.3g} | {_verdict(o.passed)} |"
                for o in runtimes.outputs
            ]
    lines += ["", f"![force parity]({PARITY_PLOT})", ""]
    return "\n".join(lines)


def plot_force_parity(artifact_forces: np.ndarray, reference_forces: np.ndarray, path: str | Path, *, title: str) -> Path:
    """Scatter of artifact vs reference force components (eV/Å) beside a histogram of their
    absolute errors (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted, reference = np.ravel(artifact_forces), np.ravel(reference_forces)
    errors = np.abs(predicted - reference)
    figure, (parity, histogram) = plt.subplots(1, 2, figsize=(10, 4.5), constrained_layout=True)
    limit = 1.05 * float(max(np.abs(reference).max(), np.abs(predicted[np.isfinite(predicted)]).max(initial=0), 1e-12))
    parity.plot([-limit, limit], [-limit, limit], color="0.6", linewidth=1, zorder=1)
    parity.scatter(reference, predicted, s=6, alpha=0.6, zorder=2)
    parity.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    parity.set_xlabel("reference force component (eV/Å)")
    parity.set_ylabel("artifact force component (eV/Å)")
    parity.set_title(f"max |ΔF| {errors.max():.2g} eV/Å, {errors.size} components")
    positive = errors[errors > 0]
    if positive.size:
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 40)
        histogram.hist(positive, bins=bins)
        histogram.set_xscale("log")
    histogram.set_xlabel("|artifact − reference| per component (eV/Å)")
    histogram.set_ylabel("count")
    histogram.set_title(f"error distribution ({errors.size - positive.size} components exactly equal)")
    figure.suptitle(title)
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(report: ValidationReport, directory: str | Path, artifact_forces: np.ndarray, reference_forces: np.ndarray) -> Path:
    """Write ``report.json``, ``report.md`` and the force parity plot into ``directory``; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plot_force_parity(artifact_forces, reference_forces, directory / PARITY_PLOT, title=f"{Path(report.artifact).name} vs reference")
    write_json(report, directory / "report.json")
    (directory / "report.md").write_text(markdown(report))
    return directory
