"""Where the host time of one benzene call through the calculator goes (compile-reduce-overhead),
stage by stage: each stage function wrapped with a perf_counter_ns timer, medians over 2000 calls
(a new geometry each). Stages nest: ``calculate`` holds the others; ``get_forces`` is the whole call.

    python calculator_stages.py PRECISION
"""
import collections
import functools
import json
import sys
import time

import ase.calculators.calculator as ase_calculator
import numpy as np
import torch
from ase.build import molecule

import mlff_export.runtime.calculator as calculator_module
import mlff_export.runtime.joint_graph as joint_graph
import mlff_export.runtime.static_feeds as static_feeds
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator
from mlff_export.runtime.device_feeds import DeviceFeeds

samples = collections.defaultdict(list)


def timed(name, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            samples[name].append(time.perf_counter_ns() - start)
    return wrapper


calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile-reduce-overhead", precision=sys.argv[1], compile_cache=False)
atoms = molecule("C6H6")
atoms.calc = calc
atoms.get_forces()
bucket = next(iter(calc.backend._buckets.values()))


def whole_calls(count):
    times = []
    for step in range(count):
        atoms.positions[0, 0] += 1e-4 * (-1) ** step
        start = time.perf_counter_ns()
        atoms.get_forces()
        times.append(time.perf_counter_ns() - start)
    return float(np.median(times[200:])) / 1e3


unwrapped = whole_calls(2200)

calculator_module.check_structure = timed("check_structure", calculator_module.check_structure)
calculator_module.check_density = timed("check_density", calculator_module.check_density)
ase_calculator.Calculator.calculate = timed("ASE Calculator.calculate (atoms.copy)", ase_calculator.Calculator.calculate)
calculator_module.MLFFCalculator.check_state = timed("check_state", calculator_module.MLFFCalculator.check_state)
calculator_module.MLFFCalculator.calculate = timed("calculate (all of ours)", calculator_module.MLFFCalculator.calculate)
calculator_module.MLFFCalculator._results = timed("_results", calculator_module.MLFFCalculator._results)
DeviceFeeds.dense = timed("DeviceFeeds.dense (staging)", DeviceFeeds.dense)  # DeviceFeeds._dense before 7d2c9ca (the first run)
static_feeds.StaticFeeds.load = timed("StaticFeeds.load (H2D copy)", static_feeds.StaticFeeds.load)
joint_graph._CapturedBucket.launch = timed("_CapturedBucket.launch (load+replay+record)", joint_graph._CapturedBucket.launch)
bucket.graph.replay = timed("CUDAGraph.replay", bucket.graph.replay)
original_launch = calc.backend.launch_atoms


def launch_atoms(atoms):
    finish = timed("launch_atoms", original_launch)(atoms)
    return timed("finish (wait + unpack)", finish)


calc.backend.launch_atoms = launch_atoms
whole_calls(200)
samples.clear()
rows = {"get_forces, no timers": unwrapped, "get_forces, with the stage timers": whole_calls(2000)}
rows |= {name: float(np.median(values)) / 1e3 for name, values in samples.items()}
model = []
feeds = calc.backend.device_feeds(atoms)
for _ in range(2000):
    start = time.perf_counter_ns()
    calc.backend.run(feeds)
    torch.cuda.synchronize()
    model.append(time.perf_counter_ns() - start)
rows["model call (run + synchronize)"] = float(np.median(model)) / 1e3
for name, value in rows.items():
    print(f"{name:<48} {value:8.1f} µs")
print(json.dumps(rows))
