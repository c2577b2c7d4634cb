"""Experiment as run in call 1 (not runnable at the committed code: the ``compiled`` option of
``NEIGHBOR_TABLE.feeds`` it exercises was in the working tree then and was not kept, README).

The device path's neighbor table for periodic water, eager against compiled, timed apart (no model).

    python table_build.py OUT.json [SIZES...]

For each size (default 10,125 and 98,304 atoms): vesin-torch's search on the device
(``DeviceFeeds.search``), then the padded table at its bucket's shape built from that pair list as
``table_feeds`` builds it, with ``NeighborTable.from_pair_list`` eager (~60 launches from Python)
and compiled (``torch.compile(dynamic=True)``; its first call, which compiles, is reported apart).
Each stage ends with ``torch.cuda.synchronize()``; medians of 15 runs after 3 warm-ups. The two
tables must be equal slot by slot.
"""
import json
import sys
import time

import numpy as np
import torch

from mlff_export.bench.workloads import water_box
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.runtime.device_feeds import UNBOUNDED, DeviceFeeds, closest_distance, largest_row
from mlff_export.runtime.shape_buckets import choose_bucket, pad_table_feeds

device = torch.device("cuda")
feeds = DeviceFeeds(cutoff=5.0, padding_species=1, device=device)


def timed(stage) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = stage()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def median_seconds(stage, runs: int = 15, warmups: int = 3) -> tuple[float, object]:
    samples = [timed(stage) for _ in range(warmups + runs)][warmups:]
    return float(np.median([seconds for seconds, _ in samples])), samples[-1][1]


def padded_table(inputs, compiled: bool) -> dict[str, torch.Tensor]:
    """What ``table_feeds`` does on the device, with ``compiled`` chosen here."""
    bucket = choose_bucket(inputs.num_atoms, largest_row(inputs), inputs.num_structures, [UNBOUNDED])
    table = NEIGHBOR_TABLE.feeds(inputs, width=bucket.neighbors, rows=bucket.atoms, compiled=compiled)
    padded = pad_table_feeds(table, bucket, 1)
    padded["closest_distance"] = closest_distance(padded)
    return padded


rows = []
for size in [int(s) for s in sys.argv[2:]] or [10_125, 98_304]:
    atoms = water_box(size)
    search_s, inputs = median_seconds(lambda: feeds.search(atoms))
    eager_s, eager = median_seconds(lambda: padded_table(inputs, compiled=False))
    first_s, _ = timed(lambda: padded_table(inputs, compiled=True))
    compiled_s, compiled = median_seconds(lambda: padded_table(inputs, compiled=True))
    equal = all(torch.equal(eager[name], compiled[name]) for name in eager)
    row = {"atoms": len(atoms), "pairs": inputs.num_pairs, "table": list(eager["neighbor_index"].shape),
           "search_ms": 1e3 * search_s, "table_eager_ms": 1e3 * eager_s, "table_compiled_ms": 1e3 * compiled_s,
           "table_compiled_first_call_s": first_s, "tables_equal": equal}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(sys.argv[1], "w") as out:
    json.dump({"rows": rows, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, out, indent=1)
