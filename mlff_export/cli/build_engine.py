"""Build a TensorRT engine (NAME.plan + NAME.plan.json sidecar) from an exported ONNX graph or a
checkpoint. Needs TensorRT and a CUDA GPU (the engine is built on, and for, the GPU it runs on).

Shapes: named profiles from engines/profiles.json (--profile, repeatable: several profiles in one
engine), or one custom profile from --atoms/--pairs/--structures, each MIN:OPT:MAX. The arguments
are checked before TensorRT is looked for."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlff_export.bench.availability import TENSORRT_ADVICE
from mlff_export.cli.options import UsageError, add_model_options, input_file, model_spec, positive_int

NAME = "build-engine"
HELP = "build a TensorRT engine (NAME.plan + NAME.plan.json) from an exported ONNX graph or a checkpoint"
DEFAULT_PROFILE = "small-molecules"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("source (one of)").add_mutually_exclusive_group()
    source.add_argument("--onnx", metavar="FILE",
                        help="neighbor-table graph written by `mlff-export export` (of --precision)")
    add_model_options(parser, role="the model to export to ONNX beside the engine first", model_group=source)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="the graph's precision (FP16 engines are built from the FP16 export; default: fp32)")
    shapes = parser.add_argument_group("shapes", "named profiles, or all three ranges of one custom profile")
    shapes.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help=f"named profile in engines/profiles.json, repeatable (default: {DEFAULT_PROFILE})")
    shapes.add_argument("--atoms", metavar="MIN:OPT:MAX", help="atoms per call N, all structures together")
    shapes.add_argument("--pairs", metavar="MIN:OPT:MAX",
                        help="neighbor-table width K: pair slots per atom (the largest row), not total pairs")
    shapes.add_argument("--structures", metavar="MIN:OPT:MAX",
                        help="structures per call B (one more than you batch, when atoms are padded)")
    builder = parser.add_argument_group("builder")
    builder.add_argument("--out", metavar="FILE", help="engine file, .plan (default: engines/<model>-<precision>.plan)")
    builder.add_argument("--workspace-mb", type=positive_int, default=4096, metavar="MIB",
                         help="workspace memory limit, MiB (default: 4096)")
    builder.add_argument("--opt-level", type=int, choices=range(6), default=3, metavar="0..5",
                         help="builder optimisation level 0..5 (default: 3)")
    builder.add_argument("--timing-cache", metavar="FILE",
                         help="timing cache file (default: beside the engine, per TensorRT version and GPU)")


def shape_profiles(args: argparse.Namespace) -> list:
    """The engine's shape profiles from ``--profile`` or ``--atoms/--pairs/--structures``, checked."""
    ranges = {"--atoms": args.atoms, "--pairs": args.pairs, "--structures": args.structures}
    given = [option for option, value in ranges.items() if value]
    if given and args.profile:
        raise UsageError(f"give either --profile NAME ... or {', '.join(ranges)}; got both --profile and {given[0]}")
    if given and len(given) < len(ranges):
        missing = [option for option in ranges if option not in given]
        raise UsageError(f"a custom profile needs all of --atoms, --pairs, --structures (MIN:OPT:MAX); missing {', '.join(missing)}")

    from mlff_export.export.engine_profiles import SizeRange, profile_from_ranges, select_profiles

    if given:
        for option, text in ranges.items():
            SizeRange.parse(text, option)  # names the option in the error
        return [profile_from_ranges(args.atoms, args.pairs, args.structures)]
    return select_profiles(args.profile or [DEFAULT_PROFILE])


def run(args: argparse.Namespace) -> int:
    onnx_path = input_file(args.onnx, "--onnx", {".onnx": "an exported ONNX graph"}) if args.onnx else None
    if onnx_path is not None and (args.weights or args.model_kwargs):
        raise UsageError("--weights and --model-kwargs go with --model; an --onnx graph carries its weights")
    spec = model_spec(args) if onnx_path is None else None
    if args.out and Path(args.out).suffix != ".plan":
        raise UsageError(f"--out {args.out}: expected an engine file name ending in .plan")
    if args.out and Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; expected an engine file name ending in .plan")
    profiles = shape_profiles(args)

    from mlff_export.export.engine_builder import BuilderSettings, build_engine
    from mlff_export.export.tensorrt_compat import TensorRTUnavailableError, import_tensorrt

    settings = BuilderSettings(args.workspace_mb, args.opt_level, Path(args.timing_cache) if args.timing_cache else None)
    try:
        library = import_tensorrt()
    except TensorRTUnavailableError:
        raise UsageError(f"build-engine needs TensorRT, which is not installed here; {TENSORRT_ADVICE}") from None
    import torch

    if not torch.cuda.is_available():
        raise UsageError("build-engine needs a CUDA GPU (TensorRT builds an engine on, and for, the GPU it will run on); "
                         f"none is visible here (TensorRT {library.version} is installed)")
    if onnx_path is not None:
        out = Path(args.out or Path("engines") / f"{onnx_path.stem}.plan")
    else:
        from mlff_export.export import to_onnx

        out = Path(args.out or Path("engines") / f"{spec.name}-{args.precision}.plan")
        onnx_path = out.with_suffix(".onnx")
        print(f"exporting {spec.spec} to {onnx_path} ({args.precision})")
        loaded = spec.load()
        to_onnx(loaded.module, onnx_path, precision=args.precision, model_source=loaded.source)
    build_engine(onnx_path, out, profiles, args.precision, settings, library=library)
    return 0
