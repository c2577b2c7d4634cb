"""Total energy of a large structure in each float32/float16 backend against float64.

    python bench/energy_accumulation.py OUT_DIR [--atoms 10125] [--device cuda] [--model SPEC [--onnx FP32_GRAPH]]

The bundled reference PaiNN (or ``--model``: any model specification, e.g. a user's
``file.py:factory``; ``--onnx`` its exported FP32 graph, then FP16 is not exported) on periodic liquid water (:func:`mlff_export.bench.workloads.water_box`,
10,125 atoms by default): eager float64 on the CPU is the reference; eager float32 and the ONNX
FP32 and FP16 exports (ONNX Runtime: CUDA EP on a CUDA device, CPU EP otherwise; the CPU EP FP32
always) are compared with it. Structure sums accumulate in float64
(:data:`mlff_export.pair_layouts.STRUCTURE_SUM_DTYPE`); what remains is the float32 rounding of
the result (its spacing is reported: 0.03 eV at -4.6e5 eV) and, for FP16, the body's own error.
Writes ``OUT_DIR/energy_accumulation.json``; exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.workloads import water_box
from mlff_export.export import to_onnx
from mlff_export.model_spec import ModelSpec
from mlff_export.runtime import load_calculator

ENERGY_BAR = 0.01  # eV: issue 17's bar for the FP32 backends


def total_energy(atoms, calculator) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    return float(atoms.get_potential_energy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for energy_accumulation.json")
    parser.add_argument("--atoms", type=int, default=10125, help="about this many atoms of water (default 10125)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=str(REFERENCE_CHECKPOINT), help="model specification (default: the bundled PaiNN)")
    parser.add_argument("--onnx", type=Path, help="the model's exported FP32 graph (default: export FP32 and FP16 here)")
    parser.add_argument("--reference-device", default="cpu", help="where eager float64 runs (default: cpu)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = ModelSpec(args.model)

    atoms = water_box(args.atoms)
    reference = total_energy(atoms, load_calculator(model.load().module, args.reference_device, dtype="float64"))
    rows = []

    def record(backend: str, device: str, calculator) -> None:
        energy = total_energy(atoms, calculator)
        error = abs(energy - reference)
        rows.append(
            {
                "backend": backend,
                "device": device,
                "energy_eV": energy,
                "error_vs_float64_eV": error,
                "float32_spacing_at_energy_eV": float(np.spacing(np.float32(abs(energy)))),
                "within_bar": error < ENERGY_BAR,
            }
        )
        print(f"{backend:<22} {device:<6} E = {energy:.6f} eV   |E - E64| = {error:.4g} eV", flush=True)

    record("eager float32", args.device, load_calculator(model.load().module, args.device))
    with tempfile.TemporaryDirectory() as folder:
        for precision in ("fp32",) if args.onnx else ("fp32", "fp16"):
            path = args.onnx or to_onnx(model.load().module, Path(folder) / f"{model.name}.{precision}.onnx", precision=precision)
            record(f"onnxruntime {precision}", args.device, load_calculator(path, args.device))
            if args.device != "cpu" and precision == "fp32":
                record("onnxruntime fp32", "cpu", load_calculator(path, "cpu"))

    summary = {
        "structure": f"water_box({args.atoms}): {len(atoms)} atoms, periodic",
        "model": model.spec,
        "reference": f"eager float64, {args.reference_device}",
        "reference_energy_eV": reference,
        "bar_eV": ENERGY_BAR,
        "results": rows,
        "environment": describe_environment(torch.device(args.device)),
    }
    (args.out / "energy_accumulation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out / 'energy_accumulation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
