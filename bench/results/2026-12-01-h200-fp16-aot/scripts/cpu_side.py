"""Where the CPU side of one benzene calculator call goes (cProfile), compile-reduce-overhead; as run on the H200 (cpu-side.txt)."""
import cProfile, pstats, sys, time
import numpy as np
from ase.build import molecule
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

for precision in ("fp32",):
    calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend=sys.argv[1], precision=precision)
    atoms = molecule("C6H6"); atoms.calc = calc
    def call(step=[0]):
        step[0] += 1
        atoms.positions[0, 0] += 1e-5 * (-1) ** step[0]
        atoms.get_forces()
    for _ in range(50): call()
    samples = []
    for _ in range(300):
        t = time.perf_counter(); call(); samples.append(time.perf_counter() - t)
    print(sys.argv[1], precision, "median call µs", 1e6 * np.median(samples), flush=True)
    profile = cProfile.Profile(); profile.enable()
    for _ in range(300): call()
    profile.disable()
    stats = pstats.Stats(profile); stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
