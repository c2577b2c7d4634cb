"""ONNX Runtime CUDA EP parity: exported FP32 and FP16 graphs vs eager PyTorch, on the GPU machine.

For each precision it exports the reference checkpoint (or, where it is absent, a random default
PaiNN with xTB-sized reference energies) with ``to_onnx``, runs the graph with ONNX Runtime's
CUDA EP (IOBinding on torch CUDA tensors) and CPU EP, and compares both with eager float32 on the
CPU under :data:`mlff_export.export.parity.PARITY_TOLERANCES`: molecules, periodic cells (one
smaller than the cutoff), a 64-atom cell, a lone atom and all of them as one batch. Writes
``summary.json`` to ``--out``; exit status 0 when every comparison passed.

    python bench/ort_cuda_parity.py --out "$OUT"
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.export import to_onnx
from mlff_export.model import PaiNN
from mlff_export.runtime.onnxruntime_backend import OnnxRuntimeBackend
from mlff_export.runtime.parity import compare_with_eager


def structures() -> dict[str, list[Atoms]]:
    """Named batches: single structures and one mixed batch of all of them."""
    rng = np.random.default_rng(0)

    def rattled(atoms: Atoms) -> Atoms:
        atoms = atoms.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        return atoms

    singles = {
        "H2O": rattled(molecule("H2O")),
        "benzene": rattled(molecule("C6H6")),
        "CH4-symmetric": molecule("CH4"),
        "diamond-primitive (cell < cutoff)": rattled(bulk("C", "diamond", a=3.57)),
        "diamond-64": rattled(bulk("C", "diamond", a=3.57, cubic=True) * (2, 2, 2)),
        "lone H": Atoms("H", positions=[[0.0, 0.0, 0.0]]),
    }
    batches = {name: [atoms] for name, atoms in singles.items()}
    batches["mixed batch"] = list(singles.values())
    return batches


def reference_model() -> tuple[PaiNN, str]:
    if REFERENCE_CHECKPOINT.is_file():
        return load_checkpoint(REFERENCE_CHECKPOINT), str(REFERENCE_CHECKPOINT.name)
    torch.manual_seed(0)
    model = PaiNN()
    model.atom_reference_energies.copy_(torch.tensor([-13.6, -1030.0, -1480.0, -2040.0]))
    return model.eval(), "random default PaiNN (reference checkpoint absent)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for summary.json")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, model_name = reference_model()
    summary = {"model": model_name, "torch": torch.__version__, "results": []}
    import onnxruntime

    summary["onnxruntime"] = onnxruntime.__version__
    summary["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    passed = True
    with tempfile.TemporaryDirectory() as work_dir:
        for precision in ("fp32", "fp16"):
            start = time.perf_counter()
            path = to_onnx(model, Path(work_dir) / f"painn.{precision}.onnx", precision=precision)
            summary[f"export_seconds_{precision}"] = round(time.perf_counter() - start, 1)
            for device in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
                backend = OnnxRuntimeBackend(path, torch.device(device))
                for name, batch in structures().items():
                    deviations = compare_with_eager(backend, model, batch, precision)
                    ok = all(deviation.passed for deviation in deviations.values())
                    passed &= ok
                    row = {"precision": precision, "device": device, "case": name, "atoms": sum(map(len, batch)), "passed": ok}
                    row |= {output: {"difference": d.difference, "allowed": d.allowed} for output, d in deviations.items()}
                    summary["results"].append(row)
                    print(f"{precision} {device:4s} {name:36s} " + "  ".join(
                        f"|d{key}| {d.difference:.2e} (<= {d.allowed:.1e})" for key, d in deviations.items()
                    ) + ("" if ok else "  FAILED"))
    summary["passed"] = passed
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
