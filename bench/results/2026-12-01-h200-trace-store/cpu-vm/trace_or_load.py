"""traced_in_precision with a store folder, one process per line: the first traces and stores, later ones load (CPU VM; python trace_or_load.py fp32)."""
import time, sys, logging
logging.basicConfig(level=logging.INFO)
t0=time.perf_counter()
import torch
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.runtime.joint_graph import traced_in_precision
model = load_checkpoint(REFERENCE_CHECKPOINT)
t1=time.perf_counter()
m, g, ex = traced_in_precision(model, sys.argv[1], torch.device("cpu"), "store")
t2=time.perf_counter()
out = g(*ex)
print("imports+load", round(t1-t0,2), "trace-or-load", round(t2-t1,2), [o.sum().item() for o in out])
