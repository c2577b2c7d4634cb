"""Where the time of one small-molecule call goes, stage by stage, on a CUDA device.

    python bench/profile_call.py [--molecule C6H6] [--backend compile-reduce-overhead]

Times each stage of the calculator path of a joint-graph backend (neighbor list, batching,
neighbor table, padding, copy to the GPU, the graph, copy back) and profiles the graph call with
torch.profiler: kernels launched per call and GPU time they take, and the BLAS library each
captured bucket kept (:mod:`mlff_export.runtime.blas_choice`). Medians of many calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from ase.build import molecule

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.cli.options import require_cuda
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator
from mlff_export.runtime.device_feeds import UNBOUNDED
from mlff_export.runtime.shape_buckets import choose_bucket, pad_table_feeds, table_sizes


def median_microseconds(call, repeats: int = 200) -> float:
    for _ in range(10):
        call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return 1e6 * float(np.median(samples))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", default="C6H6")
    parser.add_argument("--backend", default="compile-reduce-overhead", choices=("compile", "compile-reduce-overhead", "compile-max-autotune", "cuda-graphs"))
    args = parser.parse_args(argv)
    require_cuda(parser, "a calculator call's stages")
    device = torch.device("cuda")
    calc = load_calculator(REFERENCE_CHECKPOINT, device, backend=args.backend)
    backend = calc.backend
    atoms = molecule(args.molecule)
    pairs = compute_pairs(atoms, calc.neighbor_list.cutoff)
    inputs = batch_inputs([atoms], [pairs])
    feeds = NEIGHBOR_TABLE.feeds(inputs)
    bucket = choose_bucket(*table_sizes(feeds), [UNBOUNDED])
    padded = pad_table_feeds(feeds, bucket, backend.species[0])
    on_device = backend.prepare(inputs)
    device_feeds = backend.device_feeds(atoms)
    backend.run(on_device)  # the first call (bucket set-up) is not a stage
    stages = {
        "vesin neighbor list": lambda: compute_pairs(atoms, calc.neighbor_list.cutoff),
        "batch_inputs (pair list tensors)": lambda: batch_inputs([atoms], [pairs]),
        "pair list -> neighbor table (CPU)": lambda: NEIGHBOR_TABLE.feeds(inputs),
        "padding to the bucket (CPU)": lambda: pad_table_feeds(feeds, bucket, backend.species[0]),
        "8 copies to the GPU": lambda: [t.to(device) for t in padded.values()],
        "graph call (run)": lambda: backend.run(on_device),
        "GPU path: feeds on the device": lambda: backend.device_feeds(atoms),
        "GPU path: graph replay, same feeds": lambda: backend.run(device_feeds),
        "outputs back to the CPU": lambda: [t.cpu() for t in backend.run(on_device).values()],
        "whole calculator call": lambda: (atoms.positions.__setitem__((0, 0), atoms.positions[0, 0] + 1e-6), calc.get_forces(atoms)),
    }
    print(f"{args.molecule}: {len(atoms)} atoms, bucket {bucket.shape}, backend {backend.name}, torch {torch.__version__}")
    for name, call in stages.items():
        print(f"  {name:<36} {median_microseconds(call):9.1f} µs")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(20):
            backend.run(device_feeds)
        torch.cuda.synchronize()
    kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels) / 20
    print(f"  kernels per graph call: {len(kernels) / 20:.0f}, their GPU time per call: {gpu_us:.1f} µs")
    for key, (library, seconds) in backend.blas_choices().items():
        replays = ", ".join(f"{name} {1e6 * value:.1f} µs" for name, value in seconds.items())
        print(f"  bucket {key[0]}: BLAS library {library} (replay: {replays})")
    print(profile.key_averages().table(sort_by="device_time_total", row_limit=12))


if __name__ == "__main__":
    main()
