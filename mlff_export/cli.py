"""The ``mlff-export`` command line: a thin layer over the library, one function per subcommand.

Each subcommand adds its arguments in ``_add_<name>`` and runs in ``_run_<name>``; user mistakes
print one line (``error: ...``) and exit 1; each command ends with ``PASSED`` or ``FAILED`` where it
checks something.
"""

from __future__ import annotations

import argparse
import sys
import time

import mlff_export
from mlff_export import REFERENCE_CHECKPOINT


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a checkpoint (default: the bundled reference model)")
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT), help="checkpoint card (.json)")
    parser.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ase.data import chemical_symbols

    from mlff_export.checkpoint import load_checkpoint, read_card
    from mlff_export.model import count_parameters

    card = read_card(args.checkpoint)
    model = load_checkpoint(args.checkpoint)
    print(f"checkpoint   {args.checkpoint}")
    print(f"architecture {card['architecture']}  parameters {count_parameters(model):,}")
    print(f"species      {' '.join(chemical_symbols[z] for z in model.species)}  cutoff {model.cutoff} Å")
    for key, value in card.get("extra", {}).items():
        print(f"{key:<12} {value}")
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="evaluate the seed molecules with the eager calculator and time it")
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    import numpy as np
    from ase.build import molecule

    from mlff_export.runtime import load_calculator

    calc = load_calculator(args.checkpoint, device=args.device)
    print(f"{'molecule':<10}{'atoms':>6}{'energy/eV':>14}{'max|F|/(eV/Å)':>16}{'median ms/call':>16}")
    for name in ("H2", "H2O", "CH4", "C6H6"):
        atoms = molecule(name)
        atoms.calc = calc
        timings = []
        for step in range(args.repeats):
            atoms.positions[0, 0] += 1e-4 * (-1) ** step  # a new geometry each call: no cache hits
            start = time.perf_counter()
            forces = atoms.get_forces()
            timings.append(time.perf_counter() - start)
        energy = atoms.get_potential_energy()
        print(f"{name:<10}{len(atoms):>6}{energy:>14.4f}{np.abs(forces).max():>16.4f}{1e3 * np.median(timings):>16.3f}")
    return 0


def _add_build_engine(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-engine",
        help="build a TensorRT engine (NAME.plan + NAME.plan.json) from an exported ONNX graph or a checkpoint",
        description="Shapes: named profiles from engines/profiles.json (--profile, repeatable: several profiles in "
        "one engine), or one custom profile from --atoms/--pairs/--structures, each MIN:OPT:MAX.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--onnx", help="neighbor-table graph written by mlff_export.export.to_onnx (of --precision)")
    source.add_argument("--checkpoint", help="checkpoint card (.json); exported to ONNX beside the engine first "
                        "(default: the bundled reference model)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="the graph's precision (FP16 engines are built from the FP16 export)")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help="named profile in engines/profiles.json, repeatable (default: small-molecules)")
    parser.add_argument("--atoms", metavar="MIN:OPT:MAX", help="atoms per call N, all structures together")
    parser.add_argument("--pairs", metavar="MIN:OPT:MAX",
                        help="neighbor-table width K: pair slots per atom (the largest row), not total pairs")
    parser.add_argument("--structures", metavar="MIN:OPT:MAX",
                        help="structures per call B (one more than you batch, when atoms are padded)")
    parser.add_argument("--out", help="engine file (default: engines/<model>-<precision>.plan)")
    parser.add_argument("--workspace-mb", type=int, default=4096, help="workspace memory limit, MiB (default 4096)")
    parser.add_argument("--opt-level", type=int, default=3, help="builder optimisation level 0..5 (default 3)")
    parser.add_argument("--timing-cache", help="timing cache file (default: beside the engine, per TensorRT and GPU)")
    parser.set_defaults(run=_run_build_engine)


def _run_build_engine(args) -> int:
    from pathlib import Path

    from mlff_export.export.engine_builder import BuilderSettings, build_engine
    from mlff_export.export.engine_profiles import profile_from_ranges, select_profiles
    from mlff_export.export.tensorrt_compat import import_tensorrt

    library = import_tensorrt()  # first: without TensorRT, one line and nothing else done
    ranges = (args.atoms, args.pairs, args.structures)
    if any(ranges) and (args.profile or not all(ranges)):
        raise ValueError("give either --profile NAME ... or all three of --atoms, --pairs, --structures")
    profiles = [profile_from_ranges(*ranges)] if all(ranges) else select_profiles(args.profile or ["small-molecules"])
    settings = BuilderSettings(args.workspace_mb, args.opt_level, Path(args.timing_cache) if args.timing_cache else None)
    if args.onnx:
        onnx_path = Path(args.onnx)
        default_out = Path("engines") / f"{onnx_path.stem}.plan"
    else:
        from mlff_export.checkpoint import load_checkpoint
        from mlff_export.export import to_onnx

        checkpoint = Path(args.checkpoint or REFERENCE_CHECKPOINT)
        default_out = Path("engines") / f"{checkpoint.stem}-{args.precision}.plan"
        onnx_path = Path(args.out or default_out).with_suffix(".onnx")
        print(f"exporting {checkpoint} to {onnx_path} ({args.precision})")
        to_onnx(load_checkpoint(checkpoint), onnx_path, precision=args.precision)
    build_engine(onnx_path, Path(args.out or default_out), profiles, args.precision, settings, library=library)
    return 0


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX (energy, forces, virial in the graph): NAME.<precision>.onnx"
    )
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT), help="checkpoint card (.json)")
    parser.add_argument("--out", default=".", help="output folder (default: the current folder)")
    parser.add_argument("--precision", default="fp32,fp16", help="comma-separated, of fp32, fp16 (default: both)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18)")
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    import logging
    from pathlib import Path

    import onnx
    from ase.build import bulk, molecule

    from mlff_export.checkpoint import load_checkpoint
    from mlff_export.export import to_onnx
    from mlff_export.export.onnx_export import DEFAULT_OPSET
    from mlff_export.export.precision import PRECISIONS
    from mlff_export.runtime.parity import OnnxParityCheck

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - set(PRECISIONS):
        raise ValueError(f"--precision must be a comma-separated list of {list(PRECISIONS)}, got {args.precision!r}")
    checkpoint = Path(args.checkpoint)
    model = load_checkpoint(checkpoint)
    structures = [molecule("H2O"), molecule("C6H6"), bulk("C", "diamond", a=3.57)]
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    for precision in precisions:
        start = time.perf_counter()
        parity = OnnxParityCheck(model, structures, precision)  # runs before the file appears
        path = to_onnx(model, Path(args.out) / f"{checkpoint.stem}.{precision}.onnx", precision=precision, opset=opset, check=parity)
        seconds = time.perf_counter() - start
        graph = onnx.load(str(path)).graph
        print(f"{path}  {seconds:.1f} s  {len(graph.node)} nodes  {len(graph.initializer)} initializers")
        report = "  ".join(f"|d{name}| {d.difference:.2e} (<= {d.allowed:.2e})" for name, d in parity.deviations.items())
        print(f"  vs eager (H2O, benzene, diamond): {report}")
    print("PASSED")
    return 0


def _add_validate(subparsers) -> None:
    from mlff_export.validation.tolerances import OVERRIDABLE, PRECISIONS

    parser = subparsers.add_parser(
        "validate", help="prove an artifact is its PyTorch model: parity, finite differences, NVE, report"
    )
    parser.add_argument("artifact", help="exported .onnx (or any artifact load_calculator runs)")
    parser.add_argument("--reference", default=str(REFERENCE_CHECKPOINT), help="checkpoint card it was exported from")
    parser.add_argument("--structures", metavar="FILE", help="structures (any format ase.io.read reads); default: built-in set")
    parser.add_argument("--precision", choices=PRECISIONS, help="tolerance set (default: the artifact's precision)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N], for artifact and reference")
    parser.add_argument("--backend", help="the artifact's runtime backend (default: from its suffix; e.g. compile)")
    parser.add_argument("--report", metavar="DIR", help="write report.json, report.md and force_parity.png here")
    parser.add_argument("--nve-steps", type=int, default=200, help="VelocityVerlet steps of the NVE check (0: skip)")
    tolerances = parser.add_argument_group("tolerances", "override the precision's defaults (docs/validation.md)")
    for name, description in OVERRIDABLE.items():
        flag = "--tolerance-" + name.replace(".", "-").replace("_", "-")
        tolerances.add_argument(flag, dest=f"tolerance:{name}", type=float, metavar="X", help=description)
    parser.set_defaults(run=_run_validate)


def _run_validate(args) -> int:
    from mlff_export.validation.report import text_summary
    from mlff_export.validation.validate import validate_artifact

    overrides = {key.partition(":")[2]: value for key, value in vars(args).items() if key.startswith("tolerance:") and value is not None}
    report = validate_artifact(
        args.artifact,
        reference=args.reference,
        structures=args.structures,
        precision=args.precision,
        device=args.device,
        backend=args.backend,
        tolerance_overrides=overrides,
        nve_steps=args.nve_steps,
        report_dir=args.report,
    )
    print(text_summary(report))
    if args.report:
        print(f"report     {args.report}/report.md, report.json, force_parity.png")
    print("PASSED" if report.passed else "FAILED")
    return 0 if report.passed else 1


def _add_bench(subparsers) -> None:
    from mlff_export.bench.cases import ALL_BACKENDS

    parser = subparsers.add_parser("bench", help="benchmark every available backend side by side (JSON, Markdown, plots)")
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT), help="checkpoint card (.json)")
    parser.add_argument("--suite", choices=("quick", "full"), default="quick", help="quick: CPU, under a minute")
    parser.add_argument("--backends", default=None, help=f"comma-separated of {','.join(ALL_BACKENDS)} (default: the suite's: quick eager,onnxruntime; full all)")
    parser.add_argument("--precision", default="fp32,fp16", help="comma-separated, of fp32, fp16")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--out", default="bench/results/latest", help="output folder")
    parser.add_argument("--only", default=None, help="run only the workloads whose name contains this (e.g. water)")
    parser.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from pathlib import Path

    import torch

    from mlff_export.bench.cases import ALL_BACKENDS
    from mlff_export.bench.run import run_benchmark

    backends = _comma_list(args.backends, ALL_BACKENDS, "--backends") if args.backends else None
    precisions = _comma_list(args.precision, ("fp32", "fp16"), "--precision")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    results = run_benchmark(Path(args.checkpoint), args.suite, backends, precisions, device, out, args.only)
    print((out / "results.md").read_text())
    failed = [r for r in results["records"] if "error" in r]
    print(f"wrote {out}/results.json, results.md and plots; {len(results['records'])} measurements, {len(failed)} failed")
    return 0


def _comma_list(text: str, allowed, option: str) -> list[str]:
    """Parse a comma-separated option, refusing unknown values with the allowed ones."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise ValueError(f"{option} must be a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return values


def _add_pipeline(subparsers) -> None:
    parser = subparsers.add_parser(
        "pipeline",
        help="the main job: export (fp32, fp16), build engines where TensorRT exists, validate, benchmark",
    )
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT), help="checkpoint card (.json)")
    parser.add_argument("--out", default="mlff-export-results", help="output folder")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    parser.add_argument("--suite", choices=("quick", "full"), default="quick", help="benchmark suite")
    parser.set_defaults(run=_run_pipeline)


def _run_pipeline(args) -> int:
    """Each step is the subcommand of the same name; artifacts are validated on ONNX Runtime, or on
    TensorRT where an engine could be built (TensorRT installed and a CUDA GPU present)."""
    import importlib.util
    from pathlib import Path

    import torch

    out = Path(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    stem = Path(args.checkpoint).stem
    steps = [("export", ["export", "--checkpoint", args.checkpoint, "--out", str(out / "onnx")])]
    artifacts = {precision: out / "onnx" / f"{stem}.{precision}.onnx" for precision in ("fp32", "fp16")}
    if importlib.util.find_spec("tensorrt") is not None and device.startswith("cuda"):
        for precision in ("fp32", "fp16"):
            plan = out / "engines" / f"{stem}.{precision}.plan"
            steps.append((f"build-engine {precision}", ["build-engine", "--onnx", str(artifacts[precision]),
                                                        "--precision", precision, "--profile", "small-molecules",
                                                        "--profile", "medium", "--out", str(plan)]))
            artifacts[precision] = plan
    else:
        print("build-engine: skipped (needs TensorRT and a CUDA GPU: pip install \"mlff-export[trt]\"); "
              "validating the ONNX graphs on ONNX Runtime instead")
    for precision, artifact in artifacts.items():
        steps.append((f"validate {precision}", ["validate", str(artifact), "--reference", args.checkpoint,
                                                "--device", device, "--report", str(out / f"validate-{precision}")]))
    steps.append(("bench", ["bench", "--checkpoint", args.checkpoint, "--suite", args.suite, "--device", device,
                            "--out", str(out / "bench")]))
    outcomes = []
    for name, argv in steps:
        print(f"\n=== mlff-export {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        outcomes.append((name, main(argv), time.perf_counter() - start))
    print("\n=== pipeline summary")
    for name, code, seconds in outcomes:
        print(f"{name:<22} {'ok' if code == 0 else 'FAILED'}  {seconds:6.1f} s")
    passed = all(code == 0 for _, code, _ in outcomes)
    print(f"results in {out}/")
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="energy, forces, stress of many structures (extxyz, ASE db, folders): in this process or on Ray",
        description="Writes OUT/shards/*.extxyz (results in ASE's conventions), OUT/summary.csv and OUT/manifest.json; "
        "re-running the same command resumes. Ray: docs/scale-out.md.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="extxyz files (.xyz, .extxyz), ASE databases (.db), folders of them")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (on Ray: a path every node can write)")
    parser.add_argument("--model", "--checkpoint", dest="model", default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint card (.json), exported .onnx or .plan engine (default: the bundled reference model)")
    parser.add_argument("--backend", default=None, help="runtime backend (default: from the model file; eager for checkpoints)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available; on Ray: cpu or cuda)")
    parser.add_argument("--batch-size", default="auto", metavar="N|auto",
                        help="structures per model call (default auto: the largest atom count that fits, per worker)")
    parser.add_argument("--shard-size", type=int, help="structures per shard: unit of work, retry and resume (default 1000)")
    parser.add_argument("--min-distance", type=float, metavar="Å",
                        help="atoms closer than this fail as overlapping (default 0.5; 0: no check)")
    parser.add_argument("--ray", metavar="auto|ADDRESS|local", help="run on Ray: local (start one here), auto (this machine's cluster) or HOST:PORT")
    parser.add_argument("--workers", type=int, help="Ray actors (default: one per GPU; on a CPU cluster all CPUs but one)")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray actor (default: 1 where the cluster has GPUs)")
    parser.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from mlff_export.screening import ModelSettings, screen

    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        raise ValueError(f"--batch-size must be a positive integer or auto; got {args.batch_size!r}")
    overlap = {} if args.min_distance is None else {"min_distance": args.min_distance}  # None: the library's default
    batch_size = None if args.batch_size == "auto" else int(args.batch_size)
    settings = ModelSettings(args.model, args.backend, args.device, batch_size, **overlap)
    report = screen(args.inputs, args.out, settings, shard_size=args.shard_size, ray=args.ray,
                    workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    print(f"{report.ok + report.failed} structures in {report.shards} shards ({report.shards_resumed} already done): "
          f"{report.ok} ok, {report.failed} failed; {report.evaluated} evaluated now in {report.seconds:.1f} s "
          f"({report.structures_per_second:.1f} structures/s)")
    print(f"results in {args.out}/shards/*.extxyz, table {args.out}/summary.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlff-export", description=mlff_export.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlff-export {mlff_export.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_info, _add_demo, _add_export, _add_build_engine, _add_validate, _add_bench, _add_pipeline, _add_predict):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, RuntimeError, OSError) as error:  # user mistakes: one line, exit 1
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
