"""TensorRT-for-RTX check of the engine build path: export, parse, build (FP32 and FP16).

Runs where only TensorRT for RTX is installed (``tensorrt_rtx`` / ``tensorrt_rtx_bindings``), e.g.
the H100 machine: there RTX parses and builds, but deserializing refuses compute capability 9.0,
so the deserialization result is reported, not required. For each precision it

1. exports the reference checkpoint (or a random PaiNN where it is absent) with ``to_onnx``;
2. parses the graph with the RTX ONNX parser: errors, layers, plugin layers by type (must be 0);
3. builds a serialized engine with several profiles through ``engine_builder.build_engine``;

and writes ``build-<precision>.log``, the sidecars ``painn-<precision>.plan.json`` and
``summary.json`` to ``--out`` (plans and ONNX files stay in ``--work-dir``). Exit status 0 when
every graph parsed without errors or plugins and every engine was built.

    python bench/trt_rtx_check.py --out "$OUT" [--profile small-molecules --profile medium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.export import to_onnx
from mlff_export.export.engine_builder import EngineBuildError, OnnxParseError, build_engine, parse_onnx
from mlff_export.export.engine_profiles import select_profiles
from mlff_export.export.engine_sidecar import sidecar_path
from mlff_export.export.tensorrt_compat import (
    TensorRTLibrary,
    count_layers_by_type,
    create_logger,
    import_tensorrt,
    plugin_layer_counts,
)
from mlff_export.model import PaiNN, PaiNNConfig

RTX_MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings")


def reference_or_random_model() -> tuple[torch.nn.Module, str]:
    if REFERENCE_CHECKPOINT.is_file():
        return load_checkpoint(REFERENCE_CHECKPOINT), str(REFERENCE_CHECKPOINT)
    torch.manual_seed(0)
    return PaiNN(PaiNNConfig()).eval(), "random PaiNN (reference checkpoint absent)"


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


def deserializes(library: TensorRTLibrary, plan_path: Path) -> bool:
    """Whether this machine's runtime accepts the plan (RTX on compute capability 9.0 does not)."""
    runtime = library.module.Runtime(create_logger(library))
    return runtime.deserialize_cuda_engine(plan_path.read_bytes()) is not None


def check_precision(library: TensorRTLibrary, model, precision: str, profiles, work_dir: Path, out_dir: Path) -> dict:
    log_lines: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
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
                          build_seconds=build.sidecar.build_seconds, deserializes_here=deserializes(library, plan_path))
            report(f"deserialize here: {'accepted' if result['deserializes_here'] else 'refused (expected on sm 9.0)'}")
            shutil.copy(sidecar_path(plan_path), out_dir / sidecar_path(plan_path).name)
    (out_dir / f"build-{precision}.log").write_text("\n".join(log_lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for logs, sidecars and summary.json")
    parser.add_argument("--work-dir", help="folder for ONNX files and plans (default: a temporary folder)")
    parser.add_argument("--profile", action="append", default=[], help="engine profiles (default: small-molecules, medium)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="trt-rtx-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)

    library = import_tensorrt(RTX_MODULES)
    model, model_source = reference_or_random_model()
    profiles = select_profiles(args.profile or ["small-molecules", "medium"])
    print(f"{library.flavour} {library.version} (import {library.import_name}); model: {model_source}; "
          f"GPU: {torch.cuda.get_device_name()}; profiles: {[p.name for p in profiles]}", flush=True)
    results = [check_precision(library, model, precision, profiles, work_dir, out_dir) for precision in ("fp32", "fp16")]
    passed = all(r["parse_errors"] == 0 and not r["plugins"] and r.get("built") for r in results)
    summary = {"tensorrt": library.describe(), "model": model_source, "gpu": torch.cuda.get_device_name(),
               "profiles": [p.to_dict() for p in profiles], "results": results, "passed": passed}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'precision':<10}{'errors':>7}{'layers':>8}{'plugins':>8}{'built':>7}{'MiB':>8}{'build s':>9}{'deserializes':>14}")
    for r in results:
        print(f"{r['precision']:<10}{r['parse_errors']:>7}{r['layers']:>8}{sum(r['plugins'].values()):>8}"
              f"{str(r.get('built', False)):>7}{r.get('plan_mib', 0):>8}{r.get('build_seconds', 0):>9}"
              f"{str(r.get('deserializes_here', '-')):>14}")
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
