"""The device path's input stages for periodic water, timed apart on the GPU (no model).

    python table_stages.py OUT.json [SIZES...]

For each size (default 10000 and 100000 atoms): vesin-torch's search on the device
(``DeviceFeeds.search``), then the padded table built from that pair list (``table_feeds``) two
ways: reverse pairs matched on the integer lattice shifts the search gave (what the runtime does
now) and on the Cartesian shifts alone (the lattice shifts dropped: what it did before, and what a
caller's own pair list without them gets). Each stage ends with ``torch.cuda.synchronize()``;
medians of 15 runs after 3 warm-ups. The two tables must be equal slot by slot.
"""
import json
import sys
import time

import numpy as np
import torch

from mlff_export.bench.workloads import water_box
from mlff_export.interface import AtomicInputs
from mlff_export.runtime.device_feeds import DeviceFeeds, table_feeds

device = torch.device("cuda")
feeds = DeviceFeeds(cutoff=5.0, padding_species=1, device=device)


def median_seconds(stage, runs: int = 15, warmups: int = 3) -> tuple[float, object]:
    samples = []
    for run in range(warmups + runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = stage()
        torch.cuda.synchronize()
        if run >= warmups:
            samples.append(time.perf_counter() - start)
    return float(np.median(samples)), result


rows = []
for size in [int(s) for s in sys.argv[2:]] or [10_000, 100_000]:
    atoms = water_box(size)
    search_s, inputs = median_seconds(lambda: feeds.search(atoms))
    without = AtomicInputs(**{**vars(inputs), "lattice_shifts": None})
    lattice_s, with_lattice = median_seconds(lambda: table_feeds(inputs, device, 1))
    cartesian_s, with_cartesian = median_seconds(lambda: table_feeds(without, device, 1))
    equal = all(torch.equal(with_lattice[name], with_cartesian[name]) for name in with_lattice)
    row = {"atoms": len(atoms), "pairs": inputs.num_pairs, "table_width": with_lattice["neighbor_index"].shape[1],
           "search_ms": 1e3 * search_s, "table_from_lattice_shifts_ms": 1e3 * lattice_s,
           "table_from_cartesian_shifts_ms": 1e3 * cartesian_s, "tables_equal": equal}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(sys.argv[1], "w") as out:
    json.dump({"rows": rows, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, out, indent=1)
