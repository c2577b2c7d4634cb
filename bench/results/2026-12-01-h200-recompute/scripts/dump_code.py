"""One compiled call of WATER_ATOMS-atom water (static shapes: the first compile) with the
recomputation on or off; run under TORCH_LOGS=output_code.

    python dump_code.py on|off PRECISION WATER_ATOMS
"""
import sys

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.workloads import water_box
from mlff_export.runtime import load_calculator
from mlff_export.runtime.joint_graph import CompiledBackend

CompiledBackend.recomputes_pair_tensors = sys.argv[1] == "on"
atoms = water_box(int(sys.argv[3]))
calc = load_calculator(REFERENCE_CHECKPOINT, "cuda", backend="compile", precision=sys.argv[2], compile_cache=False)
atoms.calc = calc
atoms.get_forces()
