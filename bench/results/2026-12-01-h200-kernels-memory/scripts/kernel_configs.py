"""Benzene through compile-reduce-overhead under Inductor config variants: kernels per replay,
GPU time of a replay, model call, calculator call, parity to eager FP32. One variant per process.

    python kernel_configs.py VARIANT PRECISION[,PRECISION]   (VARIANT: a key of VARIANTS)
"""
import gc, json, sys, time
import numpy as np
import torch
import torch._inductor.config as inductor
from ase.build import molecule
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

VARIANTS = {
    "base": {},
    "combo": {"combo_kernels": True},
    "batch-linear": {"post_grad_fusion_options": {"batch_linear_post_grad": {}}},
    "combo+batch-linear": {"combo_kernels": True, "post_grad_fusion_options": {"batch_linear_post_grad": {}}},
    "coordinate-descent": {"coordinate_descent_tuning": True},
    "freezing": {"freezing": True},
    "freezing+combo": {"freezing": True, "combo_kernels": True},
    "autotune-gemm": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON,ATEN"},
    "autotune-gemm+combo": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON,ATEN", "combo_kernels": True},
}
variant = sys.argv[1]
for name, value in VARIANTS[variant].items():
    setattr(inductor, name, value)

reference = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="eager")
atoms = molecule("C6H6")
atoms.calc = reference
reference_energy, reference_forces = atoms.get_potential_energy(), atoms.get_forces()


def median_us(call, repeats=1000, warm=100):
    for _ in range(warm):
        call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter_ns(); call(); torch.cuda.synchronize(); samples.append(time.perf_counter_ns() - t)
    return float(np.median(samples)) / 1e3


for precision in sys.argv[2].split(","):
    started = time.perf_counter()
    calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile-reduce-overhead", precision=precision, compile_cache=False)
    mol = molecule("C6H6"); mol.calc = calc
    energy, forces = mol.get_potential_energy(), mol.get_forces()
    first = time.perf_counter() - started
    backend = calc.backend
    feeds = backend.device_feeds(mol)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    backend.run(feeds); torch.cuda.synchronize()
    start.record()
    for _ in range(500):
        backend.run(feeds)
    end.record(); torch.cuda.synchronize()
    replay_us = start.elapsed_time(end) / 500 * 1e3
    model_us = median_us(lambda: backend.run(feeds))  # noqa: F821 (deleted at the loop's end, after use)

    def call(step=[0]):
        step[0] += 1
        mol.positions[0, 0] += 1e-4 * (-1) ** step[0]  # noqa: F821
        mol.get_forces()  # noqa: F821
    calculator_blocks = [median_us(call) for _ in range(3)]
    gc.disable()
    calculator_no_gc = median_us(call)
    gc.enable()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(20):
            backend.run(feeds)
        torch.cuda.synchronize()
    kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    names = {}
    for e in kernels:
        names.setdefault(e.name[:70], [0, 0.0])
        names[e.name[:70]][0] += 1
        names[e.name[:70]][1] += e.device_time
    row = {
        "variant": variant, "precision": precision, "config": {k: str(v) for k, v in VARIANTS[variant].items()},
        "first_answer_s": round(first, 1), "kernels_per_replay": len(kernels) / 20,
        "kernel_gpu_us_per_replay": round(sum(e.device_time for e in kernels) / 20, 1),
        "replay_us_back_to_back": round(replay_us, 1), "model_call_us": round(model_us, 1),
        "calculator_call_us_blocks": [round(x, 1) for x in calculator_blocks], "calculator_call_us_gc_disabled": round(calculator_no_gc, 1),
        "energy_diff_eV": abs(energy - reference_energy), "max_force_diff_eV_per_A": float(np.abs(forces - reference_forces).max()),
        "top_kernels": sorted(([n, c / 20, round(t / 20, 1)] for n, (c, t) in names.items()), key=lambda r: -r[2])[:25],
    }
    print(json.dumps(row), flush=True)
    del calc, backend, mol
