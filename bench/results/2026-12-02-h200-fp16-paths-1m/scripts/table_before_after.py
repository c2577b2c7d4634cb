"""The device path's padded neighbor table for periodic water, as built before this session and now,
one process (no model).

    python table_before_after.py OUT.json OLD_PAIR_LAYOUTS.py [SIZES...]

OLD_PAIR_LAYOUTS.py is ``mlff_export/pair_layouts.py`` at 86cec91 (``git show
86cec91:mlff_export/pair_layouts.py``). Before: the table at its own width, then padded to its
bucket (``pad_table_feeds``). Now: ``table_feeds`` (the table built at the bucket's shape, fewer
launches and reads). Both from the same vesin-torch pair list; each stage ends with
``torch.cuda.synchronize()``; medians of 15 runs after 3 warm-ups; the two must be equal slot by slot.
"""
import importlib.util
import json
import sys
import time

import numpy as np
import torch

from mlff_export.bench.workloads import water_box
from mlff_export.runtime.device_feeds import UNBOUNDED, DeviceFeeds, table_feeds
from mlff_export.runtime.shape_buckets import choose_bucket, pad_table_feeds, table_sizes

device = torch.device("cuda")
feeds = DeviceFeeds(cutoff=5.0, padding_species=1, device=device)
spec = importlib.util.spec_from_file_location("old_pair_layouts", sys.argv[2])
old = sys.modules["old_pair_layouts"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(old)


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


def before(inputs) -> dict[str, torch.Tensor]:
    table = old.NeighborTable.from_pair_list(inputs.pair_index, inputs.pair_shifts, inputs.num_atoms, None, inputs.lattice_shifts)
    unpadded = {"positions": inputs.positions, "species": inputs.species, "neighbor_index": table.neighbor_index,
                "neighbor_shifts": table.neighbor_shifts, "neighbor_mask": table.neighbor_mask,
                "reverse_index": table.reverse_index, "structure_index": inputs.structure_index, "cell": inputs.cell}
    return pad_table_feeds(unpadded, choose_bucket(*table_sizes(unpadded), [UNBOUNDED]), 1)


rows = []
for size in [int(s) for s in sys.argv[3:]] or [10_125, 98_304]:
    atoms = water_box(size)
    search_s, inputs = median_seconds(lambda: feeds.search(atoms))
    before_s, old_feeds = median_seconds(lambda: before(inputs))
    now_s, new_feeds = median_seconds(lambda: table_feeds(inputs, device, 1))
    equal = all(torch.equal(old_feeds[name], new_feeds[name]) for name in new_feeds)
    row = {"atoms": len(atoms), "pairs": inputs.num_pairs, "table": list(new_feeds["neighbor_index"].shape),
           "search_ms": 1e3 * search_s, "table_before_ms": 1e3 * before_s, "table_now_ms": 1e3 * now_s, "tables_equal": equal}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(sys.argv[1], "w") as out:
    json.dump({"rows": rows, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}, out, indent=1)
