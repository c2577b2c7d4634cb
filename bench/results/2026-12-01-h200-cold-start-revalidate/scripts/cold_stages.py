"""A new process's stages until its first benzene answer, timed from launch by wrapping the
runtime's functions (no profiler overhead). Scratch tool for issue 14's goal 2."""
import time
LAUNCH = time.time()
import functools, json, sys
stamps, spans = {}, {}
def stamp(name): stamps[name] = round(time.time() - LAUNCH, 3)
import torch; stamp("import torch")
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); stamp("CUDA context")
from ase.build import molecule
from mlff_export import REFERENCE_CHECKPOINT
import mlff_export.runtime.calculator as calculator, mlff_export.runtime.joint_graph as jg
import mlff_export.runtime.compile_cache as cc, mlff_export.runtime.aot_package as aot; stamp("import mlff_export.runtime")
def timed(owner, name, label):
    original = getattr(owner, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try: return original(*args, **kwargs)
        finally: spans.setdefault(label, []).append(round(time.perf_counter() - start, 3))
    setattr(owner, name, wrapper)
timed(calculator, "_resolve_model", "checkpoint and model")
timed(jg, "traced_in_precision", "trace joint graph")
timed(cc.CompileCacheKey, "of", "cache key (graph hash)")
timed(cc.CompileCache, "load", "compile cache load")
timed(aot.AotPackage, "load", "aot package look-up")
timed(jg.CompiledBackend, "compiled", "torch.compile wrapper")
timed(jg, "capture_fastest", "capture_fastest (all captures + timing)")
timed(jg, "_CapturedBucket", "bucket set-up (compile on first run + captures)")
timed(jg.CompiledBackend, "bucket_ran", "compile cache save")
calc = calculator.load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="compile-reduce-overhead"); stamp("load_calculator")
benzene = molecule("C6H6"); benzene.calc = calc
benzene.get_forces(); stamp("first benzene call")
start = time.perf_counter(); benzene.positions[0, 0] += 1e-3; benzene.get_forces(); stamps["second call ms"] = round(1e3 * (time.perf_counter() - start), 3)
print(json.dumps({"tag": sys.argv[1], **stamps, "spans_s": spans}))
