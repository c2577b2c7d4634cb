"""In one process: benzene through two compile-reduce-overhead FP16 calculators, one whose captured
bucket copies the host positions inside its CUDA graph (main since 7d2c9ca) and one whose bucket is
captured without it (``positions_on_host`` patched to False while it captures: positions copied by
a separate launch before each replay, as before). Alternating blocks of 500 calls with a new
geometry each; medians per block, then the median of the blocks.
"""
import json
import time

import numpy as np
from ase.build import molecule

import mlff_export.runtime.joint_graph as joint_graph
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

in_graph = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile-reduce-overhead", precision="fp16")
separate = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile-reduce-overhead", precision="fp16")
molecules = {}
for name, calc in (("in-graph copy", in_graph), ("separate copy", separate)):
    atoms = molecule("C6H6")
    atoms.calc = calc
    if name == "separate copy":
        real = joint_graph.positions_on_host
        joint_graph.positions_on_host = lambda feeds: False
        atoms.get_forces()  # captures its bucket without the staged copy
        joint_graph.positions_on_host = real
        calc.backend._buckets = {(shapes, True): bucket for (shapes, _), bucket in calc.backend._buckets.items()}
    else:
        atoms.get_forces()
    molecules[name] = atoms
forces = {name: atoms.get_forces().copy() for name, atoms in molecules.items()}


def block(atoms, calls=500):
    samples = []
    for step in range(calls):
        atoms.positions[0, 0] += 1e-4 * (-1) ** step
        start = time.perf_counter_ns()
        atoms.get_forces()
        samples.append(time.perf_counter_ns() - start)
    return float(np.median(samples)) / 1e3


blocks = {name: [] for name in molecules}
for _ in range(8):
    for name, atoms in molecules.items():
        blocks[name].append(block(atoms))
rows = {name: {"median_of_blocks_us": float(np.median(values)), "blocks_us": [round(v, 1) for v in values]} for name, values in blocks.items()}
rows["max_force_difference_eV_per_A"] = float(np.abs(forces["in-graph copy"] - forces["separate copy"]).max())
print(json.dumps(rows, indent=1))
