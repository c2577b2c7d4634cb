"""Where a new process's time goes before its first benzene answer (stages timed from launch;
cProfile of model loading and of the first call). Scratch tool for issue 14's goal 2."""
import time
LAUNCH = time.time()
import cProfile, io, json, pstats, sys
stamps = {}
def stamp(name): stamps[name] = round(time.time() - LAUNCH, 3)
import torch; stamp("import torch")
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); stamp("CUDA context")
from ase.build import molecule
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator; stamp("import mlff_export.runtime")
out = sys.argv[1]; tag = sys.argv[2]
def profiled(name, call):
    profile = cProfile.Profile(); profile.enable(); value = call(); profile.disable(); stamp(name)
    text = io.StringIO(); pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(70)
    open(f"{out}/{tag}-{name.replace(' ', '-')}.txt", "w").write(text.getvalue())
    return value
calc = profiled("load_calculator", lambda: load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="compile-reduce-overhead"))
benzene = molecule("C6H6"); benzene.calc = calc
profiled("first benzene call", benzene.get_forces)
start = time.perf_counter(); benzene.positions[0, 0] += 1e-3; benzene.get_forces(); stamps["second call ms"] = 1e3 * (time.perf_counter() - start)
print(json.dumps({"tag": tag, **stamps}))
