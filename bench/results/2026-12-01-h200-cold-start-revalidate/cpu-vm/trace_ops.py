import time, torch, collections
from torch.fx.experimental import proxy_tensor
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.runtime.joint_graph import traced_in_precision
model = load_checkpoint(REFERENCE_CHECKPOINT)
traced_in_precision(model, "fp32", torch.device("cpu"))  # warm
orig = proxy_tensor.proxy_call
acc = collections.defaultdict(lambda: [0, 0.0]); depth = [0]
def timed(proxy_mode, func, pre_dispatch, args, kwargs):
    depth[0] += 1
    t = time.perf_counter()
    try: return orig(proxy_mode, func, pre_dispatch, args, kwargs)
    finally:
        depth[0] -= 1
        if depth[0] == 0:
            a = acc[str(func)]; a[0] += 1; a[1] += time.perf_counter() - t
proxy_tensor.proxy_call = timed
t = time.perf_counter(); _ = traced_in_precision(model, "fp32", torch.device("cpu")); total = time.perf_counter() - t
print(f"total {total:.2f} s, top-level ops {sum(a[1] for a in acc.values()):.2f} s, {sum(a[0] for a in acc.values())} calls")
for name, (n, s) in sorted(acc.items(), key=lambda kv: -kv[1][1])[:18]: print(f"{s*1e3:7.1f} ms {n:4d}  {name}")
