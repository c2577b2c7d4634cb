import sys, time
t0 = time.time()
import torch
from ase.build import molecule
from mlff_export.runtime import load_calculator
calc = load_calculator(device="cpu", backend="compile", compile_cache=sys.argv[1])
t1 = time.time()
for name in sys.argv[2].split(","):
    a = molecule(name); a.calc = calc
    s = time.time(); a.get_forces(); print(f"{name}: {time.time() - s:.1f} s", flush=True)
print("load", round(t1 - t0, 1), "codegen calls:", [row for row in str(torch._dynamo.utils.compile_times()).splitlines() if "fx_codegen_and_compile" in row or "AOTAutogradCache" in row])
