"""The neighbor table built on the CPU from a CPU pair list (vesin), with and without its integer shifts.

    python table_from_pairs.py OUT.json

Periodic water of 10,125 and 98,304 atoms within 5 Å: ``NEIGHBOR_TABLE.feeds`` of ``batch_inputs``
(what the CPU backends feed their graphs) with the lattice shifts vesin gave and with them dropped;
medians of 5 runs after 1 warm-up, one process; the two feeds must be equal.
"""
import json
import platform
import sys
import time

import numpy as np
import torch

from mlff_export.bench.workloads import water_box
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.interface import AtomicInputs
from mlff_export.neighbors import batch_inputs, compute_pairs


def median_seconds(stage, runs: int = 5) -> tuple[float, dict]:
    result = stage()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = stage()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)), result


rows = []
for size in (10_000, 100_000):
    atoms = water_box(size)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, 5.0)])
    without = AtomicInputs(**{**vars(inputs), "lattice_shifts": None})
    lattice_s, with_lattice = median_seconds(lambda: NEIGHBOR_TABLE.feeds(inputs))
    cartesian_s, with_cartesian = median_seconds(lambda: NEIGHBOR_TABLE.feeds(without))
    row = {"atoms": len(atoms), "pairs": inputs.num_pairs, "table_from_lattice_shifts_ms": 1e3 * lattice_s,
           "table_from_cartesian_shifts_ms": 1e3 * cartesian_s,
           "feeds_equal": all(torch.equal(with_lattice[name], with_cartesian[name]) for name in with_lattice)}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(sys.argv[1], "w") as out:
    json.dump({"rows": rows, "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__}, out, indent=1)
