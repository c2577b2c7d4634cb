"""Cold start: what a new process pays before it answers, and how the compile cache shortens it.

    python3 -m mlff_export.bench.cold_start --out DIR [--backends compile-reduce-overhead,...]
        [--device cuda] [--onnx MODEL.onnx] [--timeout 540] [--phases cold,warm,aot]

For each backend, two fresh processes run the same task, one after the other:

* ``cold``: empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR``: a new folder) and an empty compile
  cache (:mod:`mlff_export.runtime.compile_cache`): everything is compiled;
* ``warm``: again an empty Inductor cache, but the compile cache the cold process left;
* ``aot`` (compile backends): ``mlff-export compile --aot`` builds the AOTInductor package into that
  compile cache (``aot_build_s``), then a fresh process runs it (:mod:`mlff_export.runtime.aot_package`;
  ``ahead_of_time`` says whether it did).

The task: load the reference model, one benzene call (``first_call_s``: seconds from the process's
launch to its first answer, imports included: the *cold start*), then the many-molecules workload
(:func:`~mlff_export.bench.workloads.many_molecules`, ~100 structures of 2-375 atoms, one call each
as single-point screening sends them: ``first_pass_s``, then ``second_pass_s``), then the median of
20 benzene calls (``warm_call_ms``). Every pass's energies are kept and compared between the phases.
Each record says whether its process could write Python's bytecode caches (``bytecode_written``):
with ``PYTHONDONTWRITEBYTECODE`` set (some container images do; pip installs do not), every process
compiles the source of torch's modules again, seconds of a cold start that a usual install never pays.
Writes ``DIR/cold_start.jsonl`` (a line per process, as it ends) and ``DIR/cold_start.json`` (the
records and the environment); prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mlff_export.cli.options import add_device_option, resolve_device_or_exit

PHASES = ("cold", "warm", "aot")
DEFAULT_BACKENDS = ("eager", "cuda-graphs", "compile-reduce-overhead", "compile-max-autotune")


def child(backend: str, device: str, launched: float, model: str) -> dict:
    """The timed task, in this (fresh) process; ``launched``: the parent's ``time.time()`` at launch."""
    import numpy as np
    import torch
    from ase.build import molecule

    from mlff_export.bench.workloads import many_molecules
    from mlff_export.runtime import load_calculator

    calc = load_calculator(model, device=device, backend=backend if not model.endswith(".onnx") else None)
    loaded_s = time.time() - launched
    benzene = molecule("C6H6")
    benzene.calc = calc
    benzene.get_forces()
    first_call_s = time.time() - launched
    structures = many_molecules()
    passes, energies = [], []
    for _ in range(2):
        start = time.perf_counter()
        for atoms in structures:
            atoms.calc = calc
            atoms.get_forces()
        passes.append(time.perf_counter() - start)
        energies.append([atoms.get_potential_energy() for atoms in structures])
    calls = []
    for step in range(20):
        benzene.positions[0, 0] += 1e-4 * (-1) ** step
        start = time.perf_counter()
        benzene.get_forces()
        calls.append(time.perf_counter() - start)
    cache = getattr(calc.backend, "compile_cache", None)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {
        "loaded_s": loaded_s, "first_call_s": first_call_s, "first_pass_s": passes[0], "second_pass_s": passes[1],
        "warm_call_ms": 1e3 * float(np.median(calls)), "structures": len(structures),
        "buckets_in_cache": None if cache is None else len(cache.buckets), "energies": energies[1],
        "ahead_of_time": getattr(calc.backend, "ahead_of_time", None), "bytecode_written": not sys.dont_write_bytecode,
        "passes_agree_ev": float(np.max(np.abs(np.subtract(*energies)))),
    }


def run_phase(backend: str, phase: str, out: Path, device: str, model: str, timeout: float) -> dict:
    """One fresh process: its own empty Inductor cache; the compile cache shared by the phases."""
    inductor_cache = out / f"inductor-{backend}-{phase}"
    shutil.rmtree(inductor_cache, ignore_errors=True)
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache),
                   "MLFF_EXPORT_COMPILE_CACHE": str(out / "compile-cache")}
    command = [sys.executable, "-m", "mlff_export.bench.cold_start", "--child", backend, "--device", device,
               "--model", model, "--launched", repr(time.time())]
    record = {"backend": backend, "phase": phase}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**record, "error": f"did not finish in {timeout:.0f} s"}
    finally:
        shutil.rmtree(inductor_cache, ignore_errors=True)
    if done.returncode != 0:
        return {**record, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return {**record, **json.loads(done.stdout.strip().splitlines()[-1])}


def build_package(backend: str, out: Path, device: str, timeout: float) -> dict:
    """``mlff-export compile --aot`` into the phases' compile cache: ``aot_build_s``, or ``aot_build_error``."""
    command = [sys.executable, "-m", "mlff_export.cli", "compile", "--aot", "--backend", backend, "--device", device,
               "--cache", str(out / "compile-cache")]
    inductor_cache = out / f"inductor-{backend}-aot-build"  # an empty one: the build compiles everything
    shutil.rmtree(inductor_cache, ignore_errors=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)})
    except subprocess.TimeoutExpired:
        return {"aot_build_error": f"did not finish in {timeout:.0f} s"}
    finally:
        shutil.rmtree(inductor_cache, ignore_errors=True)
    if done.returncode != 0:
        return {"aot_build_error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return {"aot_build_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS))
    add_device_option(parser, default="cuda")
    parser.add_argument("--onnx", help="also time ONNX Runtime on this exported graph")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per process")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"which of {','.join(PHASES)} to run (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = [phase for phase in args.phases.split(",") if phase]
    if not set(phases) <= set(PHASES):
        parser.error(f"--phases: expected some of {','.join(PHASES)}, got {args.phases!r}")
    if args.child:
        print(json.dumps(child(args.child, args.device, args.launched, args.model)))
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.device = resolve_device_or_exit(parser, args.device)  # not in a child: its clock runs from launch
    from mlff_export import REFERENCE_CHECKPOINT

    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(backend, str(REFERENCE_CHECKPOINT)) for backend in args.backends.split(",") if backend]
    runs += [("onnxruntime", args.onnx)] if args.onnx else []
    records = []
    for backend, model in runs:
        cold = None
        for phase in phases:
            if phase == "aot" and not backend.startswith("compile"):
                continue
            built = build_package(backend, args.out, args.device, args.timeout) if phase == "aot" else {}
            record = {**built, **run_phase(backend, phase, args.out, args.device, model, args.timeout)}
            if phase == "cold":
                cold = record
            elif "energies" in record and "energies" in (cold or {}):  # the same numbers from kept or packaged kernels
                record[f"{phase}_vs_cold_max_abs_energy_ev"] = max(abs(a - b) for a, b in zip(record["energies"], cold["energies"]))
            records.append(record)
            with open(args.out / "cold_start.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(summary_line(record), flush=True)
    import torch

    from mlff_export.bench.environment import describe_environment

    document = {"records": records, "environment": describe_environment(torch.device(args.device))}
    (args.out / "cold_start.json").write_text(json.dumps(document, indent=1))
    return 0


def summary_line(record: dict) -> str:
    label = f"{record['backend']:<26}{record['phase']:<6}"
    if "error" in record:
        return f"{label}error: {record['error']}"
    return (f"{label}first answer {record['first_call_s']:7.1f} s  first pass {record['first_pass_s']:7.1f} s  "
            f"second pass {record['second_pass_s']:6.2f} s  warm call {record['warm_call_ms']:6.3f} ms  "
            f"cache buckets {record['buckets_in_cache']}"
            + (f"  package built in {record['aot_build_s']:.1f} s, ran: {record['ahead_of_time']}" if "aot_build_s" in record else "")
            + (f"  package not built: {record['aot_build_error']}" if "aot_build_error" in record else "")
            + ("  (no bytecode written: PYTHONDONTWRITEBYTECODE)" if record.get("bytecode_written") is False else ""))


if __name__ == "__main__":
    raise SystemExit(main())
