"""Prove that a deployed artifact is its PyTorch model: outputs against the reference checkpoint
(float64 eager), batched against one by one, forces against finite differences of the artifact's
own energy, an NVE run, and the ONNX graph across runtimes (polygraphy). Exit 0 only if every
check passes; tolerances per precision are in docs/validation.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlff_export.cli.options import (
    UsageError,
    add_device_option,
    add_model_options,
    add_threads_option,
    apply_threads,
    input_file,
    model_spec,
    output_folder,
    resolve_device,
)

NAME = "validate"
HELP = "prove an artifact is its PyTorch model: parity, finite differences, NVE, report"
ARTIFACT_KINDS = {".onnx": "an exported ONNX graph", ".plan": "a TensorRT engine", ".json": "a checkpoint card used with --backend"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mlff_export.validation.tolerances import OVERRIDABLE, PRECISIONS

    parser.add_argument("artifact", help="exported .onnx or TensorRT .plan (or a checkpoint .json with --backend)")
    add_model_options(parser, flags=("--reference",), role="the PyTorch model the artifact was exported from")
    parser.add_argument("--structures", metavar="FILE", help="structures (any format ase.io.read reads); default: built-in set")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="tolerance set (default: the artifact's precision); a checkpoint on a compile or cuda-graphs --backend also runs in it")
    add_device_option(parser, default="cpu")
    parser.add_argument("--backend", help="the artifact's runtime backend (default: from its suffix; e.g. compile)")
    parser.add_argument("--report", metavar="DIR", help="write report.json, report.md and force_parity.png here")
    parser.add_argument("--nve-steps", type=int, default=200, metavar="N",
                        help="VelocityVerlet steps of the NVE check (default: 200; 0: skip)")
    add_threads_option(parser)
    tolerances = parser.add_argument_group("tolerances", "override the precision's defaults (docs/validation.md)")
    for name, description in OVERRIDABLE.items():
        flag = "--tolerance-" + name.replace(".", "-").replace("_", "-")
        tolerances.add_argument(flag, dest=f"tolerance:{name}", type=float, metavar="X", help=description)


def artifact_path(text: str) -> Path:
    """The positional artifact, refusing other kinds with the ones validate takes."""
    path = Path(text)
    if path.is_file() and path.suffix.lower() not in ARTIFACT_KINDS:
        raise UsageError(f"validate takes .onnx or .plan (or a checkpoint .json with --backend); got {path}")
    return input_file(path, "artifact", ARTIFACT_KINDS)


def run(args: argparse.Namespace) -> int:
    artifact = artifact_path(args.artifact)
    reference = model_spec(args)
    if args.structures and not Path(args.structures).is_file():
        raise UsageError(f"--structures {args.structures}: expected a structure file (any format ase.io.read reads)")
    report_dir = output_folder(args.report, "--report") if args.report else None
    device = resolve_device(args.device)
    apply_threads(args)

    from mlff_export.validation.report import text_summary
    from mlff_export.validation.validate import validate_artifact

    overrides = {key.partition(":")[2]: value for key, value in vars(args).items() if key.startswith("tolerance:") and value is not None}
    report = validate_artifact(
        artifact,
        reference=reference.load(),
        structures=args.structures,
        precision=args.precision,
        device=device,
        backend=args.backend,
        tolerance_overrides=overrides,
        nve_steps=args.nve_steps,
        report_dir=report_dir,
    )
    print(text_summary(report))
    if report_dir:
        print(f"report     {report_dir}/report.md, report.json, force_parity.png")
    print("PASSED" if report.passed else "FAILED")
    return 0 if report.passed else 1
