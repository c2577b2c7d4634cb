"""TensorRT-for-RTX check of the engine build path: export, parse, build (FP32 and FP16), verify.

Runs where only TensorRT for RTX is installed (``tensorrt_rtx`` / ``tensorrt_rtx_bindings``), e.g.
the H100/H200 machines: there RTX parses and builds, but its runtime refuses compute capability 9.0,
so deserialization is reported (with RTX's own validity diagnosis), not required. For each
precision, with the bundled reference model, it

1. exports the neighbor-table graph with ``to_onnx``;
2. parses it with the RTX ONNX parser: errors, layers, plugin layers by type (must be 0);
3. builds a serialized engine with the profiles given (two dynamic ones by default) through
   ``engine_builder.build_engine``, which sets ``REQUIRE_USER_ALLOCATION`` (needed to capture RTX
   engines into CUDA graphs), clears TF32 and uses no timing cache on RTX;
4. verifies the engine against its sidecar (integrity hash, plan sha256, version, GPU) with
   ``check_engine``, as every load does;

and writes ``run.log`` (everything printed), ``build-<precision>.log``, the sidecars
``painn-<precision>.plan.json`` and ``summary.json`` to ``--out`` (plans and ONNX files stay in
``--work-dir``). The last line printed is a one-line summary; exit status 0 when every graph parsed
without errors or plugins, every engine was built with the flag and verified.

    python bench/trt_rtx_check.py --out "$OUT" [--profile small-molecules --profile medium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.cli.options import require_cuda
from mlff_export.export import to_onnx
from mlff_export.export.engine_builder import EngineBuildError, OnnxParseError, build_engine, parse_onnx
from mlff_export.export.engine_profiles import select_profiles
from mlff_export.export.engine_sidecar import EngineMismatchError, check_engine, sidecar_path
from mlff_export.export.tensorrt_compat import (
    TensorRTLibrary,
    TensorRTUnavailableError,
    count_layers_by_type,
    create_logger,
    import_tensorrt,
    plugin_layer_counts,
)

RTX_MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings")


def parse_census(library: TensorRTLibrary, onnx_path: Path) -> dict:
    """Parser errors, layer counts by type and plugin layers of ``onnx_path``."""
    logger = create_logger(library)
    builder = library.module.Builder(logger)
    try:
        network, _parser = parse_onnx(library, builder, logger, onnx_path)
    except OnnxParseError as error:
        return {"parse_errors": len(error.errors), "errors": error.errors, "layers": 0, "layer_counts": {}, "plugins": {}}
    counts = count_layers_by_type(network)
    return {"parse_errors": 0, "errors": [], "layers": sum(counts.values()), "layer_counts": counts,
            "plugins": plugin_layer_counts(counts)}


def deserialization(library: TensorRTLibrary, plan_path: Path) -> dict:
    """Whether this machine's runtime accepts the plan, and RTX's validity verdict from the plan's
    header (``Runtime.get_engine_validity``, TensorRT-RTX docs "Engine Compatibility") where it has one."""
    runtime = library.module.Runtime(create_logger(library))
    blob = plan_path.read_bytes()
    result: dict = {"deserializes_here": runtime.deserialize_cuda_engine(blob) is not None}
    if hasattr(runtime, "get_engine_validity"):
        try:
            result["engine_validity"] = str(runtime.get_engine_validity(blob))
        except Exception as error:  # a diagnosis only: report what the binding says, never fail the check on it
            result["engine_validity"] = f"not available ({type(error).__name__}: {error})"
    return result


def check_precision(library: TensorRTLibrary, model, precision: str, profiles, work_dir: Path, out_dir: Path,
                    say: Callable[[str], None]) -> dict:
    log_lines: list[str] = []

    def report(line: str) -> None:
        say(line)
        log_lines.append(line)

    onnx_path = work_dir / f"painn-{precision}.onnx"
    started = time.perf_counter()
    to_onnx(model, onnx_path, precision=precision)
    report(f"exported {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s")
    result = {"precision": precision, **parse_census(library, onnx_path)}
    report(f"parse: {result['parse_errors']} errors, {result['layers']} layers, plugin layers {result['plugins'] or 0}")
    report(f"layer types: {result['layer_counts']}")
    if result["parse_errors"] == 0:
        plan_path = work_dir / f"painn-{precision}.plan"
        try:
            build = build_engine(onnx_path, plan_path, profiles, precision, report=report, library=library)
        except EngineBuildError as error:
            report(f"build FAILED: {error}")
            result["built"] = False
        else:
            result.update(built=True, plan_mib=round(plan_path.stat().st_size / 2**20, 2),
                          build_seconds=build.sidecar.build_seconds, builder=build.sidecar.builder)
            major, minor = torch.cuda.get_device_capability()
            try:
                check_engine(plan_path, tensorrt_flavour=library.flavour, tensorrt_version=library.version,
                             compute_capability=f"{major}.{minor}")
                result["sidecar_verified"] = True
            except EngineMismatchError as error:
                result["sidecar_verified"] = False
                report(f"sidecar check FAILED: {error}")
            result.update(deserialization(library, plan_path))
            report(f"builder settings: {build.sidecar.builder}")
            report(f"deserialize here: {'accepted' if result['deserializes_here'] else 'refused'}"
                   + (f"; engine validity {result['engine_validity']}" if "engine_validity" in result else ""))
            shutil.copy(sidecar_path(plan_path), out_dir / sidecar_path(plan_path).name)
    (out_dir / f"build-{precision}.log").write_text("\n".join(log_lines) + "\n")
    return result


def passed(result: dict) -> bool:
    return (result["parse_errors"] == 0 and not result["plugins"] and bool(result.get("built"))
            and bool(result.get("sidecar_verified")) and result["builder"]["require_user_allocation"])


def one_line(library: TensorRTLibrary, gpu: str, results: list[dict], profiles) -> str:
    """The run in one line: what was built, with which flags, and what the runtime said."""
    parts = []
    for r in results:
        if r.get("built"):
            flags = "REQUIRE_USER_ALLOCATION" if r["builder"]["require_user_allocation"] else "NO REQUIRE_USER_ALLOCATION"
            parts.append(f"{r['precision']} {r['layers']} layers {sum(r['plugins'].values())} plugins, built "
                         f"{r['plan_mib']} MiB in {r['build_seconds']} s with {flags}, sidecar "
                         f"{'verified' if r['sidecar_verified'] else 'NOT verified'}, deserialize "
                         f"{'accepted' if r['deserializes_here'] else 'refused'}")
        else:
            parts.append(f"{r['precision']} {r['parse_errors']} parse errors, not built")
    verdict = "PASSED" if all(passed(r) for r in results) else "FAILED"
    return (f"trt-rtx-check {verdict}: {library.flavour} {library.version} on {gpu}; profiles "
            f"{'+'.join(p.name for p in profiles)}; " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for run.log, build logs, sidecars and summary.json")
    parser.add_argument("--work-dir", help="folder for ONNX files and plans (default: a temporary folder)")
    parser.add_argument("--profile", action="append", default=[], help="engine profiles (default: small-molecules, medium)")
    args = parser.parse_args(argv)
    require_cuda(parser, "TensorRT-RTX's parse and build")
    try:
        library = import_tensorrt(RTX_MODULES)
    except TensorRTUnavailableError as error:
        parser.error(str(error))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="trt-rtx-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "run.log", "w") as run_log:

        def say(line: str) -> None:
            print(line, flush=True)
            run_log.write(line + "\n")
            run_log.flush()

        model = load_checkpoint(REFERENCE_CHECKPOINT)
        profiles = select_profiles(args.profile or ["small-molecules", "medium"])
        major, minor = torch.cuda.get_device_capability()
        gpu = f"{torch.cuda.get_device_name()} (sm {major}.{minor})"
        say(f"{library.flavour} {library.version} (import {library.import_name}); model: {REFERENCE_CHECKPOINT}; "
            f"GPU: {gpu}; torch {torch.__version__}; profiles: {[p.name for p in profiles]}")
        results = [check_precision(library, model, precision, profiles, work_dir, out_dir, say)
                   for precision in ("fp32", "fp16")]
        summary_line = one_line(library, gpu, results, profiles)
        summary = {"tensorrt": library.describe(), "model": str(REFERENCE_CHECKPOINT), "gpu": gpu,
                   "torch": torch.__version__, "profiles": [p.to_dict() for p in profiles], "results": results,
                   "passed": all(passed(r) for r in results), "summary": summary_line}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(summary_line)
    return 0 if summary["passed"] else 1

if __name__ == "__main__":
    sys.exit(main())
