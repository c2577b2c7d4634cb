"""Experiment (not part of the package): the compiled joint graph on the pair list against the
neighbor table, periodic water, FP32, one process. Question: does the pair list's peak memory per
real pair fall far enough (no padded slots, no reverse-index gathers) for 98k-atom water in FP32 to
fit 40 GB in two domains (goal 4a)?

    python3 pair_list_vs_table.py OUT_DIR [sizes...]
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
from mlff_export.checkpoint import load_checkpoint
from mlff_export.export.graph_layouts import PAIR_LIST
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
sizes = [int(s) for s in sys.argv[2:]] or [10125, 98304]
device = torch.device("cuda")
rows = out / "rows.jsonl"
(out / "environment.json").write_text(json.dumps(describe_environment(device), indent=1))


def write(row):
    print(json.dumps(row), flush=True)
    with rows.open("a") as stream:
        stream.write(json.dumps(row) + "\n")


def timed(call, repeats=7):
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), seconds


model = load_checkpoint(REFERENCE_CHECKPOINT).to(device)
graph, _ = trace_joint_graph(model, PAIR_LIST, device)
compiled_pairs = torch.compile(graph, fullgraph=True, dynamic=True)

for atoms_count in sizes:
    atoms = water_box(atoms_count)
    # the table path, as shipped (compile-reduce-overhead, whole structure: no memory limit)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="compile-reduce-overhead")
    moved, table_forces, table_energy, table_first = first_call(calc, atoms)

    def table_call():
        moved.positions[0, 0] += 1e-4  # noqa: F821 (a closure over the loop variable: ruff sees its later del)
        moved.get_forces()  # noqa: F821

    table_median, table_samples = timed(table_call)
    table_peak = torch.cuda.max_memory_allocated(device) / 2**30
    del calc, moved
    torch.cuda.empty_cache()

    # the pair list: pairs sorted by center, the graph compiled with symbolic sizes
    pairs = compute_pairs(atoms, model.cutoff)
    order = np.lexsort((pairs.pair_index[1], pairs.pair_index[0]))
    pairs.pair_index, pairs.cell_shifts = pairs.pair_index[:, order], pairs.cell_shifts[order]
    inputs = batch_inputs([atoms], [pairs], device=device)
    feeds = tuple(PAIR_LIST.feeds(inputs).values())
    widths = np.bincount(pairs.pair_index[0], minlength=len(atoms))
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    energy, forces, virial = compiled_pairs(*feeds)
    torch.cuda.synchronize()
    pair_first = time.perf_counter() - start
    pair_median, pair_samples = timed(lambda: compiled_pairs(*feeds))  # noqa: F821
    pair_peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    pair_forces = forces.cpu().numpy()
    row = {
        "atoms": len(atoms), "pairs": int(pairs.pair_index.shape[1]), "max_row": int(widths.max()),
        "mean_row": float(widths.mean()),
        "table": {"first_call_s": table_first, "median_s": table_median, "samples_s": table_samples, "peak_gpu_gib": table_peak},
        "pair_list": {"first_call_s": pair_first, "median_s": pair_median, "samples_s": pair_samples,
                      "peak_gpu_gib_above_inputs": pair_peak,
                      "bytes_per_pair": pair_peak * 2**30 / pairs.pair_index.shape[1]},
        "max_abs_force_difference_ev_per_a": float(np.abs(pair_forces - table_forces).max()),
        "energy_difference_ev": abs(float(energy.sum()) - table_energy),
    }
    write(row)
    del feeds, inputs, energy, forces, virial
