"""The main job on one model (a checkpoint card, or --model/--weights/--model-kwargs as for
export), each step the subcommand of the same name:

  export        NAME.fp32.onnx, NAME.fp16.onnx            -> OUT/onnx/
  build-engine  NAME.fp32.plan, NAME.fp16.plan             -> OUT/engines/  (TensorRT and a CUDA GPU only)
  validate      each engine, else each ONNX graph          -> OUT/validate-fp32/, OUT/validate-fp16/
  bench         the exported graphs beside eager           -> OUT/bench/

Ends with a summary (each step, ok or FAILED, seconds; also OUT/summary.txt) and PASSED or FAILED."""

from __future__ import annotations

import argparse
import time

from mlff_export.cli.options import (
    add_device_option,
    add_model_options,
    add_threads_option,
    model_spec,
    output_folder,
    resolve_device,
)

NAME = "pipeline"
HELP = "the main job: export (fp32, fp16), build engines where TensorRT exists, validate, benchmark"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--out", default="mlff-export-results", metavar="DIR", help="output folder (default: mlff-export-results)")
    add_device_option(parser)
    parser.add_argument("--suite", choices=("quick", "full"), default="quick", help="benchmark suite (default: quick)")
    add_threads_option(parser)


def steps(args: argparse.Namespace, device: str, tensorrt_here: bool) -> list[tuple[str, list[str]]]:
    """(step name, mlff-export arguments) of each step, in order."""
    spec, out = model_spec(args), output_folder(args.out)
    stem = spec.name
    onnx = {precision: out / "onnx" / f"{stem}.{precision}.onnx" for precision in ("fp32", "fp16")}
    planned = [("export", ["export", *spec.argv(), "--out", str(out / "onnx")])]
    artifacts = dict(onnx)
    if tensorrt_here:
        for precision in ("fp32", "fp16"):
            plan = out / "engines" / f"{stem}.{precision}.plan"
            planned.append((f"build-engine {precision}", ["build-engine", "--onnx", str(onnx[precision]), "--precision", precision,
                                                          "--profile", "small-molecules", "--profile", "medium", "--out", str(plan)]))
            artifacts[precision] = plan
    for precision, artifact in artifacts.items():
        planned.append((f"validate {precision}", ["validate", str(artifact), *spec.argv("--reference"), "--device", device,
                                                  "--report", str(out / f"validate-{precision}")]))
    planned.append(("bench", ["bench", *spec.argv(), "--suite", args.suite, "--device", device,
                              "--out", str(out / "bench"), "--onnx", str(onnx["fp32"]), "--onnx", str(onnx["fp16"])]))
    threads = ["--threads", str(args.threads)] if args.threads else []
    return [(name, argv + threads if argv[0] in ("validate", "bench") else argv) for name, argv in planned]


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from mlff_export.cli import main

    out = output_folder(args.out)
    device = resolve_device(args.device)
    tensorrt_here = importlib.util.find_spec("tensorrt") is not None and device.startswith("cuda")
    if not tensorrt_here:
        print("build-engine: skipped (needs TensorRT and a CUDA GPU); validating the ONNX graphs on ONNX Runtime instead")
    outcomes = []
    for name, argv in steps(args, device, tensorrt_here):
        print(f"\n=== mlff-export {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        code = main(argv)
        outcomes.append((name, code, time.perf_counter() - start))
    passed = all(code == 0 for _, code, _ in outcomes)
    lines = [f"{name:<22} {'ok' if code == 0 else 'FAILED'}  {seconds:6.1f} s" for name, code, seconds in outcomes]
    lines += [f"{'total':<22}     {sum(seconds for _, _, seconds in outcomes):6.1f} s", "PASSED" if passed else "FAILED"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n=== pipeline summary (also in summary.txt)")
    print("\n".join(lines[:-1]))
    print(f"results in {out}/")
    print(lines[-1])
    return 0 if passed else 1
