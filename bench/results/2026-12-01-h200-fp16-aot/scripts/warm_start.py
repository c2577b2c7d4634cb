"""Where a new process's first benzene answer goes with the compile cache filled; as run on the H200 (warm-start.txt)."""
import cProfile, pstats, sys, time
t0 = time.time()
import torch
from ase.build import molecule
from mlff_export.runtime import load_calculator
t1 = time.time()
calc = load_calculator(device="cuda", backend="compile-reduce-overhead", compile_cache="/tmp/cc")
t2 = time.time()
atoms = molecule("C6H6"); atoms.calc = calc
profile = cProfile.Profile(); profile.enable()
atoms.get_forces(); torch.cuda.synchronize()
profile.disable()
t3 = time.time()
print(f"{sys.argv[1]}: import {t1 - t0:.1f} s, load_calculator {t2 - t1:.1f} s, first call {t3 - t2:.1f} s", flush=True)
print(torch._dynamo.utils.compile_times())
if sys.argv[1] == "warm":
    pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
