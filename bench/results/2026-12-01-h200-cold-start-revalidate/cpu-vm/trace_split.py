import time, torch
from torch.fx.experimental.proxy_tensor import make_fx
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.runtime.joint_graph import traced_in_precision
model = load_checkpoint(REFERENCE_CHECKPOINT)
def tiny(x, y):
    x = x.requires_grad_(True)
    e = (x.sin() * y).sum()
    return torch.autograd.grad(e, x)[0]
t = time.perf_counter(); make_fx(tiny, tracing_mode="symbolic")(torch.randn(5, 3), torch.randn(5, 3)); t1 = time.perf_counter()
traced_in_precision(model, "fp32", torch.device("cpu")); t2 = time.perf_counter()
print(f"tiny symbolic trace (one-time init) {t1-t:.2f} s, joint graph trace after it {t2-t1:.2f} s")
