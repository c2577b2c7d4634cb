"""Experiment (not part of the package): the compiled backend's two paths for large structures in
one process, periodic water through the calculator (compile-reduce-overhead): the neighbor table
(``backend.pair_list_from = None``, the code before this session) and the pair list (as shipped).

    python3 paths_compared.py OUT_DIR ROW...     ROW = precision:atoms:path[:memory_limit_gb]

Each row: first call, median of 10 calls (one atom moved 1e-4 Å each), peak GPU memory, and up to
20,000 atoms the largest force and energy-per-atom differences from eager FP32.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.timing import first_call
from mlff_export.bench.workloads import water_box
from mlff_export.runtime import load_calculator

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
device = torch.device("cuda")
(out / "environment.json").write_text(json.dumps(describe_environment(device), indent=1))
references = {}
for spec in sys.argv[2:]:
    precision, atoms_count, path, *limit = spec.split(":")
    limit = float(limit[0]) if limit else None
    atoms = water_box(int(atoms_count))
    if len(atoms) <= 20_000 and len(atoms) not in references:
        references[len(atoms)] = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict([atoms])[0]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="compile-reduce-overhead", precision=precision,
                           memory_limit_gb=limit)
    if path == "table":
        calc.backend.pair_list_from = None
    moved, forces, energy, first = first_call(calc, atoms)
    seconds = []
    for step in range(10):
        moved.positions[0, 0] += 1e-4 * (-1) ** step
        start = time.perf_counter()
        moved.get_forces()
        seconds.append(time.perf_counter() - start)
    row = {"precision": precision, "atoms": len(atoms), "path": path, "memory_limit_gb": limit, "first_call_s": first,
           "median_s": float(np.median(seconds)), "samples_s": seconds,
           "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30, "energy_per_atom_ev": energy / len(atoms)}
    reference = references.get(len(atoms))
    if reference is not None:
        row["max_abs_force_error_ev_per_a"] = float(np.abs(forces - reference["forces"]).max())
        row["energy_per_atom_error_ev"] = abs(energy - reference["energy"]) / len(atoms)
    print(json.dumps(row), flush=True)
    with (out / "rows.jsonl").open("a") as stream:
        stream.write(json.dumps(row) + "\n")
    del calc, moved
