"""Benzene through compile-reduce-overhead with the pair-tensor recomputation on or off: kernels
per replay and their GPU time, replay, model call, calculator call, parity with eager FP32.

    python benzene_toggle.py on|off PRECISION
"""
import json
import sys
import time

import numpy as np
import torch
from ase.build import molecule

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator
from mlff_export.runtime.joint_graph import CompiledBackend

CompiledBackend.recomputes_pair_tensors = sys.argv[1] == "on"
precision = sys.argv[2]
reference = molecule("C6H6")
reference.calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="eager")
reference_energy, reference_forces = reference.get_potential_energy(), reference.get_forces()


def median_us(call, repeats=1000, warm=100):
    for _ in range(warm):
        call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        call()
        torch.cuda.synchronize()
        samples.append(time.perf_counter_ns() - t)
    return float(np.median(samples)) / 1e3


started = time.perf_counter()
calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile-reduce-overhead", precision=precision, compile_cache=False)
mol = molecule("C6H6")
mol.calc = calc
energy, forces = mol.get_potential_energy(), mol.get_forces()
first = time.perf_counter() - started
backend = calc.backend
feeds = backend.device_feeds(mol)
model_us = median_us(lambda: backend.run(feeds))
step = [0]


def call():
    step[0] += 1
    mol.positions[0, 0] += 1e-4 * (-1) ** step[0]
    mol.get_forces()


calculator_us = [median_us(call) for _ in range(3)]
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
    for _ in range(20):
        backend.run(feeds)
    torch.cuda.synchronize()
kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
print(json.dumps({
    "recompute": sys.argv[1], "precision": precision, "first_answer_s": round(first, 1), "kernels_per_replay": len(kernels) / 20,
    "kernel_gpu_us_per_replay": round(sum(e.device_time for e in kernels) / 20, 1), "model_call_us": round(model_us, 1),
    "calculator_call_us_blocks": [round(x, 1) for x in calculator_us], "energy_diff_eV": abs(energy - reference_energy),
    "max_force_diff_eV_per_A": float(np.abs(forces - reference_forces).max()),
}), flush=True)
