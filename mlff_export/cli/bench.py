"""Benchmark backends side by side on the same structures, in one process: latency through the
calculator, the model call alone, batches, MD steps/s, peak GPU memory and parity with eager.
Writes results.json, results.md and plots (bench/README.md explains every column).

Suites: quick (CPU-sized: the seed molecules, one batch sweep 1-16, an 81-atom water box, 20 MD
steps; eager and ONNX Runtime), full (the GPU run: up to 100k-atom water, batches to 1024,
every backend) and models (benzene, 1024 molecules, 10k-atom water: a user's model, --model,
against its own eager). A backend named in --backends that cannot run here (no GPU, library missing)
stops the command before any work; exit 1 also when a row fails or nothing was measured."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlff_export.bench.availability import ALL_BACKENDS, ARTIFACT_BACKENDS, backend_precisions, unavailable_backends
from mlff_export.cli.options import (
    PRECISIONS,
    UsageError,
    add_device_option,
    add_model_options,
    add_threads_option,
    apply_threads,
    comma_list,
    input_file,
    model_spec,
    output_folder,
    resolve_device,
)

NAME = "bench"
HELP = "benchmark every available backend side by side (JSON, Markdown, plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--suite", choices=("quick", "full", "models"), default="quick",
                        help="quick: the CPU-sized suite (default); full: the GPU suite; models: benzene, 1024 "
                        "molecules and 10k-atom water, for comparing a user's model with its own eager")
    parser.add_argument("--backends", metavar="LIST",
                        help=f"comma-separated, of {', '.join(ALL_BACKENDS)} (default: the suite's: quick "
                        "eager,onnxruntime; full every one that can run here)")
    parser.add_argument("--precision", default="fp32,fp16", metavar="LIST",
                        help="comma-separated, of fp32, fp16 (default: both; PyTorch backends run fp32)")
    add_device_option(parser)
    parser.add_argument("--out", default="bench/results/latest", metavar="DIR", help="output folder (default: bench/results/latest)")
    parser.add_argument("--only", metavar="TEXT", help="run only the workloads whose name contains TEXT (e.g. water)")
    parser.add_argument("--onnx", action="append", default=[], metavar="FILE",
                        help="use this exported graph (NAME.fp32.onnx / NAME.fp16.onnx from `mlff-export export`) "
                        "instead of exporting the model again; repeatable, one per precision")
    add_threads_option(parser)


def onnx_files_by_precision(paths: list[str], precisions: list[str]) -> dict[str, Path] | None:
    """``--onnx`` files keyed by the precision in their name; every requested precision must be given."""
    if not paths:
        return None
    files = {}
    for text in paths:
        path = input_file(text, "--onnx", {".onnx": "an exported ONNX graph"})
        precision = next((p for p in PRECISIONS if path.name.endswith(f".{p}.onnx")), None)
        if precision is None:
            raise UsageError(f"--onnx {path}: expected a name ending in .fp32.onnx or .fp16.onnx (as `mlff-export export` writes)")
        files[precision] = path
    missing = [precision for precision in precisions if precision not in files]
    if missing:
        raise UsageError(f"--onnx gives no graph for --precision {','.join(missing)}")
    return files


def _listed(reasons: dict[str, str]) -> str:
    return "; ".join(f"{backend} {reason}" for backend, reason in reasons.items())


def refuse_impossible_backends(requested: list[str], device_type: str, precisions: list[str]) -> None:
    """One line naming each backend of ``--backends`` that cannot run here, and why."""
    impossible = unavailable_backends(requested, device_type, precisions)
    if impossible:
        raise UsageError(f"bench cannot run what --backends asks for here: {_listed(impossible)}")


def backends_to_run(requested: list[str] | None, suite, device_type: str, precisions: list[str]) -> tuple[list[str], dict[str, str]]:
    """(backends that run, backend -> why not for the suite's defaults that cannot). Refuses a
    selection with nothing to measure, before any work."""
    not_run = unavailable_backends(requested or suite.default_backends, device_type, precisions)
    backends = [backend for backend in requested or suite.default_backends if backend not in not_run]
    if not backends:
        raise UsageError(f"no backend of the {suite.name} suite can run here: {_listed(not_run)}")
    if not any(suite.runs(backend, workload) for backend in backends for workload in suite.workloads):
        names = ", ".join(workload.name for workload in suite.workloads)
        raise UsageError(f"nothing to measure: none of {', '.join(backends)} runs the selected workloads ({names})")
    return backends, not_run


def plan_line(suite, backends: list[str], precisions: list[str], device_name: str, exporting: bool) -> str:
    """What the run will do, printed before it starts."""
    device_type = device_name.partition(":")[0]
    rows = sum(suite.runs(backend, workload) * len(backend_precisions(backend, device_type, precisions))
               for backend in backends for workload in suite.workloads)
    line = f"bench {suite.name} on {device_name}: {rows} rows ({', '.join(backends)} x {len(suite.workloads)} workloads)"
    if exporting:
        line += (f"; exports {len(precisions)} ONNX graph(s) first (about a minute each on a 2-core CPU; --onnx reuses "
                 "the files of `mlff-export export`)")
    return line


def run(args: argparse.Namespace) -> int:
    requested = comma_list(args.backends, ALL_BACKENDS, "--backends") if args.backends else None
    precisions = comma_list(args.precision, PRECISIONS, "--precision")
    spec, out = model_spec(args), output_folder(args.out)
    onnx_files = onnx_files_by_precision(args.onnx, precisions)
    device_name = resolve_device(args.device)
    if requested:
        refuse_impossible_backends(requested, device_name.partition(":")[0], precisions)  # before torch is imported

    from mlff_export.bench.suite import build_suite

    suite = build_suite(args.suite, args.only)
    backends, not_run = backends_to_run(requested, suite, device_name.partition(":")[0], precisions)
    exporting = onnx_files is None and bool(ARTIFACT_BACKENDS & set(backends))
    print(plan_line(suite, backends, precisions, device_name, exporting), flush=True)

    apply_threads(args)
    import torch

    from mlff_export.bench.run import run_benchmark

    results = run_benchmark(spec, suite, backends, precisions, torch.device(device_name), out,
                            not_run=not_run, onnx_files=onnx_files)
    print((out / "results.md").read_text())
    records = results["records"]
    failed = [record for record in records if "error" in record]
    print(f"wrote {out}/results.json, results.md and plots: {len(records) - len(failed)} rows measured, {len(failed)} failed")
    if failed:
        first = failed[0]
        raise RuntimeError(f"{len(failed)} of {len(records)} benchmark rows failed (first: {first['case']}, "
                           f"{first.get('workload', 'building')}: {first['error']}); see {out}/results.md")
    if not records:
        raise RuntimeError("nothing was measured")
    return 0
