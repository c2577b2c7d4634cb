import sys, time
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
import mlff_export.export.joint_graph as jgm
flag = sys.argv[1] == "1"
orig = jgm.make_fx
def patched(*a, **k):
    k["record_stack_traces"] = flag
    return orig(*a, **k)
jgm.make_fx = patched
model = load_checkpoint(REFERENCE_CHECKPOINT)
t = time.perf_counter(); jgm.trace_joint_graph(model); print(flag, round(time.perf_counter() - t, 2))
