"""Where one benzene calculator call's wall time goes (no cProfile: perf_counter_ns wrappers)."""
import sys, time, collections
import numpy as np
import torch
from ase.build import molecule
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator
import mlff_export.runtime.calculator as calc_module
from ase.calculators.calculator import Calculator

totals = collections.defaultdict(int)
def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter_ns() - start
    return wrapper

for precision in sys.argv[2].split(","):
    calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend=sys.argv[1], precision=precision)
    atoms = molecule("C6H6"); atoms.calc = calc
    def call(step=[0]):
        step[0] += 1
        atoms.positions[0, 0] += 1e-4 * (-1) ** step[0]
        atoms.get_forces()
    for _ in range(200): call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(1000):
        t = time.perf_counter_ns(); call(); samples.append(time.perf_counter_ns() - t)
    print(sys.argv[1], precision, "plain median call µs", np.median(samples) / 1e3, flush=True)
    # instrumented
    backend = calc.backend
    calc.check_state = timed("check_state", calc.check_state)
    if precision == sys.argv[2].split(",")[0]:  # module-level wrappers once
        calc_module.check_structure = timed("check_structure", calc_module.check_structure)
        calc_module.check_density = timed("check_density", calc_module.check_density)
        Calculator.calculate = timed("ASE Calculator.calculate (atoms.copy)", Calculator.calculate)
    backend.launch_atoms = timed("launch_atoms (total)", backend.launch_atoms)
    backend.device_feeds._dense = timed("  device_feeds._dense", backend.device_feeds._dense)
    backend.launch_captured = timed("  launch_captured (load + replay + record)", backend.launch_captured)
    calc._results = timed("_results", calc._results)
    original_launch = backend.launch_captured
    def launched(*a, **k):
        finish = original_launch(*a, **k)
        return None if finish is None else timed("finish (sync + numpy)", finish)
    backend.launch_captured = launched
    totals.clear()
    samples = []
    for _ in range(1000):
        t = time.perf_counter_ns(); call(); samples.append(time.perf_counter_ns() - t)
    print(sys.argv[1], precision, "instrumented median call µs", np.median(samples) / 1e3, "mean", np.mean(samples) / 1e3)
    for name, ns in totals.items():
        print(f"   {name:45s} {ns / 1000 / 1e3:8.1f} µs/call")
    # GPU time of a replay alone
    feeds = backend.device_feeds(atoms)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    backend.run(feeds); torch.cuda.synchronize()
    start.record()
    for _ in range(200): backend.run(feeds)
    end.record(); torch.cuda.synchronize()
    print(f"   replay GPU time (200 back to back) {start.elapsed_time(end) / 200 * 1e3:.1f} µs")
    del calc, backend
